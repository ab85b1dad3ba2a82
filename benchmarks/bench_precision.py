"""Single vs double precision: a float32 model with float64 PETSc (one cast per crossing)
against a float64 model (zero-copy), on the forward benchmark's conv cell.

PETSc here is built with double scalars (the default install); a float32 cell's
state is cast to float64 on every crossing into a Vec and back, once each way
per function evaluation (:class:`deq_petsc.core.interop.TensorLayout`). Reported,
side by side in one run (best of ``--repeat`` interleaved): PETSc Anderson
(m = 5) and the plain-torch Anderson loop in both precisions, to rtol 1e-5 (a
float32 state cannot go much below ~1e-6), with iterations, time per
iteration, and the cost of the crossings themselves (``read`` + ``write`` of
one state, measured alone). A single-precision PETSc
(``PETSC_CONFIGURE_OPTIONS=--with-precision=single``) makes float32 zero-copy;
``bench_iteration.py --petsc-python`` and ``bench_inference.py --petsc-python``
measure it beside this build (docs/performance.md).

Run by hand:  .venv/bin/python benchmarks/bench_precision.py [--repeat 3]
"""

from __future__ import annotations

import argparse
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from common import add_cell_arguments  # noqa: E402
from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.core.interop import TensorLayout  # noqa: E402
from deq_petsc.science.models import ConvTanhCell  # noqa: E402
from deq_petsc.core.reference import torch_anderson  # noqa: E402


def crossing_time(z, repeat=20):
    layout = TensorLayout.like(z)
    vec = layout.create_vec(torch.zeros(z.shape, dtype=torch.float64) if not layout.zero_copy
                            else z.clone())
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeat):
            t = layout.read(vec)
            layout.write(t, vec)
        best = min(best, (time.perf_counter() - start) / repeat)
    vec.destroy()
    return best


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cell_arguments(p)
    p.add_argument("--rtol", type=float, default=1e-5)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    results = {}
    problems = {}
    for dtype in (torch.float64, torch.float32):
        cell = ConvTanhCell(args.channels, args.size, contraction=args.contraction, seed=0,
                            dtype=dtype, symmetric=True)
        x = 0.1 * torch.randn(args.batch, args.channels, args.size, args.size,
                              generator=torch.Generator().manual_seed(1)).to(dtype)
        problems[dtype] = (cell, x, FixedPointProblem(cell, x))
    solvers = {dtype: DEQSolver(prefix=f"p{i}_", options={
        "snes_type": "anderson", "snes_anderson_m": 5, "snes_rtol": args.rtol, "snes_atol": 0,
        "snes_stol": 0, "snes_max_it": 2000}) for i, dtype in enumerate(problems)}
    for _ in range(args.repeat):
        for dtype, (cell, x, problem) in problems.items():
            _, stats = solvers[dtype].solve(problem)
            key = ("petsc anderson", dtype)
            r = dict(time=stats.time, its=stats.iterations, evals=stats.function_evals,
                     rel=stats.relative_residual)
            if key not in results or r["time"] < results[key]["time"]:
                results[key] = r
            with torch.no_grad():
                f = lambda z, c=cell, xx=x: c(z, xx)   # noqa: E731
                start = time.perf_counter()
                _, its, evals, hist = torch_anderson(f, torch.zeros_like(x), m=5, rtol=args.rtol,
                                                     max_it=2000)
                elapsed = time.perf_counter() - start
            key = ("torch anderson", dtype)
            r = dict(time=elapsed, its=its, evals=evals, rel=hist[-1] / hist[0])
            if key not in results or r["time"] < results[key]["time"]:
                results[key] = r
    print(f"conv cell {args.batch}x{args.channels}x{args.size}x{args.size}, spectral radius "
          f"{args.contraction}, Anderson m=5 to rtol {args.rtol:g}; PETSc scalars float64; best "
          f"of {args.repeat}, {args.threads} thread(s)")
    print(f"{'solver':16s} {'model':8s} {'its':>5s} {'time s':>8s} {'ms/it':>7s} {'rel res':>9s}")
    for (name, dtype), r in results.items():
        print(f"{name:16s} {str(dtype).replace('torch.', ''):8s} {r['its']:5d} {r['time']:8.3f} "
              f"{1e3 * r['time'] / max(r['evals'], 1):7.2f} {r['rel']:9.2e}")
    for dtype, (_, x, _) in problems.items():
        print(f"crossing of one {str(dtype).replace('torch.', '')} state (read + write): "
              f"{1e3 * crossing_time(x):.3f} ms")
    p64, p32 = results[("petsc anderson", torch.float64)], results[("petsc anderson", torch.float32)]
    t64, t32 = results[("torch anderson", torch.float64)], results[("torch anderson", torch.float32)]
    print(f"float32 / float64 time: PETSc {p32['time'] / p64['time']:.2f}x, torch loop "
          f"{t32['time'] / t64['time']:.2f}x; PETSc / torch loop per f evaluation: float64 "
          f"{(p64['time'] / p64['evals']) / (t64['time'] / t64['evals']):.2f}x, float32 "
          f"{(p32['time'] / p32['evals']) / (t32['time'] / t32['evals']):.2f}x")
    for s in solvers.values():
        s.destroy()


if __name__ == "__main__":
    main()
