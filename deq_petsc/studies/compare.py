"""Solver comparisons: named PETSc option sets run on the same fixed-point problem.

An option set is a name and PETSc options, written as on a command line::

    picard: -snes_type nrichardson -snes_linesearch_type basic
    anderson5: -snes_type anderson -snes_anderson_m 5

Each set runs under its own options prefix (``cmp<k>_``), so sets cannot leak
into each other or into the rest of the program; options a set gives but no
solver reads are reported for that set (PETSc's unused-option check, per set).
A set PETSc rejects (an unknown ``-snes_type``) is a row with its error; the
others still run. Results: a Markdown table, a CSV, and residual-norm plots
against iteration and against wall time, one line per set.
"""

from __future__ import annotations

import math
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from petsc4py import PETSc

from deq_petsc.core.errors import DEQError
from deq_petsc.core.problem import FixedPointProblem
from deq_petsc.core.solver import DEQSolver, SolveStats
from deq_petsc.core.solver_sets import OptionSet, compare_defaults, read_option_sets

#: Used when no set is given: the forward solvers of the named sets
#: (:mod:`deq_petsc.core.solver_sets`; picard and anderson are the Deep AndersoNN comparison).
DEFAULT_SETS = compare_defaults()


def default_option_sets() -> list[OptionSet]:
    return read_option_sets(f"{k}: {v}" for k, v in DEFAULT_SETS.items())


@contextmanager
def prefixed_options(prefix: str, options: dict):
    """Put a set's options under ``prefix`` for the duration; yield the names not used."""
    opts = PETSc.Options()
    names = []
    for key, value in options.items():
        opts.setValue(prefix + key, value)
        names.append(prefix + key)
    unused: list[str] = []
    try:
        yield unused
    finally:
        for name in names:
            if not opts.used(name):
                unused.append("-" + name[len(prefix):])
            opts.delValue(name)


@dataclass
class SolveRun:
    """One option set on one problem."""

    name: str
    options: str
    converged: bool = False
    reason: str = ""
    iterations: int = 0
    function_evals: int = 0
    sample_evals: int = 0          # f evaluations counted per sample (a sample that stops
    samples: int = 0               # early stops costing them: deq_petsc.core.lean)
    jvps: int = 0
    linear_iterations: int = 0
    time: float = math.nan
    final_residual: float = math.nan
    relative_residual: float = math.nan
    residuals: list = field(default_factory=list)
    times: list = field(default_factory=list)
    unused_options: list = field(default_factory=list)
    error: str = ""

    @classmethod
    def from_stats(cls, oset: OptionSet, stats: SolveStats, times=()) -> "SolveRun":
        """The row of a set whose solve ended with ``stats``; ``times``: seconds from the
        start at each monitored iterate."""
        return cls(oset.name, oset.text, converged=stats.converged, reason=stats.reason_name,
                   iterations=stats.iterations, function_evals=stats.function_evals,
                   sample_evals=stats.sample_evals, samples=stats.samples,
                   jvps=stats.jvp_count, linear_iterations=stats.linear_iterations,
                   time=stats.time, final_residual=stats.final_residual,
                   relative_residual=stats.relative_residual,
                   residuals=list(stats.residual_norms),
                   times=list(times)[:len(stats.residual_norms)])

    @property
    def evals_per_sample(self) -> float:
        """f evaluations (and Jacobian products) per sample: what the solve cost each one."""
        if not self.samples:
            return math.nan
        return (self.sample_evals + self.jvps * self.samples) / self.samples

    def row(self) -> dict:
        d = asdict(self)
        for key in ("residuals", "times"):
            d.pop(key)
        d["unused_options"] = " ".join(self.unused_options)
        return d


def compare_solves(problem: FixedPointProblem, option_sets, comm=None,
                   defaults: dict | None = None, progress=None, repeat: int = 1
                   ) -> list[SolveRun]:
    """Solve ``problem`` from the same start with every option set.

    With ``repeat > 1`` the sets run in turn ``repeat`` times (interleaved, so a
    noisy machine hurts all alike) and each keeps its fastest run.
    """
    best: dict[int, SolveRun] = {}
    passes = max(1, repeat)
    for p in range(passes):
        for k, oset in enumerate(option_sets):
            run = _solve_one(problem, oset, f"cmp{k}_", comm, defaults)
            if k not in best or (run.converged and run.time < best[k].time):
                best[k] = run
            if progress and p == passes - 1:
                progress(best[k])          # as each set finishes its last pass
    return [best[k] for k in range(len(option_sets))]


def _solve_one(problem, oset: OptionSet, prefix: str, comm, defaults) -> SolveRun:
    with prefixed_options(prefix, oset.options) as unused:
        solver = None
        try:
            solver = DEQSolver(prefix=prefix, comm=comm, options=defaults,
                               check_convergence=False)
            stamps = []
            solver.snes.setMonitor(lambda snes, its, norm: stamps.append(time.perf_counter()))
            start = time.perf_counter()
            _, stats = solver.solve(problem)
            run = SolveRun.from_stats(oset, stats, [t - start for t in stamps])
        except (PETSc.Error, DEQError, ValueError) as err:
            run = SolveRun(oset.name, oset.text, reason="ERROR",
                           error=describe_error(err, oset))
        finally:
            if solver is not None:
                solver.destroy()
    run.unused_options = list(unused)
    return run




#: PETSc error codes an option set can provoke (petscerror.h).
_PETSC_ERRORS = {56: "not supported (PETSC_ERR_SUP)", 62: "invalid argument (PETSC_ERR_ARG_WRONG)",
                 63: "argument out of range (PETSC_ERR_ARG_OUTOFRANGE)",
                 73: "object in the wrong state (PETSC_ERR_ARG_WRONGSTATE)",
                 86: "unknown type (PETSC_ERR_UNKNOWN_TYPE)"}


def describe_error(err, oset: OptionSet) -> str:
    if isinstance(err, PETSc.Error):
        what = _PETSC_ERRORS.get(err.ierr, f"PETSc error {err.ierr}")
        types = " ".join(f"-{k} {v}" for k, v in oset.options.items() if k.endswith("_type"))
        return f"PETSc rejected the set: {what}" + (f"; its types: {types}" if types else "")
    if getattr(err, "petsc_message", None):          # DEQOptionsError from setFromOptions
        return f"PETSc rejected the set: {err.petsc_message}"
    text = str(err).strip().splitlines()
    return text[0] if text else type(err).__name__


def markdown_table(runs, columns=None) -> str:
    columns = columns or [("set", "name"), ("reason", "reason"), ("its", "iterations"),
                          ("f evals", "function_evals"), ("JVPs", "jvps"),
                          ("time s", "time"), ("final residual", "final_residual"),
                          ("relative", "relative_residual")]
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    rows = [r.row() if hasattr(r, "row") else r for r in runs]
    for row in rows:
        cells = []
        for _, key in columns:
            v = row.get(key, "")
            if isinstance(v, float):
                v = "" if math.isnan(v) else (f"{v:.3e}" if abs(v) < 1e-2 or abs(v) > 1e4
                                               else f"{v:.4g}")
            cells.append(str(v))
        lines.append("| " + " | ".join(cells) + " |")
    notes = [f"- `{r['name']}`: {r['error']}" for r in rows if r.get("error")]
    notes += [f"- `{r['name']}`: unused options {r['unused_options']}"
              for r in rows if r.get("unused_options")]
    return "\n".join(lines + ([""] + notes if notes else []))


def plot_residuals(runs, path, title: str = "") -> str:
    """Residual norm against iteration and against wall time, every set on one plot."""
    from deq_petsc.science.plots import finish_figure, subplots

    fig, (ax1, ax2) = subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for run in runs:
        if not run.residuals:
            continue
        ax1.semilogy(range(len(run.residuals)), run.residuals, "o-", ms=3, label=run.name)
        if len(run.times) == len(run.residuals):
            ax2.semilogy(run.times, run.residuals, "o-", ms=3, label=run.name)
    ax1.set(xlabel="iteration", ylabel="||F(z)|| = ||z - f(z, x)||", title="residual vs iteration")
    ax2.set(xlabel="wall time (s)", ylabel="||F(z)||", title="residual vs time")
    return finish_figure(fig, (ax1, ax2), path, title)


@dataclass
class TrainingComparison:
    """One training run per option set: a row each (test metric, time, iterations, or the
    set's error), the runs' histories, and what the metric is."""

    rows: list = field(default_factory=list)
    histories: dict = field(default_factory=dict)
    metric: str = "acc"
    metric_label: str = "accuracy"


def compare_training(cfg, data, option_sets, out, trainer: str = "adam",
                     progress: bool = True, log=print) -> TrainingComparison:
    """Train ``cfg``'s model on ``data`` once per option set, each under its own prefix
    (the set's ``-snes_*`` drive the DEQ's forward solves, ``-adjoint_*`` its backward,
    ``-tao_*`` the TAO trainer), each in ``out/<set name>``. A set that fails (PETSc
    rejects it, a solve diverges) is a row with its error; the others still run."""
    from pathlib import Path

    from deq_petsc.science.train import TaoTrainer, Trainer

    kind = TaoTrainer if trainer == "tao" else Trainer
    result = TrainingComparison()
    for k, oset in enumerate(option_sets):
        row = {"name": oset.name, "options": oset.text, "error": ""}
        run = None
        with prefixed_options(f"cmp{k}_", oset.options) as unused:
            try:
                run = kind(cfg, data, Path(out) / oset.name, prefix=f"cmp{k}_",
                           progress=progress, log=lambda line, n=oset.name: log(f"[{n}] {line}"))
                history = run.fit()
                report = run.finish()
                result.metric = run.objective.metric
                result.metric_label = run.objective.metric_label
                key = "accuracy" if result.metric == "acc" else result.metric
                row.update({f"test {key}": report[key], "train s": history[-1]["elapsed"],
                            "fwd its": sum(h["forward_its"] for h in history) / len(history),
                            "bwd its": sum(h["backward_its"] for h in history) / len(history),
                            "ms/sample": 1e3 * report["seconds_per_sample"]})
                result.histories[oset.name] = history
            except (PETSc.Error, DEQError, ValueError) as err:
                row["error"] = describe_error(err, oset)
            finally:
                if run is not None:
                    run.destroy()
        row["unused_options"] = " ".join(unused)
        result.rows.append(row)
    return result
