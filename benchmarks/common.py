"""What the benchmarks share: the conv DEQ cell's size arguments, child processes, a data
set with channels zeroed, and a DEQ trained and tested on it."""

import json
import subprocess
import sys
import time
from dataclasses import replace


def add_cell_arguments(parser):
    """Batch 32, 16 channels, 32x32, float64: the size the issues fix for benchmarks."""
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--contraction", type=float, default=0.95)
    parser.add_argument("--repeat", type=int, default=3,
                        help="interleaved repetitions; the best time is reported")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--json", help="also write the results here")
    return parser


def conv_cell(args, dtype):
    """The benchmark conv cell ``tanh(conv3x3(z) + x)`` (self-adjoint, Lipschitz
    ``args.contraction``) and an input ``x`` of ``args``' size, in ``dtype``."""
    import torch

    from deq_petsc.science.models import ConvTanhCell

    cell = ConvTanhCell(args.channels, args.size, contraction=args.contraction, seed=0,
                        dtype=dtype, symmetric=True)
    x = 0.1 * torch.randn(args.batch, args.channels, args.size, args.size,
                          generator=torch.Generator().manual_seed(1)).to(dtype)
    return cell, x


def bare_f(cell, x, its):
    """Seconds per ``f`` evaluation, each on the previous output (as in a Picard loop)."""
    import torch

    with torch.no_grad():
        z = torch.zeros_like(x)
        for _ in range(3):
            z = cell(z, x)
        start = time.perf_counter()
        for _ in range(its):
            z = cell(z, x)
    return (time.perf_counter() - start) / its


def child_json(cmd: list, env=None) -> dict:
    """Run a benchmark's child process (another allocator setting, another PETSc build)
    and return the JSON object it prints last; its failure ends the benchmark, named."""
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env)
    if r.returncode:
        sys.exit(f"{cmd[1]}: the child {cmd[0]} failed:\n{r.stderr}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def without(data, channels):
    """The data set with ``channels`` zeroed (a convolution cannot tell them from absent)."""
    if not channels:
        return data
    images = data.images.clone()
    for name in channels:
        images[:, list(data.channels).index(name)] = 0
    return replace(data, images=images)


def train_and_test(cfg, data, out_dir) -> tuple[dict, float, float]:
    """``deq-petsc train``'s Trainer on ``data`` quietly: ``(test report, the last epoch's
    validation accuracy, seconds)``; its PETSc objects destroyed whatever happens."""
    from deq_petsc.science.train import Trainer

    start = time.perf_counter()
    trainer = Trainer(cfg, data, out_dir, progress=False, log=lambda *a, **k: None)
    try:
        trainer.fit()
        report = trainer.finish()
    finally:
        trainer.destroy()
    return report, trainer.history[-1]["val_acc"], time.perf_counter() - start
