"""PETSc's Picard and Anderson against the lean types (deq_petsc.lean), on one trained model.

The question of issue "Time, not iterations": do saved iterations become saved
seconds? One batch of test samples through one trained checkpoint (the demo's
shared model), to ``--rtol``, solved by PETSc's ``nrichardson`` and ``anderson``
and by the lean types under each stopping rule (``-deq_sample_stop batch``:
PETSc's test, the same iterates as PETSc's; ``worst``: every sample to the
tolerance, the batch iterated whole; ``each``: a sample stops once it is there).
The sets run in turn ``--repeat`` times (interleaved: a noisy machine hurts all
alike) and each keeps its fastest solve. Printed per set: iterations, f
evaluations (per batch and per sample), wall time, time per iteration against
a bare ``f`` of the same batch, and the ratios to PETSc's Picard, wall time
beside f evaluations.

Run by hand (a checkpoint from ``make demo``):
  .venv/bin/python benchmarks/bench_lean.py runs/demo/anderson/checkpoint.pt \
      [--batch 64] [--rtol 1e-4] [--repeat 5] [--out lean.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from deq_petsc import DEQSolver  # noqa: E402
from deq_petsc.data.tasks import load_task  # noqa: E402
from deq_petsc.lean import options as lean  # noqa: E402
from deq_petsc.run_record import run_record  # noqa: E402
from deq_petsc.train import load_model  # noqa: E402

PICARD = {"snes_type": "nrichardson", "snes_linesearch_type": "basic"}


def option_sets(windows=(5, 20)) -> dict:
    sets = {"petsc picard": PICARD}
    for m in windows:
        sets[f"petsc anderson({m})"] = {"snes_type": "anderson", "snes_anderson_m": m}
    for stop in ("batch", "worst", "each"):
        sets[f"lean picard, {stop}"] = {**lean("picard"), "deq_sample_stop": stop}
        for m in windows:
            sets[f"lean anderson({m}), {stop}"] = {**lean("anderson"), "snes_anderson_m": m,
                                                  "deq_sample_stop": stop}
    return sets


def bare_f_seconds(problem, repeat: int) -> float:
    """The fastest of ``repeat`` evaluations of ``f`` at the start, for the whole batch."""
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeat):
            start = time.perf_counter()
            problem(problem.z0)
            best = min(best, time.perf_counter() - start)
    return best


def measure(problem, sets: dict, rtol: float, max_it: int, repeat: int) -> dict:
    best = {}
    for _ in range(repeat):
        for k, (name, opts) in enumerate(sets.items()):
            with DEQSolver(prefix=f"lean{k}_", check_convergence=False,
                           options={"snes_rtol": rtol, "snes_max_it": max_it,
                                    "snes_divergence_tolerance": -1, **opts}) as solver:
                _, stats = solver.solve(problem)
            if name not in best or stats.time < best[name].time:
                best[name] = stats
    return best


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--max-it", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--windows", default="5,20")
    parser.add_argument("--out")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    model, state = load_model(args.checkpoint, prefix="bench_lean_")
    cfg = state["train_config"]
    data = load_task(cfg["task"], limit=cfg["limit"], seed=cfg["seed"],
                     split_by=cfg.get("split_by", "random"), progress=False)
    images = data.images[data.indices("test")][:args.batch]
    with torch.no_grad():
        x = model.inject(images.to(next(model.parameters()).dtype))
    problem = model.equilibrium.fixed_point_problem(x)
    bare = bare_f_seconds(problem, 20)
    sets = option_sets(tuple(int(m) for m in args.windows.split(",")))
    measure(problem, sets, args.rtol, args.max_it, 1)                 # warm-up
    best = measure(problem, sets, args.rtol, args.max_it, args.repeat)
    model.destroy()

    base = best["petsc picard"]
    rows = {}
    print(f"{args.checkpoint}: batch {len(images)}, state {tuple(problem.z0.shape)} "
          f"{problem.z0.dtype}, rtol {args.rtol:g}, best of {args.repeat}; bare f "
          f"{1e3 * bare:.2f} ms")
    print(f"{'set':26s} {'reason':26s} {'its':>4s} {'f':>4s} {'f/sample':>8s} {'ms':>7s} "
          f"{'ms/it':>6s} {'it/f':>5s} {'f ratio':>7s} {'time ratio':>10s}")
    for name, s in best.items():
        per_sample = s.sample_evals / max(s.samples, 1)
        base_per_sample = base.sample_evals / max(base.samples, 1)
        per_it = s.time / max(s.function_evals, 1)
        row = {"reason": s.reason_name, "iterations": s.iterations,
               "function_evals": s.function_evals, "sample_evals": s.sample_evals,
               "f_per_sample": per_sample, "mean_sample_iterations": s.mean_sample_iterations,
               "seconds": s.time, "seconds_per_f": per_it, "per_f_over_bare_f": per_it / bare,
               "f_ratio": base_per_sample / per_sample, "time_ratio": base.time / s.time}
        rows[name] = row
        print(f"{name:26s} {s.reason_name:26s} {s.iterations:4d} {s.function_evals:4d} "
              f"{per_sample:8.1f} {1e3 * s.time:7.1f} {1e3 * per_it:6.2f} "
              f"{per_it / bare:5.2f} {row['f_ratio']:6.2f}x {row['time_ratio']:9.2f}x")
    print("f ratio: PETSc Picard's f evaluations per sample / this set's; time ratio: "
          "PETSc Picard's wall time / this set's (above 1: faster)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"checkpoint": args.checkpoint, "batch": len(images), "rtol": args.rtol,
                       "repeat": args.repeat, "bare_f_seconds": bare, "rows": rows,
                       "record": run_record()}, fh, indent=1)


if __name__ == "__main__":
    main()
