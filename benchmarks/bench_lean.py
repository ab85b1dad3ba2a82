"""PETSc's Picard and Anderson against the lean types (deq_petsc.core.lean), on one trained model.

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
      [--batch 64] [--batches 0] [--rtol 1e-4] [--repeat 5] [--out lean.json]
  .venv/bin/python benchmarks/bench_lean.py --tiny --repeat 20     # a small state
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
from deq_petsc.science.data.tasks import load_task  # noqa: E402
from deq_petsc.core.lean import options as lean  # noqa: E402
from deq_petsc.science.run_record import run_record  # noqa: E402
from deq_petsc.science.train import load_model  # noqa: E402

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


def pass_seconds(z: torch.Tensor, repeat: int = 20) -> float:
    """One pass over a state-sized tensor (read or written once), measured as a third of
    ``c = a + b``: the bandwidth bound of vector work on this machine, with torch's threads."""
    a, b, c = torch.randn_like(z), torch.randn_like(z), torch.empty_like(z)
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        torch.add(a, b, out=c)
        best = min(best, time.perf_counter() - start)
    return best / 3


def lean_passes(name: str) -> float | None:
    """Passes over the state per iteration of a lean set (deq_petsc.core.lean's docstrings):
    Picard 4 (F = z - f: 3, its norm: 1), Anderson(m) 2m + 8; None for PETSc's own
    (bench_passes.py counts those)."""
    if not name.startswith("lean"):
        return None
    if "picard" in name:
        return 4.0
    m = int(name.split("(")[1].split(")")[0])
    return 2.0 * m + 8


def measure(problems, sets: dict, rtol: float, max_it: int, repeat: int) -> dict:
    """Per set, its fastest pass over all ``problems``: the stats of each batch."""
    best = {}
    for _ in range(repeat):
        for k, (name, opts) in enumerate(sets.items()):
            runs = []
            with DEQSolver(prefix=f"lean{k}_", check_convergence=False,
                           options={"snes_rtol": rtol, "snes_max_it": max_it,
                                    "snes_divergence_tolerance": -1, **opts}) as solver:
                for problem in problems:
                    runs.append(solver.solve(problem)[1])
            if name not in best or sum(r.time for r in runs) < sum(r.time for r in best[name]):
                best[name] = runs
    return best


def tiny(repeat: int):
    """Per-iteration time on a small state (a 16 x 64 float64 tanh cell), where the lean
    types' Python per iteration shows and PETSc's own C is faster."""
    from deq_petsc import FixedPointProblem
    from deq_petsc.science.models import TanhCell
    cell = TanhCell(64, 5, contraction=0.9, seed=3).double()
    x = torch.randn(16, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    problem = FixedPointProblem(cell, x, z_shape=(16, 64), independent_samples=True)
    sets = {"petsc anderson(5)": {"snes_type": "anderson", "snes_anderson_m": 5},
            "lean anderson(5), batch": {**lean("anderson"), "snes_anderson_m": 5,
                                        "deq_sample_stop": "batch"},
            "lean anderson(5), each": {**lean("anderson"), "snes_anderson_m": 5}}
    best = measure([problem], sets, 1e-10, 500, repeat)
    print("16 x 64 float64 tanh cell, rtol 1e-10, best of", repeat)
    for name, (stats,) in best.items():
        print(f"{name:26s} {stats.iterations:3d} its {1e3 * stats.time:7.2f} ms "
              f"{1e3 * stats.time / max(stats.iterations, 1):6.3f} ms per iteration")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", nargs="?")
    parser.add_argument("--tiny", action="store_true",
                        help="instead: per-iteration time on a small state")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=1,
                        help="test batches solved (default 1; 0: the whole test split)")
    parser.add_argument("--rtol", type=float, default=1e-4)
    parser.add_argument("--max-it", type=int, default=500)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--windows", default="5,20")
    parser.add_argument("--out")
    args = parser.parse_args(argv)
    if args.tiny:
        return tiny(args.repeat)
    if not args.checkpoint:
        parser.error("give a checkpoint (or --tiny)")

    torch.manual_seed(0)
    model, state = load_model(args.checkpoint, prefix="bench_lean_")
    cfg = state["train_config"]
    data = load_task(cfg["task"], limit=cfg["limit"], seed=cfg["seed"],
                     split_by=cfg.get("split_by", "random"), progress=False)
    test = data.images[data.indices("test")]
    starts = range(0, len(test), args.batch)
    if args.batches:
        starts = starts[:args.batches]
    problems = []
    for i in starts:
        with torch.no_grad():
            x = model.inject(test[i:i + args.batch].to(next(model.parameters()).dtype))
        problems.append(model.equilibrium.fixed_point_problem(x))
    first = problems[0]
    bare = bare_f_seconds(first, 20)
    one_pass = pass_seconds(first.z0)
    sets = option_sets(tuple(int(m) for m in args.windows.split(",")))
    measure(problems[:1], sets, args.rtol, args.max_it, 1)               # warm-up
    best = measure(problems, sets, args.rtol, args.max_it, args.repeat)
    model.destroy()

    samples = sum(p.z0.shape[0] for p in problems)
    total = {name: {"time": sum(r.time for r in runs),
                    "f": sum(r.function_evals for r in runs),
                    "sample_evals": sum(r.sample_evals for r in runs),
                    "its": sum(r.iterations for r in runs),
                    "reasons": sorted({r.reason_name for r in runs})}
             for name, runs in best.items()}
    base = total["petsc picard"]
    print(f"{args.checkpoint}: {len(problems)} test batch(es) of {args.batch} ({samples} "
          f"samples), state {tuple(first.z0.shape)} {first.z0.dtype}, rtol {args.rtol:g}, "
          f"best of {args.repeat}; bare f {1e3 * bare:.2f} ms, one pass over the state "
          f"{1e3 * one_pass:.3f} ms")
    print(f"{'set':26s} {'its':>5s} {'f':>5s} {'f/sample':>8s} {'s':>7s} {'ms/f':>6s} "
          f"{'/bare f':>7s} {'passes':>6s} {'bound':>6s} {'f ratio':>7s} {'time ratio':>10s}  reasons")
    rows = {}
    for name, t in total.items():
        per_sample = t["sample_evals"] / samples
        per_f = t["time"] / max(t["f"], 1)
        passes = lean_passes(name)
        bound = bare + passes * one_pass if passes is not None else None
        row = {**t, "f_per_sample": per_sample, "seconds_per_f": per_f,
               "per_f_over_bare_f": per_f / bare, "passes_per_iteration": passes,
               "bound_seconds_per_f": bound,
               "f_ratio": (base["sample_evals"] / samples) / per_sample,
               "time_ratio": base["time"] / t["time"]}
        rows[name] = row
        bound_text = f"{per_f / bound:5.2f}x" if bound else "     -"
        print(f"{name:26s} {t['its']:5d} {t['f']:5d} {per_sample:8.1f} {t['time']:7.3f} "
              f"{1e3 * per_f:6.2f} {per_f / bare:6.2f}x {passes or 0:6.0f} {bound_text} "
              f"{row['f_ratio']:6.2f}x {row['time_ratio']:9.2f}x  {','.join(t['reasons'])}")
    print("f ratio: PETSc Picard's f evaluations per sample / this set's; time ratio: PETSc "
          "Picard's wall time / this set's (above 1: faster); ms/f: wall time per batch "
          "evaluation of f (smaller batches under 'each'); bound: bare f + passes x one pass, "
          "and ms/f over it (full batches: 'batch' rows)")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"checkpoint": args.checkpoint, "batch": args.batch,
                       "batches": len(problems), "samples": samples, "rtol": args.rtol,
                       "repeat": args.repeat, "bare_f_seconds": bare,
                       "pass_seconds": one_pass, "rows": rows, "record": run_record()},
                      fh, indent=1)


if __name__ == "__main__":
    main()
