"""Inference of trained checkpoints to a tight tolerance: Picard vs Anderson, per sample.

For each checkpoint (e.g. the ``make demo`` models under ``runs/demo/*/``) the
test split of its task is solved to ``--rtol`` (default 1e-4, the demo's
inference tolerance) with each forward solver of the registry's sets (Picard,
Anderson(5) by default; ``--solvers``), reporting accuracy, f evaluations per
batch and milliseconds per sample, best of ``--repeat`` (interleaved).

``--rtol`` takes a comma-separated list: how Picard / Anderson grows as the
tolerance tightens says how much of a model's initial residual lies on its
slow modes (docs/solvers.md). Below about 1e-6 a float32 model's own rounding
is the floor; ``--dtype float64`` runs the trained weights in double.

With ``--petsc-python PY`` the same runs are repeated, interleaved, in a child
process of another environment's Python (e.g. a single-precision PETSc build,
docs/performance.md), and the ratio this process / the child is printed per
row: what a float32 model gains when its state stays float32 inside PETSc.

Run by hand:
  .venv/bin/python benchmarks/bench_inference.py runs/demo/anderson/checkpoint.pt \
      [--repeat 3] [--petsc-python /path/to/venv-single/bin/python]
  .venv/bin/python benchmarks/bench_inference.py runs/demo/picard/checkpoint.pt \
      --rtol 1e-2,1e-4,1e-6,1e-8 --dtype float64 --repeat 1 --max-it 3000
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from common import child_json  # noqa: E402
from deq_petsc.core import solver_sets  # noqa: E402
from deq_petsc.science.data.tasks import load_task  # noqa: E402
from deq_petsc.science.inference import evaluate, load_model  # noqa: E402
from deq_petsc.core.interop import petsc_torch_dtype  # noqa: E402
from deq_petsc.core.petsc_options import inserted_defaults  # noqa: E402


def measure(checkpoints, solvers, rtols, max_it, threads, precision=None) -> dict:
    """``{"checkpoint|solver|rtol": {...}}`` for one pass over every checkpoint, solver
    and tolerance; ``precision`` (e.g. ``"float64"``) overrides the model's own."""
    torch.set_num_threads(threads)
    out = {}
    for ckpt, (i, name), rtol in itertools.product(
            checkpoints, enumerate(solvers), rtols):
        prefix = f"bi{i}_"
        opts = {**solver_sets.parse_options(solver_sets.get(name).forward),
                "snes_rtol": rtol, "snes_max_it": max_it, "deq_accept_max_it": True}
        with inserted_defaults(prefix, opts):
            model, state = load_model(ckpt, prefix=prefix)
            if precision:
                model.to(getattr(torch, precision))
            try:
                cfg = state["train_config"]
                data = load_task(cfg["task"], limit=cfg["limit"], seed=cfg["seed"],
                                 split_by=cfg.get("split_by", "random"), progress=False)
                dtype = next(model.parameters()).dtype
                with torch.no_grad():                              # warm-up
                    model(data.images[data.indices("val")][:8].to(dtype))
                r = evaluate(model, data, "test", 64)
            finally:
                model.destroy()
        out[f"{ckpt}|{name}|{rtol:g}"] = {
            "model_dtype": str(dtype).replace("torch.", ""),
            "accuracy": r["accuracy"], "f_per_batch": r["function_evals"] / r["batches"],
            "ms_per_sample": 1e3 * r["seconds_per_sample"],
            "converged": 1 - r["inexact_forward"] / r["batches"]}
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("checkpoints", nargs="+")
    p.add_argument("--solvers", default="picard,anderson",
                   help="registry sets whose forward solver to run (default picard,anderson)")
    p.add_argument("--rtol", default="1e-4", help="tolerance(s), comma-separated")
    p.add_argument("--dtype", choices=["float32", "float64"],
                   help="run the model in this precision (default: the one it trained in)")
    p.add_argument("--max-it", type=int, default=500)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--petsc-python", metavar="PY",
                   help="also run in a child process of this Python (another PETSc build)")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    solvers = args.solvers.split(",")
    rtols = [float(t) for t in args.rtol.split(",")]
    if args.child:
        print(json.dumps({"scalar": str(petsc_torch_dtype()).replace("torch.", ""),
                          "rows": measure(args.checkpoints, solvers, rtols, args.max_it,
                                          args.threads, args.dtype)}))
        return
    best: dict = {}
    other: dict = {}
    other_scalar = ""

    def keep(store, rows):
        for key, row in rows.items():
            if key not in store or row["ms_per_sample"] < store[key]["ms_per_sample"]:
                store[key] = row

    for _ in range(args.repeat):
        if args.petsc_python:
            cmd = [args.petsc_python, __file__, *args.checkpoints, "--child", "--solvers",
                   args.solvers, "--rtol", args.rtol, "--max-it", str(args.max_it),
                   "--threads", str(args.threads)] + (["--dtype", args.dtype] if args.dtype else [])
            measured = child_json(cmd)
            other_scalar = measured["scalar"]
            keep(other, measured["rows"])
        keep(best, measure(args.checkpoints, solvers, rtols, args.max_it, args.threads,
                           args.dtype))

    scalar = str(petsc_torch_dtype()).replace("torch.", "")
    print(f"test split to rtol {args.rtol} (at most {args.max_it} its), batches of 64, best of "
          f"{args.repeat}, {args.threads} torch thread(s); this process: PETSc scalars {scalar}"
          + (f"; child ({args.petsc_python}): PETSc scalars {other_scalar}" if other else ""))
    head = f"{'checkpoint':40s} {'solver':10s} {'rtol':>6s} {'model':8s} {'acc':>6s} {'f/batch':>8s} {'conv':>5s} {'ms/sample':>9s}"
    if other:
        head += f" {'child ms':>9s} {'this/child':>10s}"
    print(head)
    for key, row in best.items():
        ckpt, name, rtol = key.split("|")
        line = (f"{ckpt[-40:]:40s} {name:10s} {rtol:>6s} {row['model_dtype']:8s} {row['accuracy']:6.3f} "
                f"{row['f_per_batch']:8.1f} {row['converged']:5.0%} {row['ms_per_sample']:9.3f}")
        if other:
            o = other[key]
            line += f" {o['ms_per_sample']:9.3f} {row['ms_per_sample'] / o['ms_per_sample']:9.2f}x"
            if abs(o["f_per_batch"] - row["f_per_batch"]) > 0.5:
                line += f" (child: {o['f_per_batch']:.1f} f/batch)"
        print(line)
    for ckpt, rtol in itertools.product(args.checkpoints, rtols):
        for store, label in ((best, "this process"), (other, "child")):
            if not store:
                continue
            pic, *rest = [store[f"{ckpt}|{s}|{rtol:g}"] for s in solvers]
            for name, row in zip(solvers[1:], rest):
                capped = ">=" if pic["converged"] < 1 else ""
                print(f"{ckpt[-40:]}: rtol {rtol:g}: {label}: picard / {name}: {capped}"
                      f"{pic['f_per_batch'] / row['f_per_batch']:.2f}x f evals, "
                      f"{pic['ms_per_sample'] / row['ms_per_sample']:.2f}x time")


if __name__ == "__main__":
    main()
