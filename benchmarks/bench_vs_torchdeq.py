"""A race against TorchDEQ: the same DEQ cell, batch and stopping rule, our PETSc solvers vs theirs.

The forward benchmark's conv cell (batch 32, 16 channels, 32x32, float64,
``--scenario slow``: self-adjoint kernel with spectral radius 0.95, the regime
where acceleration matters; ``random``: a random kernel, fast for everyone).
Every solver stops on TorchDEQ's own rule, ``max_b ||f(z_b) - z_b|| /
||f(z_b)|| < tol`` (``--stop-mode rel``, the default) or ``max_b ||f(z_b) - z_b|| <
tol`` (``--stop-mode abs``), PETSc's own types through a SNES convergence test
(:class:`deq_petsc.core.convergence.PerSampleTest`), so "to tolerance" means the same
for all. The lean types (:mod:`deq_petsc.core.lean`, the solver sets' default) keep their
own per-sample test, ``||F_b|| <= max(rtol ||F_b^0||, atol)``, which with ``rtol 0,
atol tol`` is TorchDEQ's abs rule exactly: they race in the abs mode only.
Reported: iterations, f evaluations (counted by wrapping the cell; the lean types'
in whole batches, the samples they evaluated over the batch size), best wall time of ``--repeat`` interleaved runs, the worst per-sample residual
reached, and the distance of each solution from a tight reference solve.

TorchDEQ (PyPI ``torchdeq``) is a benchmark-only dependency
(``pip install -e .[bench]``); the package never imports it.

Run by hand:  .venv/bin/python benchmarks/bench_vs_torchdeq.py [--scenario slow --tol 1e-6]
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from common import add_cell_arguments  # noqa: E402
from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.core.convergence import PerSampleTest  # noqa: E402
from deq_petsc.science.models import ConvTanhCell  # noqa: E402

OURS = {
    "petsc anderson(5)": {"snes_type": "anderson", "snes_anderson_m": 5},
    "petsc ngmres(5)": {"snes_type": "ngmres", "snes_ngmres_m": 5},
    "petsc newtonls+gmres": {"snes_type": "newtonls", "ksp_type": "gmres"},
    "petsc picard": {"snes_type": "nrichardson", "snes_linesearch_type": "basic"},
}
#: the lean types, each sample stopping at its own tolerance (-deq_sample_stop each)
LEAN = {
    "lean anderson(5)": {"snes_type": "python", "snes_python_type": "deq_petsc.core.lean.Anderson",
                         "snes_anderson_m": 5, "deq_sample_stop": "each"},
    "lean picard": {"snes_type": "python", "snes_python_type": "deq_petsc.core.lean.Picard",
                    "deq_sample_stop": "each"},
}


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_cell_arguments(p)
    p.add_argument("--scenario", choices=["slow", "random"], default="slow")
    p.add_argument("--tol", type=float, default=1e-6)
    p.add_argument("--max-iter", type=int, default=300)
    p.add_argument("--m", type=int, default=5, help="Anderson depth, both libraries")
    p.add_argument("--stop-mode", choices=["rel", "abs"], default="rel",
                   help="TorchDEQ's stopping rule for every solver (abs: the lean types too)")
    args = p.parse_args()
    try:
        from torchdeq.solver import get_solver
    except ImportError:
        sys.exit("bench_vs_torchdeq needs TorchDEQ: .venv/bin/pip install -e .[bench]")
    torch.set_num_threads(args.threads)
    slow = args.scenario == "slow"
    cell = ConvTanhCell(args.channels, args.size, contraction=args.contraction, seed=0,
                        symmetric=slow)
    x = (0.1 if slow else 1.0) * torch.randn(args.batch, args.channels, args.size, args.size,
                                             dtype=torch.float64,
                                             generator=torch.Generator().manual_seed(1))
    problem = FixedPointProblem(cell, x)
    calls = [0]

    @torch.no_grad()
    def f(z):
        calls[0] += 1
        return cell(z, x)

    # reference: a tight PETSc Newton-Krylov solve
    with DEQSolver(options={"snes_type": "newtonls", "ksp_type": "gmres", "snes_rtol": 1e-13,
                            "snes_atol": 0, "snes_stol": 0, "ksp_rtol": 1e-12}) as ref_solver:
        z_ref, _ = ref_solver.solve(problem)
        ref_solver.solve(problem)          # and torch's double-backward warm-up is done

    def run_torchdeq(name):
        solver = get_solver(name)
        kw = {"m": args.m} if name == "anderson" else {}
        calls[0] = 0
        start = time.perf_counter()
        z, _, info = solver(f, torch.zeros_like(x), max_iter=args.max_iter, tol=args.tol,
                            stop_mode=args.stop_mode, **kw)
        elapsed = time.perf_counter() - start
        nstep = int(info["nstep"].max())
        return dict(time=elapsed, f_evals=calls[0], its=nstep, z=z,
                    worst=float(info[f"{args.stop_mode}_lowest"].max()))

    def worst_residual(z):
        """The rule's per-sample residual at ``z``, measured alike for every solver."""
        fz = f(z)
        calls[0] -= 1
        r = (fz - z).flatten(1).norm(dim=1)
        return float((r / fz.flatten(1).norm(dim=1) if args.stop_mode == "rel" else r).max())

    lean = LEAN if args.stop_mode == "abs" else {}
    solvers = {}
    for name, opts in {**OURS, **lean}.items():
        tolerances = {"snes_rtol": 0.0, "snes_atol": args.tol} if name in lean else {}
        s = DEQSolver(prefix=f"race{len(solvers)}_",
                      options={**opts, "snes_max_it": args.max_iter, "snes_stol": 0,
                               **tolerances},
                      check_convergence=False)
        solvers[name] = s

    def run_ours(name):
        solver = solvers[name]
        if name in lean:                  # their own per-sample test: ||F_b|| <= atol
            z, stats = solver.solve(problem)
            worst = worst_residual(z)
        else:
            test = PerSampleTest(args.batch, args.tol, args.stop_mode, max_it=args.max_iter)
            solver.snes.setConvergenceTest(test)
            z, stats = solver.solve(problem)
            worst = float(test.history[-1][args.stop_mode].max())
        # f evaluations in whole batches: a lean type's shrinking batch counts by samples
        f_evals = stats.sample_evals / args.batch if name in lean else stats.function_evals
        return dict(time=stats.time, f_evals=f_evals, its=stats.iterations, z=z,
                    worst=worst, jvps=stats.jvp_count, reason=stats.reason_name)

    names = [f"torchdeq {n}" for n in ("anderson", "broyden", "fixed_point_iter")] + \
        list(OURS) + list(lean)
    best = {}
    for _ in range(args.repeat):
        for name in names:
            r = run_torchdeq(name.split()[1]) if name.startswith("torchdeq") else run_ours(name)
            if name not in best or r["time"] < best[name]["time"]:
                best[name] = r
    rule = ("||f(z_b) - z_b|| / ||f(z_b)||" if args.stop_mode == "rel"
            else "||f(z_b) - z_b||")
    print(f"scenario {args.scenario}: batch {args.batch} x {args.channels} x {args.size} x "
          f"{args.size} float64 ({x.numel()} unknowns), contraction {args.contraction}; every "
          f"solver to max_b {rule} < {args.tol:g} (TorchDEQ's {args.stop_mode} "
          f"rule); best of {args.repeat}, {args.threads} thread(s)")
    print(f"{'solver':24s} {'its':>5s} {'f evals':>7s} {'JVPs':>5s} {'time s':>8s} "
          f"{'worst ' + args.stop_mode:>10s} {'|z - z_ref|/|z_ref|':>20s}")
    rows = []
    for name in names:
        r = best[name]
        err = float((r["z"] - z_ref).norm() / z_ref.norm())
        rows.append(dict(solver=name, its=r["its"], f_evals=r["f_evals"], jvps=r.get("jvps", 0),
                         time=r["time"], stop_mode=args.stop_mode, worst=r["worst"],
                         solution_error=err))
        print(f"{name:24s} {r['its']:5d} {r['f_evals']:7.1f} {r.get('jvps', 0):5d} "
              f"{r['time']:8.4f} {r['worst']:10.2e} {err:20.2e}")
    theirs = min((r for r in rows if r["solver"].startswith("torchdeq")
                  and r["worst"] < args.tol), key=lambda r: r["time"], default=None)
    ours = min((r for r in rows if not r["solver"].startswith("torchdeq")
                and r["worst"] < args.tol), key=lambda r: r["time"], default=None)
    if theirs and ours:
        print(f"best PETSc ({ours['solver']}) vs best TorchDEQ ({theirs['solver']}): "
              f"{ours['time']:.4f} s vs {theirs['time']:.4f} s, ratio "
              f"{ours['time'] / theirs['time']:.2f}x (< 1: PETSc faster)")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(rows, fh, indent=1)
    for s in solvers.values():
        s.destroy()


if __name__ == "__main__":
    main()
