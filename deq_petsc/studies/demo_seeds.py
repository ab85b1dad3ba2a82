"""The main job over several seeds: every number as a mean and a spread, not one run.

One seed's demo is one draw: another seed draws other molecules, another split
and other initial weights, and the solver sets' ranking can change with it
(docs/solvers.md: Anderson's time to Picard's accuracy 0.7-1.1x over four
seeds). ``deq-petsc demo --seeds 0,1,2`` runs :func:`deq_petsc.studies.demo.run_demo`
once per seed into ``<out>/seed-<k>/`` and writes ``<out>/seeds.json``: per set
and metric the mean, the sample standard deviation, the range and each seed's
value, and for inference on one model the Picard-over-set ratios of ``f``
evaluations and of wall time, side by side. The README's numbers come from it.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from deq_petsc.process.atomic import write_json
from .demo import evals_per_sample

#: The per-set numbers aggregated, with the heading the table gives them.
METRICS = {"test_accuracy": "test acc", "train_seconds": "train s",
           "forward_converged_fraction": "fwd conv", "adjoint_converged_fraction": "adj conv",
           "forward_iterations_mean": "fwd its", "spectral_radius_final": "rho",
           "inference_function_evals_per_sample": "inf f/s", "inference_ms_per_sample": "inf ms"}


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` -> ``[0, 1, 2]``; at least two distinct non-negative seeds (one seed is
    the plain demo), or a ValueError worth one line."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds {text}: comma-separated integers, e.g. 0,1,2") from None
    if len(set(seeds)) != len(seeds) or len(seeds) < 2 or min(seeds) < 0:
        raise ValueError(f"--seeds {text}: at least two distinct non-negative seeds")
    return seeds


def stats(values: list) -> dict:
    """Mean, sample standard deviation, range and the values (None-valued seeds left out,
    counted in ``missing``: a set that never reached its target on some seed)."""
    xs = [float(v) for v in values if v is not None]
    n = len(xs)
    mean = sum(xs) / n if n else None
    sd = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "min": min(xs) if xs else None,
            "max": max(xs) if xs else None, "values": list(values),
            "missing": len(values) - n}


def one_model_ratios(summary: dict) -> dict:
    """Per set, Picard's f evaluations and seconds over the set's, on the one-model solve
    (None where either did not converge: no ratio of a capped solve)."""
    solves = summary["inference_on_one_model"]["solves"]
    base = solves.get("picard")
    ratios = {}
    for name, s in solves.items():
        ok = base is not None and base["converged"] and s["converged"]
        ratios[name] = {"f_evals": evals_per_sample(base) / evals_per_sample(s) if ok else None,
                        "time": base["seconds"] / s["seconds"] if ok else None}
    return ratios



def aggregate(summaries: dict[int, dict]) -> dict:
    """``{seed: summary}`` -> the mean and spread of every set's metrics over the seeds."""
    seeds = sorted(summaries)
    first = summaries[seeds[0]]
    sets = list(first["solvers"])
    out = {"seeds": seeds, "task": first["task"], "sets": {}}
    ratios = {k: one_model_ratios(summaries[k]) for k in seeds}
    for name in sets:
        rows = [summaries[k]["solvers"][name] for k in seeds]
        entry = {m: stats([r[m] for r in rows]) for m in METRICS}
        entry["one_model_f_evals_ratio"] = stats([ratios[k][name]["f_evals"] for k in seeds])
        entry["one_model_time_ratio"] = stats([ratios[k][name]["time"] for k in seeds])
        out["sets"][name] = entry
    for name in first["inference_on_one_model"]["solves"]:
        if name not in sets:          # PETSc's own Picard and Anderson, beside the sets
            out.setdefault("reference_solvers", {})[name] = {
                "one_model_f_evals_ratio": stats([ratios[k][name]["f_evals"] for k in seeds]),
                "one_model_time_ratio": stats([ratios[k][name]["time"] for k in seeds])}
    if all(summaries[k].get("baseline") for k in seeds):
        out["baseline_test_accuracy"] = stats([summaries[k]["baseline"]["test_accuracy"]
                                               for k in seeds])
    return out


def _cell(s: dict, digits: int, percent: bool = False) -> str:
    if s["mean"] is None:
        return "n/a"
    scale = 100 if percent else 1
    text = f"{scale * s['mean']:.{digits}f}"
    if s["sd"] is not None:
        text += f" ± {scale * s['sd']:.{digits}f}"
    return text + (f" ({s['missing']} n/a)" if s["missing"] else "")


def format_seeds(agg: dict) -> str:
    """The aggregate as a Markdown table (mean ± sample sd over the seeds)."""
    digits = {"test_accuracy": 3, "train_seconds": 1, "forward_iterations_mean": 1,
              "spectral_radius_final": 3, "inference_function_evals_per_sample": 1,
              "inference_ms_per_sample": 2}
    percent = ("forward_converged_fraction", "adjoint_converged_fraction")
    head = ["set"] + list(METRICS.values()) + ["Picard/set f evals", "Picard/set time"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, e in agg["sets"].items():
        cells = [_cell(e[m], 0 if m in percent else digits[m], m in percent) for m in METRICS]
        cells += [_cell(e["one_model_f_evals_ratio"], 2), _cell(e["one_model_time_ratio"], 2)]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    seeds = ", ".join(map(str, agg["seeds"]))
    lines.append(f"\nmean ± sample standard deviation over seeds {seeds} (each seed: its own "
                 f"{agg['task']} subset, split and initial weights); conv fractions in %; "
                 f"the last two columns: one test batch through one model per seed, Picard's "
                 f"f evaluations per sample and wall time over the set's (> 1: the set is "
                 f"faster)")
    for name, e in agg.get("reference_solvers", {}).items():
        lines.append(f"{name} on the same batch and model: Picard/{name} f evaluations "
                     f"{_cell(e['one_model_f_evals_ratio'], 2)}, wall time "
                     f"{_cell(e['one_model_time_ratio'], 2)}")
    if "baseline_test_accuracy" in agg:
        lines.append("gradient boosting on descriptors, same splits: test accuracy "
                     + _cell(agg["baseline_test_accuracy"], 3))
    return "\n".join(lines)


def run_demo_seeds(cfg, seeds: list[int], load, log=print) -> dict:
    """The demo once per seed (``load(seed)`` gives that seed's data), then the aggregate,
    written to ``<cfg.out>/seeds.json``."""
    from petsc4py import PETSc

    from .demo import format_summary, run_demo

    summaries = {}
    for seed in seeds:
        one = replace(cfg, seed=seed, out=str(Path(cfg.out) / f"seed-{seed}"))
        log(f"== seed {seed} ==")
        summaries[seed] = run_demo(one, load(seed), log=log)
        log(format_summary(summaries[seed]))
    agg = aggregate(summaries)
    if PETSc.COMM_WORLD.getRank() == 0:
        write_json(Path(cfg.out) / "seeds.json", {**agg, "per_seed": summaries})
    return agg
