"""The cost of one solver iteration against one bare ``f`` evaluation, float32 and float64.

On the forward benchmark's conv cell (default 32 x 16 x 32 x 32), measured side
by side in one run (best of ``--repeat``, interleaved):

* ``bare f``: the cell alone, ``f(z, x)`` in a loop, in a process whose
  allocator deq_petsc tuned (:mod:`deq_petsc.process.allocator`) and, in a child
  process started with ``DEQ_PETSC_MALLOC=default``, with glibc's defaults;
* ``Picard``: PETSc ``nrichardson`` (basic line search), time per f evaluation;
* ``Anderson(5)``: PETSc ``anderson``, time per iteration (one f evaluation
  plus the mixing);

each for ``--its`` iterations with the convergence test off (``rtol`` 0), so
every configuration does the same number of evaluations. Ratios are against
the bare ``f`` of the same precision in the same process.

With ``--petsc-python PY`` the same solves also run, interleaved, in a child
process started with another environment's Python, e.g. one whose PETSc was
built with single-precision scalars (``PETSC_CONFIGURE_OPTIONS=--with-precision=single``,
docs/performance.md); its rows are printed beside ours, against its own bare ``f``.

Run by hand:  .venv/bin/python benchmarks/bench_iteration.py [--repeat 3] [--its 30]
              [--petsc-python /path/to/single-precision/venv/bin/python]
PETSc options go after ``--``; each solver and precision runs in a log stage of its
own, so ``-- -log_view`` breaks PETSc's events down per configuration.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import deq_petsc

_PETSC_ARGS = sys.argv.index("--") if "--" in sys.argv else len(sys.argv)
deq_petsc.init([sys.argv[0]] + sys.argv[_PETSC_ARGS + 1:])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from common import add_cell_arguments, bare_f, child_json, conv_cell as problem  # noqa: E402
from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.process import allocator  # noqa: E402
from deq_petsc.core.interop import petsc_torch_dtype  # noqa: E402

DTYPES = {"float64": torch.float64, "float32": torch.float32}
SOLVERS = {
    "Picard": {"snes_type": "nrichardson", "snes_linesearch_type": "basic"},
    "Anderson(5)": {"snes_type": "anderson", "snes_anderson_m": 5},
}


def bare_only(args):
    """Child-process mode: bare f per dtype, as JSON on stdout."""
    torch.set_num_threads(args.threads)
    out = {}
    for _ in range(args.repeat):
        for name, dtype in DTYPES.items():
            t = bare_f(*problem(args, dtype), args.its)
            out[name] = min(out.get(name, float("inf")), t)
    print(json.dumps({"status": allocator.status(), **out}))


class Measure:
    """One process's bare ``f`` and solver iterations, every configuration once per call."""

    def __init__(self, args):
        self.args = args
        self.problems = {name: problem(args, dtype) for name, dtype in DTYPES.items()}
        self.solvers = {(s, d): DEQSolver(prefix=f"b{i}{j}_", check_convergence=False, options={
            **opts, "snes_rtol": 0, "snes_atol": 0, "snes_stol": 0, "snes_max_it": args.its})
            for i, (s, opts) in enumerate(SOLVERS.items()) for j, d in enumerate(DTYPES)}
        self.stages = {key: PETSc.Log.Stage(f"{key[0]} {key[1]}") for key in self.solvers}

    def once(self) -> dict:
        """Seconds per bare ``f`` and per solver iteration, keyed ``(what, dtype)``."""
        out = {}
        for d, (cell, x) in self.problems.items():
            out[("bare f", d)] = bare_f(cell, x, self.args.its)
            for s in SOLVERS:
                self.stages[(s, d)].push()
                _, stats = self.solvers[(s, d)].solve(FixedPointProblem(cell, x))
                self.stages[(s, d)].pop()
                per = stats.function_evals if s == "Picard" else max(stats.iterations, 1)
                out[(s, d)] = stats.time / per
        return out

    def destroy(self):
        for s in self.solvers.values():
            s.destroy()


def petsc_scalar() -> str:
    return str(petsc_torch_dtype()).replace("torch.", "")


def child_solves(args):
    """Child-process mode (``--petsc-python``): one repeat of every measurement, as JSON."""
    torch.set_num_threads(args.threads)
    m = Measure(args)
    measured = m.once()
    m.destroy()
    print(json.dumps({"scalar": petsc_scalar(),
                      "times": {f"{k[0]}|{k[1]}": v for k, v in measured.items()}}))


def cell_args(args) -> list[str]:
    return ["--repeat", "1", "--its", str(args.its), "--batch", str(args.batch),
            "--channels", str(args.channels), "--size", str(args.size),
            "--contraction", str(args.contraction), "--threads", str(args.threads)]


def print_table(best, title, rows):
    print(title)
    print(f"{'what':28s} {'float64 ms':>10s} {'vs bare':>8s} {'float32 ms':>10s} {'vs bare':>8s}")
    for key, label in rows:
        cells = []
        for d in DTYPES:
            t = best[(key, d)]
            cells.append(f"{1e3 * t:10.2f} {t / best[('bare f', d)]:7.2f}x")
        print(f"{label:28s} " + " ".join(cells))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cell_arguments(p)
    p.add_argument("--its", type=int, default=30, help="iterations per solve (default 30)")
    p.add_argument("--petsc-python", metavar="PY",
                   help="also run the solves in a child process of this Python (another "
                        "PETSc build, e.g. single precision), interleaved with ours")
    p.add_argument("--bare-only", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--child-solves", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(sys.argv[1:_PETSC_ARGS])
    if args.bare_only:
        return bare_only(args)
    if args.child_solves:
        return child_solves(args)
    torch.set_num_threads(args.threads)
    measure = Measure(args)
    best: dict = {}
    other: dict = {}
    other_scalar = ""

    def keep(store, key, value):
        store[key] = min(store.get(key, float("inf")), value)

    default_status = ""
    for _ in range(args.repeat):
        measured = child_json([sys.executable, __file__, "--bare-only", *cell_args(args)],
                              env={**os.environ, "DEQ_PETSC_MALLOC": "default"})
        default_status = measured.pop("status")
        for d, t in measured.items():
            keep(best, ("bare f, glibc defaults", d), t)
        if args.petsc_python:
            measured = child_json([args.petsc_python, __file__, "--child-solves",
                                   *cell_args(args)])
            other_scalar = measured["scalar"]
            for key, t in measured["times"].items():
                keep(other, tuple(key.split("|")), t)
        for key, t in measure.once().items():
            keep(best, key, t)
    measure.destroy()

    print(f"conv cell {args.batch}x{args.channels}x{args.size}x{args.size} "
          f"({args.batch * args.channels * args.size ** 2} unknowns), {args.its} iterations "
          f"per solve, best of {args.repeat}, {args.threads} torch thread(s)\n"
          f"allocator: this process {allocator.status()}; child {default_status}")
    rows = [("bare f", "bare f (tuned)"), ("Picard", "Picard, per f evaluation"),
            ("Anderson(5)", "Anderson(5), per iteration")]
    print_table(best, f"PETSc scalars {petsc_scalar()} (this process)",
                [("bare f, glibc defaults", "bare f, glibc defaults")] + rows)
    if other:
        print_table(other, f"PETSc scalars {other_scalar} ({args.petsc_python}; "
                    f"ratios against its own bare f)", rows)
        print("float32 model, per iteration, this process / the child: " + ", ".join(
            f"{s} {best[(s, 'float32')] / other[(s, 'float32')]:.2f}x" for s in SOLVERS))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"this": {f"{k[0]}|{k[1]}": v for k, v in best.items()},
                       "child": {f"{k[0]}|{k[1]}": v for k, v in other.items()},
                       "child_scalar": other_scalar}, fh, indent=1)


if __name__ == "__main__":
    main()
