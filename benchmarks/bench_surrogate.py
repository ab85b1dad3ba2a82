"""PETScML's claim on its own ground: TAO's second-order methods against tuned Adam on a
smooth SciML surrogate, the Bratu task (``deq_petsc.science.data.pde``), at equal wall time; and
the same study on QM9 property regression (``--task polarity``: the dipole, ``--task
gap``: the HOMO-LUMO gap) beside gradient boosting on descriptors on the same split.

For each model (``--models``: the MLP surrogate and the DEQ surrogate, float64; for QM9
the graph-image classifier's explicit stack and DEQ with one regression output):

1. Adam is tuned on seed 0: every learning rate of ``--lrs`` with a constant step and
   with a cosine decay over the budget, mini-batches of ``--batch``; the setting with
   the lowest validation error at the end of its budget is Adam's (the sweep is printed
   and kept in the JSON).
2. Every method runs on every seed of ``--seeds`` from the same initial weights (the
   seed's) for ``--budget`` seconds of training: tuned Adam, and each TAO method as ONE
   solve on the whole training split with no iteration limit and zero tolerances, so
   only the budget (``CONVERGED_USER``) or a stall at a stationary point ends it.
3. Parameters are snapshotted along the way (``--snapshots`` per run, spread over the
   budget) and scored afterwards by one scorer model with tight solves (DEQ: rtol
   1e-10), so scoring costs no budget and every method is scored alike.

Printed and written (``--json``, ``--plot``): the test error (Bratu: relative L2 error;
QM9: MAE in the target's units) against time (mean over seeds, one line per method); per
method the final errors (mean, min, max over seeds); QM9: gradient boosting's test MAE
and its standard error (``deq-petsc baseline --objective regress``); TAO's converged
reasons, iterations, objective / gradient / Hessian (or Jacobian) product counts,
seconds per kind of product and the share of a TAO iteration spent outside them (TAO's
own work).

Methods: adam; lmvm (L-BFGS, More-Thuente); nls-gn (Newton-CG line search,
Gauss-Newton); bntr-gn (trust region, Gauss-Newton); brgn (TAO's Gauss-Newton for
least squares); bntr-exact (exact Hessian, MLP only).

    .venv/bin/python benchmarks/bench_surrogate.py --budget 60 --json runs/surrogate.json \\
        --plot docs/img/surrogate-trainers.png
    .venv/bin/python benchmarks/bench_surrogate.py --task gap --models explicit --budget 150
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

import deq_petsc

deq_petsc.init([sys.argv[0]])

import numpy as np  # noqa: E402
import torch  # noqa: E402

from deq_petsc.science.baseline import BaselineConfig, run_baseline  # noqa: E402
from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.science.data.pde import FIELD_TASKS  # noqa: E402
from deq_petsc.science.data.tasks import TASKS  # noqa: E402
from deq_petsc.science.inference import build_model  # noqa: E402
from deq_petsc.science.objectives import make_objective  # noqa: E402
from deq_petsc.science.run_record import run_record  # noqa: E402
from deq_petsc.science.train import TrainConfig  # noqa: E402
from deq_petsc.science.train.curvature import ParameterSlices  # noqa: E402
from deq_petsc.science.train.tao import TAO_SOLVER_OPTIONS, TAO_ADJOINT_OPTIONS, train_tao  # noqa: E402

TAO_METHODS = {
    "lmvm": ("lmvm", "gauss-newton"),
    "nls-gn": ("nls", "gauss-newton"),
    "bntr-gn": ("bntr", "gauss-newton"),
    "brgn": ("brgn", "gauss-newton"),
    "bntr-exact": ("bntr", "exact"),
}
#: the scorer's solves: tight, so a snapshot's error is the model's, not the solve's
SCORER_OPTIONS = {"snes_rtol": 1e-10, "snes_atol": 1e-14, "snes_max_it": 500}


class Snapshots:
    """Parameters at most ``count`` times over ``budget`` seconds (and the last one), with
    the model's buffers (the DEQ cell's power-iteration vector is part of its function).
    Times are on one clock for every method: seconds since :meth:`start`."""

    def __init__(self, model, budget: float, count: int):
        self.model = model
        self.every = budget / max(count, 1)
        self.kept: list[tuple[float, int, torch.Tensor, list]] = []
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self.t0 = time.perf_counter()

    def due(self) -> bool:
        return not self.kept or time.perf_counter() - self.t0 >= self.kept[-1][0] + self.every

    def __call__(self, its: int, seconds, flat: torch.Tensor, force=False) -> None:
        """Keep ``flat`` now if one is due (``seconds``, TAO's own clock, is not used)."""
        if force or self.due():
            self.kept.append((time.perf_counter() - self.t0, its, flat.detach().clone(),
                              [b.detach().clone() for b in self.model.buffers()]))


#: per task: the objective, and the model's width and depth unless given (the Bratu
#: surrogate's MLP has 3 hidden layers of 64; QM9's graph-image model, train's pair cell,
#: is cut to 4 applications of 8 channels: a full-batch float64 gradient over 1,600
#: molecules then takes 3.5-3.7 s on 2 cores, where 16 channels took about 4x that)
TASK_DEFAULTS = {"bratu": ("field", 64, 3), "polarity": ("regress", 8, 4),
                 "gap": ("regress", 8, 4)}


def config(args, model: str, seed: int, lr: float = 1e-3) -> TrainConfig:
    objective, width, depth = TASK_DEFAULTS[args.task]
    return TrainConfig(task=args.task, seed=seed, width=args.width or width, kind=model,
                       depth=args.depth or depth, objective=objective, dtype="float64",
                       lr=lr, batch_size=args.batch,
                       cell="dense" if args.task in FIELD_TASKS else "pair")


def run_adam(args, data, objective, model_kind, seed, lr, schedule):
    """Adam for ``--budget`` seconds; ``(snapshots, summary)``."""
    model = build_model(config(args, model_kind, seed, lr), data, objective.out_dim)
    slices = ParameterSlices(model)
    X = data.images[data.indices("train")]
    y = objective.targets(data, "train")
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    g = torch.Generator().manual_seed(seed)
    snaps = Snapshots(model, args.budget, args.snapshots)
    steps, epochs = 0, 0
    model.train()
    snaps.start()
    start = snaps.t0
    snaps(0, 0.0, slices.flatten([p.detach() for p in slices.params]), force=True)
    elapsed = 0.0
    try:
        while elapsed < args.budget:
            order = torch.randperm(len(y), generator=g)
            for i in range(0, len(y), args.batch):
                if schedule == "cosine":
                    for group in opt.param_groups:
                        group["lr"] = lr * (1 + math.cos(math.pi * min(elapsed / args.budget,
                                                                        1.0))) / 2
                idx = order[i:i + args.batch]
                loss = objective.loss(model(X[idx]), y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                steps += 1
                elapsed = time.perf_counter() - start
                if not math.isfinite(loss.item()):
                    elapsed = args.budget           # a diverged setting: its last snapshot
                if snaps.due():                     # flattened only then: no cost otherwise
                    snaps(steps, elapsed, slices.flatten([p.detach() for p in slices.params]))
                if elapsed >= args.budget:
                    break
            epochs += 1
        snaps(steps, elapsed, slices.flatten([p.detach() for p in slices.params]), force=True)
    finally:
        model.destroy()
    return snaps.kept, {"steps": steps, "epochs": epochs, "seconds": elapsed}


def run_tao(args, data, objective, model_kind, seed, method):
    """One TAO solve of ``method`` until the budget; ``(snapshots, summary)``."""
    tao_type, hessian = TAO_METHODS[method]
    model = build_model(config(args, model_kind, seed), data, objective.out_dim,
                        solver_options=TAO_SOLVER_OPTIONS, adjoint_options=TAO_ADJOINT_OPTIONS)
    slices = ParameterSlices(model)
    X = data.images[data.indices("train")]
    y = objective.targets(data, "train")
    snaps = Snapshots(model, args.budget, args.snapshots)
    model.eval()
    try:
        snaps.start()
        start = snaps.t0
        snaps(0, 0.0, slices.flatten([p.detach() for p in slices.params]), force=True)
        result = train_tao(model, objective, X, y, prefix=f"{method.replace('-', '_')}_",
                           hessian=hessian, chunk=len(y), accept_failure=True,
                           deadline=start + args.budget, on_iterate=snaps,
                           defaults={"tao_type": tao_type, "tao_max_it": 10 ** 9,
                                     "tao_max_funcs": 10 ** 9, "tao_gatol": 0.0, "tao_grtol": 0.0,
                                     "tao_gttol": 0.0})
        snaps(result.iterations, result.time,
              slices.flatten([p.detach() for p in slices.params]), force=True)
    finally:
        model.destroy()
    products = sum(result.seconds.values())
    summary = {"reason": result.reason_name + (" (stationary)" if result.stationary else ""),
               "iterations": result.iterations, "seconds": result.time,
               "counts": result.counts, "callback_seconds": result.seconds,
               "outside_products": (result.time - products) / result.time if result.time
               else math.nan,
               "time_over_products": result.time / products if products else math.nan}
    return snaps.kept, summary


class Scorer:
    """One model with tight solves that scores any snapshot of the same architecture."""

    def __init__(self, args, data, objective, model_kind):
        self.data, self.objective = data, objective
        self.model = build_model(config(args, model_kind, 0), data, objective.out_dim,
                                 solver_options=SCORER_OPTIONS,
                                 adjoint_options=TAO_ADJOINT_OPTIONS)
        self.model.eval()
        self.slices = ParameterSlices(self.model)
        self.splits = {s: (data.images[data.indices(s)], objective.targets(data, s))
                       for s in ("train", "val", "test")}

    @torch.no_grad()
    def __call__(self, flat: torch.Tensor, buffers: list) -> dict:
        for p, view in zip(self.slices.params, self.slices.split(flat).values()):
            p.copy_(view)
        for b, value in zip(self.model.buffers(), buffers):
            b.copy_(value)
        out = {}
        for split, (X, y) in self.splits.items():
            pred = self.model(X)
            if split == "train":
                out["train_loss"] = float(self.objective.loss(pred, y))
            out[f"{split}_{self.objective.metric}"] = self.objective.metric_value(
                self.objective.metric_sum(pred, y), len(y))
            out[f"{split}_mse"] = float(((self.objective.unscale(pred)
                                          - self.objective.unscale(y)) ** 2).mean())
        return out

    def destroy(self):
        self.model.destroy()


def scored(scorer, snaps) -> list[dict]:
    rows = []
    metric = scorer.objective.metric
    for seconds, its, flat, buffers in snaps:
        try:
            rows.append({"seconds": seconds, "its": its, **scorer(flat, buffers)})
        except Exception as err:           # a blown-up snapshot: no equilibrium to score
            rows.append({"seconds": seconds, "its": its, "error": str(err).splitlines()[0],
                         "train_loss": math.nan, f"train_{metric}": math.nan,
                         f"val_{metric}": math.nan, f"test_{metric}": math.nan,
                         "test_mse": math.nan})
    return rows


def study(args, data, objective, model_kind) -> dict:
    scorer = Scorer(args, data, objective, model_kind)
    metric = objective.metric
    result = {"model": model_kind, "task": args.task, "metric": metric,
              "metric_label": objective.metric_short, "sweep": [], "runs": []}

    def adam(seed, lr, schedule):
        snaps, summary = run_adam(args, data, objective, model_kind, seed, lr, schedule)
        return scored(scorer, snaps), summary

    try:
        for lr in args.lrs:                                  # Adam's sweep on the first seed
            for schedule in ("constant", "cosine"):
                curve, summary = adam(args.seeds[0], lr, schedule)
                result["sweep"].append({"lr": lr, "schedule": schedule, **summary,
                                        "final": curve[-1], "curve": curve})
                print(f"  {model_kind} adam sweep lr {lr:g} {schedule:8s}: val "
                      f"{curve[-1][f'val_{metric}']:.3e} test "
                      f"{curve[-1][f'test_{metric}']:.3e} "
                      f"({summary['epochs']} epochs)", flush=True)
        finite = [r for r in result["sweep"] if math.isfinite(r["final"][f"val_{metric}"])]
        best = min(finite, key=lambda r: r["final"][f"val_{metric}"])
        result["adam"] = {"lr": best["lr"], "schedule": best["schedule"]}
        methods = ["adam"] + [m for m in args.methods
                              if not (m == "bntr-exact" and model_kind == "deq")]
        for seed in args.seeds:
            for method in methods:
                if method == "adam" and seed == args.seeds[0]:
                    curve, summary = best["curve"], {k: best[k] for k in
                                                     ("steps", "epochs", "seconds")}
                elif method == "adam":
                    curve, summary = adam(seed, best["lr"], best["schedule"])
                else:
                    snaps, summary = run_tao(args, data, objective, model_kind, seed, method)
                    curve = scored(scorer, snaps)
                result["runs"].append({"method": method, "seed": seed, **summary,
                                       "final": curve[-1], "curve": curve})
                print(f"  {model_kind} seed {seed} {method:10s}: test "
                      f"{curve[-1][f'test_{metric}']:.3e} train loss "
                      f"{curve[-1]['train_loss']:.3e}"
                      + (f" ({summary['reason']}, {summary['iterations']} its)"
                         if "reason" in summary else f" ({summary['epochs']} epochs)"),
                      flush=True)
    finally:
        scorer.destroy()
    return result


def _what(result: dict) -> str:
    return (f"{result['model']} surrogate" if result.get("task", "bratu") in FIELD_TASKS
            else f"{result['task']} {result['model']} regression")


def table(result: dict) -> str:
    metric = result.get("metric", "rel_l2")
    label = {"rel_l2": "rel L2"}.get(metric, metric.upper())
    lines = [f"{_what(result)}: Adam tuned to lr {result['adam']['lr']:g}, "
             f"{result['adam']['schedule']}",
             f"{'method':10s} {f'test {label} (mean [min, max])':>32s} {'vs Adam':>8s} "
             f"{'MSE vs Adam':>11s} "
             f"{'train MSE':>9s} {'its':>6s} {'f':>6s} {'g':>6s} {'Hv/Jv':>6s} "
             f"{'outside':>7s}  reasons"]
    by = {}
    for run in result["runs"]:
        by.setdefault(run["method"], []).append(run)
    adam = np.mean([r["final"][f"test_{metric}"] for r in by["adam"]])
    adam_mse = np.mean([r["final"]["test_mse"] for r in by["adam"]])
    for method, runs in by.items():
        test = np.array([r["final"][f"test_{metric}"] for r in runs])
        mse = np.mean([r["final"]["test_mse"] for r in runs])
        loss = np.mean([r["final"]["train_loss"] for r in runs])
        if method == "adam":
            extra = f"{'':>6s} {'':>6s} {'':>6s} {'':>6s} {'':>7s}  " + \
                f"{int(np.mean([r['epochs'] for r in runs]))} epochs"
        else:
            c = [r["counts"] for r in runs]
            its = np.mean([r["iterations"] for r in runs])
            f = np.mean([x["objective"] + x["residual"] for x in c])
            g = np.mean([x["gradient"] + x["jacobian"] for x in c])
            hv = np.mean([x["hessian_products"] + x["jacobian_products"] for x in c])
            outside = np.mean([r["outside_products"] for r in runs])
            reasons = ",".join(sorted({r["reason"] for r in runs}))
            extra = (f"{its:6.0f} {f:6.0f} {g:6.0f} {hv:6.0f} {100 * outside:6.1f}%  "
                     f"{reasons}")
        lines.append(f"{method:10s} {test.mean():12.3e} [{test.min():.2e}, {test.max():.2e}] "
                     f"{adam / test.mean():7.2f}x {adam_mse / mse:10.2f}x {loss:9.2e} {extra}")
    lines.append("(vs Adam: Adam's mean test error over the method's; > 1: lower than Adam's)")
    if "baseline" in result:
        b = result["baseline"]
        lines.append(f"gradient boosting on descriptors, same split: test MAE {b['mae']:.4f} "
                     f"(standard error {b['mae_stderr']:.4f}); predicting the training mean: "
                     f"{b['baseline_mae']:.4f}")
    return "\n".join(lines)


def seconds_per_product(result: dict) -> str:
    lines = [f"{_what(result)}: seconds per callback (mean over seeds): objective, "
             f"gradient, Hessian set-up, Hessian product; Jacobian set-up, Jacobian product"]
    by = {}
    for run in result["runs"]:
        if run["method"] != "adam":
            by.setdefault(run["method"], []).append(run)
    for method, runs in by.items():
        parts = []
        for kind in ("objective", "gradient", "hessian", "hessian_products", "residual",
                     "jacobian", "jacobian_products"):
            n = sum(r["counts"][kind] for r in runs)
            if n:
                s = sum(r["callback_seconds"][kind] for r in runs)
                parts.append(f"{kind} {1e3 * s / n:.2f} ms x {n // len(runs)}")
        ratio = np.mean([r["time_over_products"] for r in runs])
        lines.append(f"  {method:10s} " + ", ".join(parts)
                     + f"; TAO time / callback time {ratio:.3f}")
    return "\n".join(lines)


def plot(results: list[dict], path: str, title: str) -> None:
    from deq_petsc.science.plots import finish_figure, subplots

    fig, axes = subplots(1, len(results), figsize=(6.2 * len(results), 4.2),
                         constrained_layout=True, squeeze=False)
    for ax, result in zip(axes[0], results):
        by = {}
        for run in result["runs"]:
            by.setdefault(run["method"], []).append(run["curve"])
        for method, curves in by.items():
            grid = np.linspace(0, max(c[-1]["seconds"] for c in curves), 200)
            values = []
            for c in curves:
                t = np.array([p["seconds"] for p in c])
                e = np.array([p[f"test_{result.get('metric', 'rel_l2')}"] for p in c])
                # the error a run had reached by each time (its last snapshot before it)
                k = np.searchsorted(t, grid, side="right") - 1
                values.append(e[np.clip(k, 0, len(e) - 1)])
            values = np.array(values)
            label = method if method != "adam" else (
                f"adam (lr {result['adam']['lr']:g}, {result['adam']['schedule']})")
            line, = ax.plot(grid, np.exp(np.nanmean(np.log(values), 0)), label=label)
            ax.fill_between(grid, np.nanmin(values, 0), np.nanmax(values, 0), alpha=0.15,
                            color=line.get_color())
        if "baseline" in result:
            ax.axhline(result["baseline"]["mae"], color="0.3", ls="--", lw=1,
                       label="gradient boosting on descriptors")
        ax.set(xlabel="training seconds", yscale="log",
               ylabel=f"test {result.get('metric_label', 'relative L2 error')}",
               title=f"{_what(result)} ({len(by['adam'])} seeds: geometric mean, "
                     f"band min-max)")
        ax.legend(fontsize=8)
    finish_figure(fig, list(axes[0]), path, title)


def _title(task: str, train: int, budget: float) -> str:
    what = ("Bratu surrogate" if task in FIELD_TASKS else
            f"QM9 {TASKS[task].target_name} regression")
    return f"{what} ({train} training samples): TAO against tuned Adam, {budget:g} s each"


def replot(args) -> None:
    """The tables and the plot of a finished study, from its JSON."""
    import gzip
    opener = gzip.open if args.from_json.endswith(".gz") else open
    with opener(args.from_json, "rt") as fh:
        document = json.load(fh)
    settings, results = document["settings"], document["results"]
    for result in results:
        print("\n" + table(result))
        print(seconds_per_product(result))
    if args.plot:
        train = round(0.8 * settings["limit"])
        plot(results, args.plot, _title(settings.get("task", "bratu"), train,
                                        settings["budget"]))
        print(f"wrote {args.plot}")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(TASK_DEFAULTS), default="bratu")
    p.add_argument("--limit", type=int, default=2000, help="draws or molecules (80%% train)")
    p.add_argument("--models", default="explicit,deq")
    p.add_argument("--width", type=int, help="default: 64 (bratu), 8 (QM9)")
    p.add_argument("--depth", type=int, help="MLP hidden layers, or the explicit graph "
                   "model's cell applications; default: 3 (bratu), 4 (QM9)")
    p.add_argument("--budget", type=float, default=60.0, help="training seconds per run")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--lrs", default="1e-3,3e-3,1e-2,3e-2", help="Adam's sweep")
    p.add_argument("--batch", type=int, default=64, help="Adam's mini-batch")
    p.add_argument("--methods", default=",".join(TAO_METHODS), help="TAO methods")
    p.add_argument("--snapshots", type=int, default=60)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cache-dir")
    p.add_argument("--json", help="write every run's curve and counts here")
    p.add_argument("--plot", help="test error against time, PNG")
    p.add_argument("--from-json", help="only print the tables and draw --plot from this "
                   "study's JSON (--json of an earlier run; .gz read too)")
    args = p.parse_args()
    if args.from_json:
        return replot(args)
    args.seeds = [int(s) for s in args.seeds.split(",")]
    args.lrs = [float(s) for s in args.lrs.split(",")]
    args.methods = [m for m in args.methods.split(",") if m]
    unknown = [m for m in args.methods if m not in TAO_METHODS]
    if unknown:
        sys.exit(f"--methods: unknown {unknown}; known: {', '.join(TAO_METHODS)}")
    torch.set_num_threads(args.threads)
    data = load_task(args.task, limit=args.limit, seed=0, cache_dir=args.cache_dir,
                     progress=False)
    objective = make_objective(TASK_DEFAULTS[args.task][0], data)
    print(data.summary())
    baseline = None
    if args.task not in FIELD_TASKS:
        report = run_baseline(BaselineConfig(objective="regress", seed=0,
                                             cache_dir=args.cache_dir, progress=False), data,
                              log=lambda *a: None)
        baseline = {k: report[k] for k in ("mae", "mae_stderr", "rmse", "r2", "baseline_mae",
                                           "rounds", "fit_seconds")}
        print(f"gradient boosting on descriptors: test MAE {baseline['mae']:.4f} "
              f"(standard error {baseline['mae_stderr']:.4f})", flush=True)
    print(f"{args.budget:g} s of training per run, seeds {args.seeds}, torch threads "
          f"{args.threads}; Adam's sweep lr {args.lrs} x constant|cosine, batch {args.batch}",
          flush=True)
    results = []
    for model_kind in args.models.split(","):
        results.append(study(args, data, objective, model_kind))
        if baseline is not None:
            results[-1]["baseline"] = baseline
    for result in results:
        print("\n" + table(result))
        print(seconds_per_product(result))
    if args.plot:
        plot(results, args.plot, _title(args.task, len(data.indices("train")), args.budget))
        print(f"wrote {args.plot}")
    if args.json:
        document = {"settings": {k: v for k, v in vars(args).items()},
                    "data": data.params, "record": run_record(settings=vars(args)),
                    "results": results}
        with open(args.json, "w") as fh:
            json.dump(document, fh, indent=1, default=float)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
