"""Where Anderson pays: solver cost against the spectral radius of the trained cell.

Trains the same expressive DEQ (the implicit-layers tutorial's ResNet cell by
default) once per regularisation setting (same data, seed and epochs;
Anderson(5) forward to rtol 1e-3 and a GMRES adjoint, so every model is trained
with accurate gradients): ``--penalty spectral`` (default) holds the spectral
radius below each of ``--values`` (``--weight`` 100), ``--penalty jac`` uses the
Frobenius-norm Jacobian penalty with each of ``--values`` as its weight; ``none``
in the list trains without a penalty. Then, on one batch of test images
through each trained model, estimates the spectral radius of ``J_f`` at ``z*``
and solves the fixed point with every option set to ``--rtol`` (default 1e-4)
from ``z = 0``. Prints, per model, the f evaluations (JVPs counted as one f
each) and the time of each set relative to Picard's, and plots both against
the spectral radius. Picard's ratio is the speed-up; where Picard does not
converge within ``--max-it`` the ratio is a lower bound (marked ``>``).

Run by hand:
    .venv/bin/python benchmarks/bench_regime.py --values none,0.97,0.9,0.7,0.5 [--epochs 4]
    .venv/bin/python benchmarks/bench_regime.py --penalty jac --values none,1,5
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402

from deq_petsc.studies.compare import compare_solves, read_option_sets  # noqa: E402
from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.core.solver_sets import forward_solvers  # noqa: E402
from deq_petsc.science.train import TrainConfig, Trainer  # noqa: E402

#: The registry's forward solvers, each once (its deeper Anderson window included).
SETS = [f"{name}: {forward}" for name, forward in forward_solvers().items()]


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", default="polarity")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--cell", default="resnet", choices=["contractive", "resnet", "pair"])
    p.add_argument("--penalty", choices=["spectral", "jac"], default="spectral")
    p.add_argument("--values", default="none,0.97,0.9,0.7,0.5",
                   help="comma-separated targets (spectral) or weights (jac); none: no penalty")
    p.add_argument("--weight", type=float, default=100.0, help="the spectral penalty's weight")
    p.add_argument("--batch", type=int, default=32, help="test images in the solved batch")
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--max-it", type=int, default=300)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="runs/regime")
    p.add_argument("--sets-file", help="option sets, one 'name: options' per line")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sets = read_option_sets(Path(args.sets_file).read_text().splitlines() if args.sets_file
                            else SETS)
    data = load_task(args.task, limit=args.limit or None, seed=0, progress=False)
    images = data.images[data.indices("test")][:args.batch]
    results = []
    for value in args.values.split(","):
        lam = value.strip()
        reg = {} if lam == "none" else (
            {"spectral_reg": args.weight, "spectral_target": float(lam)}
            if args.penalty == "spectral" else {"jac_reg": float(lam)})
        cfg = TrainConfig(task=args.task, epochs=args.epochs, width=args.width, cell=args.cell,
                          limit=args.limit, seed=0, **reg)
        trainer = Trainer(cfg, data, out / f"{args.penalty}-{lam}", progress=False,
                          solver_options={"snes_type": "anderson", "snes_anderson_m": 5},
                          log=lambda line, lam=lam: print(f"[{args.penalty} {lam}] {line}",
                                                          flush=True))
        if (out / f"{args.penalty}-{lam}" / "checkpoint.pt").exists():   # trained before
            trainer.resume()
        history = trainer.fit()
        train_s = history[-1]["elapsed"]
        model = trainer.model.eval()
        with torch.no_grad():
            x = model.inject(images.to(torch.float32)).double()
        model.equilibrium.cell.double()                 # solved in float64, as x
        problem = model.equilibrium.fixed_point_problem(x)
        with torch.no_grad():
            problem.linearize(problem.z0).jvp(problem(problem.z0))      # warm-up
        runs = compare_solves(problem, sets, defaults={"snes_rtol": args.rtol,
                                                       "snes_max_it": args.max_it},
                              progress=lambda r: print(f"  ... {r.name}: {r.reason}",
                                                       flush=True))
        ref = next((r for r in runs if r.converged and r.name != "picard"), None)
        rho = float("nan")
        if ref is not None:
            from deq_petsc.core.solver import DEQSolver
            with DEQSolver(prefix="regime_ref_", options={
                    "snes_type": "anderson", "snes_anderson_m": 20, "snes_rtol": 1e-6,
                    "snes_max_it": 300}, check_convergence=False) as solver:
                z, _ = solver.solve(problem)
            from deq_petsc.core.diagnostics import spectral_radius
            rho = spectral_radius(problem, z, iters=100)
        picard = next(r for r in runs if r.name == "picard")
        row = {"penalty": args.penalty, "value": lam, "spectral_radius": rho,
               "val_acc": history[-1]["val_acc"],
               "train_seconds": train_s, "runs": [r.row() for r in runs]}
        results.append(row)
        print(f"{args.penalty} {lam}: spectral radius {rho:.4f}, val acc {row['val_acc']:.3f}, "
              f"trained in {train_s:.0f} s")
        for r in runs:
            cost = r.function_evals + r.jvps
            pc = picard.function_evals + picard.jvps
            bound = ">" if not picard.converged else " "
            print(f"  {r.name:14s} {r.reason:28s} its {r.iterations:5d} f+JVP {cost:5d} "
                  f"time {r.time:8.3f} s | Picard / this: f {bound}{pc / max(cost, 1):6.2f}x "
                  f"time {bound}{picard.time / r.time:6.2f}x", flush=True)
        trainer.destroy()
    (out / "results.json").write_text(json.dumps(results, indent=1))
    plot(results, out / "regime.png", args)
    print(f"wrote {out}/results.json, regime.png")


def plot(results, path, args):
    from deq_petsc.science.plots import finish_figure, subplots

    fig, (ax1, ax2) = subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    names = [r["name"] for r in results[0]["runs"] if r["name"] != "picard"]
    ordered = sorted(results, key=lambda r: r["spectral_radius"])
    rho = [r["spectral_radius"] for r in ordered]
    for name in names:
        f_ratio, t_ratio = [], []
        for r in ordered:
            runs = {x["name"]: x for x in r["runs"]}
            pc, me = runs["picard"], runs[name]
            f_ratio.append((pc["function_evals"] + pc["jvps"]) /
                           max(me["function_evals"] + me["jvps"], 1) if me["converged"]
                           else float("nan"))
            t_ratio.append(pc["time"] / me["time"] if me["converged"] else float("nan"))
        ax1.plot(rho, f_ratio, "o-", label=name)
        ax2.plot(rho, t_ratio, "o-", label=name)
    for ax, what in ((ax1, "f evaluations"), (ax2, "wall time")):
        ax.axhline(1, color="k", lw=0.8)
        ax.set(xlabel="spectral radius of J_f at z*", ylabel=f"Picard / set ({what})",
               title=f"{what} to rtol {args.rtol:g}", yscale="log")
    return finish_figure(fig, (ax1, ax2), path,
                         f"{args.task}: {args.cell} cell width {args.width}, "
                         f"{args.epochs} epochs per {args.penalty} penalty setting")


if __name__ == "__main__":
    main()
