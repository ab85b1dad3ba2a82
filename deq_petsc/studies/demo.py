"""The main job: one scientist (polarity by default) trained with each named solver set, side
by side.

The same expressive DEQ (the implicit-layers tutorial's ResNet cell by
default), data, seed and epochs per run, trained once per solver set of
:mod:`deq_petsc.core.solver_sets` (each under its own options prefix, the set's
options as defaults that the command line overrides), at the paper's training
tolerances (rtol 1e-2, at most 25 iterations forward and backward; a solve at
the cap goes on from its last iterate and is counted as not converged). Then,
per run: time to a target validation accuracy, test accuracy, the fraction of
forward and adjoint solves that converged, mean iterations and f evaluations,
the spectral radius of ``J_f`` at ``z*`` on test images, and inference on the
test split to rtol 1e-4 with the run's own forward solver. Finally every set's
forward solver on one batch of test images through one trained model, the one with
the largest spectral radius below 1 (the hardest equilibrium every solver can still
reach; the smallest radius if none is below 1): the residual-vs-iteration plot and
the inference costs on one model.

Writes ``<out>/summary.json``, ``comparison.png`` (loss and validation
accuracy against training time), ``residuals.png`` and a run folder per set.

Importing this module does not start PETSc (the CLI reads :class:`DemoConfig`'s
defaults before it initialises PETSc with the command line).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path

from deq_petsc.core import solver_sets
from deq_petsc.process.atomic import write_json
from deq_petsc.science.config import TrainConfig, again, setting
from deq_petsc.science.metrics import accuracy_stderr

#: The demo's model and protocol (chosen by measurement: docs/solvers.md).
DEFAULT_SOLVERS = ("picard", "anderson", "anderson20-gmres")
#: solved beside the sets on the one shared model (inference only): PETSc's own
#: implementations of Picard and Anderson, which the sets' lean types replace
REFERENCE_SOLVERS = ("petsc-picard", "petsc-anderson")


def task_epochs(task: str) -> int:
    """Epochs per solver set by default: the task's own (``Task.demo_epochs``)."""
    from deq_petsc.science.data.tasks import TASKS
    return TASKS[task].demo_epochs


def samples(task: str) -> str:
    """What a task's samples are called in the report (``molecules``)."""
    from deq_petsc.science.data.tasks import TASKS
    return TASKS[task].samples if task in TASKS else "samples"


@dataclass
class DemoConfig(TrainConfig):
    """The demo's settings: a training run (the fields of TrainConfig, with the demo's
    defaults), trained once per solver set, then compared."""
    task: str = again(TrainConfig, "task", "polarity")
    limit: int | None = again(TrainConfig, "limit", 2000)
    # The same epochs for every set, not the same seconds: a time budget gave 5 epochs
    # on one 2-core machine and 2-3 on a slower one, and the comparison with it
    # (docs/solvers.md); time to the target is measured either way. None: the task's
    epochs: int | None = again(TrainConfig, "epochs", None, help="epochs per solver set",
                               unset="the task's: 3 for molecules, 12 for crystals and MOFs")
    cell: str = again(TrainConfig, "cell", "resnet")
    elements: bool = again(TrainConfig, "elements", False)
    # The spectral penalty keeps the trained equilibria attracting: unpenalised, every
    # set's model ended with rho(J_f) 1.04-1.41 and no solver reached 1e-4 at inference
    # (docs/solvers.md)
    spectral_reg: float = again(TrainConfig, "spectral_reg", 100.0)
    spectral_target: float = again(TrainConfig, "spectral_target", 0.95)
    solvers: tuple = setting(DEFAULT_SOLVERS, "comma-separated solver sets",
                             parse=lambda text: tuple(text.split(",")))
    train_rtol: float = setting(1e-2, "forward and adjoint relative tolerance in training",
                                flag="rtol", check=lambda v: 0 < v < 1, must_be="in (0, 1)")
    train_max_it: int = setting(25, "forward and adjoint iteration cap in training",
                                flag="max_it", check=lambda v: v >= 1, must_be="at least 1")
    target_accuracy: float = setting(0.70, "validation accuracy whose time to reach is "
                                     "reported", check=lambda v: 0 <= v <= 1,
                                     must_be="in [0, 1]")
    inference_rtol: float = setting(1e-4, "relative tolerance of the inference solves",
                                    flag=None)
    inference_max_it: int = setting(
        200, "iteration cap of the inference solves (near radius 1 Picard needs more: a "
        "capped solve is reported as not converged)", check=lambda v: v >= 1,
        must_be="at least 1")
    time_budget: float | None = setting(
        None, "seconds of training per solver set: each stops after the first epoch that "
        "ends past it; 0: none", check=lambda v: v >= 0, must_be="non-negative (0: no budget)",
        unset="none, every set trains --epochs epochs")
    out: str = setting("runs/demo", "output folder")
    cache_dir: str | None = setting(None, "the data cache", unset="$DEQ_PETSC_CACHE or "
                                    "~/.cache/deq_petsc")
    progress: bool = setting(True, "no progress bars", negative=True)
    baseline: bool = setting(True, "skip the gradient-boosting reference on the same split "
                             "(deq-petsc baseline)", negative=True)

    def __post_init__(self):
        if self.epochs is None:
            self.epochs = task_epochs(self.task)
        if not self.time_budget:
            self.time_budget = None

    def training(self) -> TrainConfig:
        """One solver set's training run: this config's TrainConfig fields."""
        return TrainConfig(**{f.name: getattr(self, f.name) for f in fields(TrainConfig)})


def prefix_of(name: str) -> str:
    """A set's options prefix: its name with what PETSc does not allow turned into ``_``."""
    return "".join(c if c.isalnum() else "_" for c in name) + "_"


def training_defaults(cfg: DemoConfig, sset) -> dict:
    """The set's options plus the paper's training tolerances, forward and backward."""
    tol = {"snes_rtol": cfg.train_rtol, "snes_max_it": cfg.train_max_it}
    back = {f"adjoint_{k}": v for k, v in tol.items()}
    back.update(adjoint_ksp_rtol=cfg.train_rtol, adjoint_ksp_max_it=cfg.train_max_it)
    return {**sset.options(), **tol, **back}


def run_demo(cfg: DemoConfig, data=None, log=print) -> dict:
    """Train, evaluate and compare; returns the summary written to ``summary.json``."""
    from petsc4py import PETSc

    from deq_petsc.science.data import load_task
    from deq_petsc.core.petsc_options import inserted_defaults
    from deq_petsc.science.train import Trainer
    from deq_petsc.science.plots import plot_comparison
    from deq_petsc.science.run_record import run_record

    if data is None:
        data = load_task(cfg.task, limit=cfg.limit or None, seed=cfg.seed,
                         cache_dir=cfg.cache_dir, progress=cfg.progress)
    out = Path(cfg.out)
    sets = [solver_sets.get(name) for name in cfg.solvers]
    train_cfg = cfg.training()
    summary = {"task": cfg.task, "target_accuracy": cfg.target_accuracy,
               "config": asdict(cfg), "solvers": {}}
    histories = {}
    test_images = data.images[data.indices("test")]
    for sset in sets:
        prefix = prefix_of(sset.name)
        def say(line, n=sset.name):
            log(f"[{n}] {line}")
        with inserted_defaults(prefix, training_defaults(cfg, sset)):
            trainer = Trainer(train_cfg, data, out / sset.name, prefix=prefix,
                              progress=cfg.progress, log=say)
            try:
                history = trainer.fit(time_budget=cfg.time_budget)
                report = trainer.finish()
                rho = _spectral_radius(trainer.model, test_images[:cfg.batch_size])
                applied = _applied(sset, prefix, trainer.model)
            finally:
                trainer.destroy()
        histories[sset.name] = history
        inference = _inference(cfg, sset, out / sset.name / "checkpoint.pt", data)
        summary["solvers"][sset.name] = _row(cfg, sset, history, report, rho,
                                             {**applied, **inference})
        r = summary["solvers"][sset.name]
        say(f"test accuracy {r['test_accuracy']:.3f}; forward solves converged "
            f"{100 * r['forward_converged_fraction']:.0f}%, adjoint "
            f"{100 * r['adjoint_converged_fraction']:.0f}%; spectral radius {rho:.3f}; "
            f"inference to rtol {cfg.inference_rtol:g}: "
            f"{r['inference_function_evals_per_sample']:.1f} f evals per sample, "
            f"{r['inference_ms_per_sample']:.2f} ms per sample")
    summary["reference"] = _time_to_reference(summary["solvers"], histories,
                                              len(data.indices("val")))
    radii = {name: r["spectral_radius_final"] for name, r in summary["solvers"].items()}
    shared_model = out / shared_model_name(radii) / "checkpoint.pt"
    shared = _shared_model_solves(cfg, sets, shared_model, test_images[:cfg.batch_size], out)
    summary["inference_on_one_model"] = shared
    if cfg.baseline:
        summary["baseline"] = _baseline(cfg, data, log)
    summary["record"] = run_record(settings=summary["config"])
    if PETSc.COMM_WORLD.getRank() == 0:
        plot_comparison(histories, out / "comparison.png",
                        title=f"{cfg.task} DEQ ({cfg.cell} cell, width {cfg.width}): training "
                              f"with each solver set (rtol {cfg.train_rtol:g}, max "
                              f"{cfg.train_max_it} its)")
        write_json(out / "summary.json", summary)
    return summary


def shared_model_name(radii: dict) -> str:
    """The trained model all sets solve side by side: the largest spectral radius below 1,
    where the solvers differ most and each can still converge (at the radii of trained
    models Picard's rate is the radius itself); the smallest radius if none attracts."""
    attracting = {n: r for n, r in radii.items() if r < 1}
    if attracting:
        return max(attracting, key=attracting.get)
    return min(radii, key=radii.get)


def _baseline(cfg, data, log) -> dict:
    """The descriptor baseline's numbers on the same split (rank 0 fits, all get them)."""
    from petsc4py import PETSc

    from deq_petsc.science.baseline import BaselineConfig, run_baseline
    comm = PETSc.COMM_WORLD.tompi4py()
    report = None
    if comm.rank == 0:
        full = run_baseline(BaselineConfig(seed=cfg.seed, cache_dir=cfg.cache_dir,
                                           progress=cfg.progress), data,
                            log=lambda line: log(f"[baseline] {line}"))
        report = {k: full[k] for k in ("model", "features", "n_features", "rounds",
                                       "val_accuracy", "fit_seconds")}
        report["test_accuracy"] = full["accuracy"]
    return comm.bcast(report, root=0)


def _time_to_reference(rows: dict, histories: dict, val_samples: int) -> dict | None:
    """Time to accuracy, the paper's speed measure: how soon each set reaches the first
    set's (Picard's) final validation accuracy, against the time the first set itself
    took to reach it.

    Adds ``seconds_to_reference`` and ``speedup_to_reference`` (reference seconds /
    this set's; null where a set never reached it) to every row. The reference is
    ``resolved`` when the first set's training raised its validation accuracy by more
    than one standard error over its first epoch; otherwise every crossing may be
    noise (four seeds of the main job: 5.3x, 1.5x, never, 1.9x), and the report says so.
    """
    if not histories:
        return None
    name, first = next(iter(histories.items()))
    accuracy = first[-1]["val_acc"]
    seconds = _seconds_to(first, accuracy)
    for set_name, history in histories.items():
        t = _seconds_to(history, accuracy)
        rows[set_name]["seconds_to_reference"] = t
        rows[set_name]["speedup_to_reference"] = (seconds / t) if t else None
    stderr = accuracy_stderr(accuracy, val_samples)
    return {"solver": name, "val_accuracy": accuracy, "seconds": seconds,
            "val_samples": val_samples, "val_accuracy_stderr": stderr,
            "first_epoch_val_accuracy": first[0]["val_acc"],
            "resolved": bool(accuracy - first[0]["val_acc"] > stderr)}


def _seconds_to(history, accuracy: float) -> float | None:
    """Training seconds at the end of the first epoch whose validation accuracy reached
    ``accuracy`` (None: never)."""
    return next((h["elapsed"] for h in history if h["val_acc"] >= accuracy), None)


def _applied(sset, prefix: str, model) -> dict:
    """The options a set trained with, read back while they are in force: the database's
    under the set's prefix (the set's defaults where the command line gave none, so
    ``-anderson_snes_anderson_m 3`` shows as m 3) and the forward SNES's own type and
    tolerances; beside them the registry's options the set started from."""
    from deq_petsc.science.run_record import options_text, petsc_options, snes_settings, solver_options
    return {"options": options_text(solver_options(petsc_options(), prefix)),
            "set_options": sset.text,
            "forward_solver": snes_settings(model.equilibrium.solver.snes)}


def _row(cfg, sset, history, report, rho, measured) -> dict:
    """A set's line of the summary; ``measured``: its applied options and inference."""
    batches = sum(h["batches"] for h in history)
    def mean(key):
        return sum(h[key] for h in history) / len(history)
    return {
        "about": sset.about,
        "test_accuracy": report["accuracy"],
        "test_accuracy_stderr": report["accuracy_stderr"],
        "test_samples": report["n"],
        "majority_baseline": report["majority_baseline"],
        "train_seconds": history[-1]["elapsed"],
        "epochs": len(history),
        "seconds_to_target": _seconds_to(history, cfg.target_accuracy),
        "final_val_accuracy": history[-1]["val_acc"],
        "forward_converged_fraction": 1 - sum(h["inexact_forward"] for h in history) / batches,
        "adjoint_converged_fraction": 1 - sum(h["inexact_adjoint"] for h in history) / batches,
        "forward_iterations_mean": mean("forward_its"),
        "forward_function_evals_mean": mean("forward_f_evals"),
        "backward_iterations_mean": mean("backward_its"),
        "spectral_radius_final": rho,
        **measured,
    }


def _spectral_radius(model, images) -> float:
    """rho(J_f) at the trained model's z* for a batch of test images (JVP power iteration)."""
    import torch
    model.eval()
    dtype = next(model.parameters()).dtype
    with torch.no_grad():
        model(images.to(dtype))
        return float(model.equilibrium.spectral_radius(iters=50))


def _inference(cfg, sset, checkpoint, data) -> dict:
    """The test split solved to the inference tolerance with the set's forward solver."""
    import torch

    from deq_petsc.core.petsc_options import inserted_defaults
    from deq_petsc.science.train import evaluate, load_model

    prefix = prefix_of(sset.name) + "infer_"
    opts = {**solver_sets.parse_options(sset.forward), "snes_rtol": cfg.inference_rtol,
            "snes_max_it": cfg.inference_max_it, "deq_accept_max_it": True}
    with inserted_defaults(prefix, opts):
        model, _ = load_model(checkpoint, prefix=prefix, device=cfg.device)
        try:
            with torch.no_grad():                                  # warm-up, not timed
                model(data.images[data.indices("val")][:8].to(next(model.parameters()).dtype))
            report = evaluate(model, data, "test", cfg.batch_size)
        finally:
            model.destroy()
    return {"inference_accuracy": report["accuracy"],
            "inference_function_evals_mean": report["function_evals"] / report["batches"],
            "inference_function_evals_per_sample": report["function_evals_per_sample"],
            "inference_iterations_mean": report["forward_its"],
            "inference_converged_fraction": 1 - report["inexact_forward"] / report["batches"],
            "inference_ms_per_sample": 1e3 * report["seconds_per_sample"]}


def _shared_model_solves(cfg, sets, checkpoint, images, out) -> dict:
    """Every set's forward solver on one batch through one trained model, to the
    inference tolerance: the residual-vs-iteration plot and its numbers."""
    import torch
    from petsc4py import PETSc

    from .compare import OptionSet, compare_solves, plot_residuals
    from deq_petsc.science.train import load_model

    model, _ = load_model(checkpoint, prefix="demo_shared_")
    try:
        with torch.no_grad():
            x = model.inject(images.to(next(model.parameters()).dtype))
        problem = model.equilibrium.fixed_point_problem(x)
        with torch.no_grad():
            problem.linearize(problem.z0).jvp(problem(problem.z0))      # warm-up
        # beside the sets, PETSc's own Picard and Anderson: what the lean types replace
        reference = [solver_sets.get(n) for n in REFERENCE_SOLVERS
                     if n not in {s.name for s in sets}]
        option_sets = [OptionSet(s.name, solver_sets.parse_options(s.forward), s.forward)
                       for s in [*sets, *reference]]
        runs = compare_solves(problem, option_sets, defaults={
            "snes_rtol": cfg.inference_rtol, "snes_max_it": cfg.inference_max_it})
    finally:
        model.destroy()
    if PETSc.COMM_WORLD.getRank() == 0:
        plot_residuals(runs, out / "residuals.png",
                       title=f"one batch of {len(images)} test {samples(cfg.task)} through the "
                             f"{checkpoint.parent.name} model, to rtol {cfg.inference_rtol:g}")
    return {"model": checkpoint.parent.name, "batch": len(images),
            "rtol": cfg.inference_rtol,
            "solves": {r.name: {"converged": r.converged, "reason": r.reason,
                                "iterations": r.iterations,
                                "function_evals": r.function_evals + r.jvps,
                                "function_evals_per_sample": r.evals_per_sample,
                                "seconds": r.time} for r in runs}}


def evals_per_sample(solve: dict) -> float:
    """f evaluations per sample of a one-model solve in a summary (one from before
    per-sample stopping has per batch only, which is the same number there)."""
    return solve.get("function_evals_per_sample") or solve["function_evals"]


def format_summary(summary: dict) -> str:
    """The side-by-side table the CLI prints."""
    rows = summary["solvers"]
    target = "to " + str(summary["target_accuracy"])
    w = max(15, *(len(name) for name in rows))
    lines = [f"{'solver':{w}s} {'test acc':>8s} {'train s':>8s} {target:>8s} "
             f"{'fwd conv':>8s} {'adj conv':>8s} {'fwd its':>7s} {'rho':>6s} {'inf f/s':>8s} "
             f"{'inf ms':>7s}"]
    for name, r in rows.items():
        to = "never" if r["seconds_to_target"] is None else f"{r['seconds_to_target']:.1f}"
        lines.append(f"{name:{w}s} {r['test_accuracy']:8.3f} {r['train_seconds']:8.1f} {to:>8s} "
                     f"{100 * r['forward_converged_fraction']:7.0f}% "
                     f"{100 * r['adjoint_converged_fraction']:7.0f}% "
                     f"{r['forward_iterations_mean']:7.1f} {r['spectral_radius_final']:6.3f} "
                     f"{r['inference_function_evals_per_sample']:8.1f} "
                     f"{r['inference_ms_per_sample']:7.2f}")
    shared = summary["inference_on_one_model"]
    base = shared["solves"].get("picard")
    parts = []
    for name, s in shared["solves"].items():
        ratio = ""
        per_sample = evals_per_sample(s)
        if base and name != "picard" and s["converged"]:
            bound = ">=" if not base["converged"] else ""
            ratio = (f" (Picard / this: {bound}{evals_per_sample(base) / per_sample:.2f}x f evals "
                     f"per sample, {bound}{base['seconds'] / s['seconds']:.2f}x wall time)")
        parts.append(f"  {name}: {s['reason']} after {s['iterations']} its, "
                     f"{per_sample:.1f} f evals per sample, {s['seconds']:.3f} s{ratio}")
    noun = samples(summary["task"])
    lines.append(f"one batch of {shared['batch']} test {noun} through the {shared['model']} "
                 f"model, to rtol {shared['rtol']:g}:")
    lines += parts
    if summary.get("baseline"):
        b = summary["baseline"]
        lines.append(f"reference on the same split: gradient boosting on {b['n_features']} "
                     f"{b['features']}, test accuracy {b['test_accuracy']:.3f} (deq-petsc "
                     f"baseline; fit {b['fit_seconds']:.0f} s)")
    ref = summary.get("reference")
    if ref:
        lines.append(f"time to {ref['solver']}'s final validation accuracy "
                     f"({ref['val_accuracy']:.3f}; it took {ref['seconds']:.1f} s): " + ", ".join(
                         f"{n} " + ("never" if r["seconds_to_reference"] is None else
                                    f"{r['seconds_to_reference']:.1f} s "
                                    f"({r['speedup_to_reference']:.1f}x)")
                         for n, r in rows.items()))
        if not ref.get("resolved", True):
            gain = ref["val_accuracy"] - ref["first_epoch_val_accuracy"]
            lines.append(f"  not resolved: {ref['solver']} changed its validation accuracy by "
                         f"{gain:+.3f} after its first epoch, less than one standard error "
                         f"({ref['val_accuracy_stderr']:.3f} on {ref['val_samples']} "
                         f"{noun}): these times do not rank the sets")
    first = next(iter(rows.values()))
    lines.append(f"test accuracies are measured on {first['test_samples']} {noun}: standard "
                 f"error about {first['test_accuracy_stderr']:.3f}, so smaller differences "
                 f"between sets are noise")
    lines.append(f"majority-class baseline {first['majority_baseline']:.3f}; "
                 f"'to {summary['target_accuracy']}': training seconds until validation "
                 f"accuracy first reached it; 'inf f/s': f evaluations per test sample to rtol "
                 f"{summary['config']['inference_rtol']:g}")
    return "\n".join(lines)
