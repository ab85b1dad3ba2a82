"""Where the equilibrium pays: a task's default model scored at 1, 2, 5 and all of its
forward iterations, beside its explicit twin trained at depths 1 to 32.

Issue 37's question: does the default scientist (``deq-petsc train``'s pair cell) use its
implicit depth? For each seed the DEQ is trained once and evaluated on the test split with
``-snes_max_it k`` (a capped solve's last iterate accepted, as loaded models do), then with
its own tolerance; its explicit twin (the same cell applied ``depth`` times, trained the
same way) is trained once per depth. Everything runs through the command line, in
processes of their own, so the numbers are what a user would get.

Run:  .venv/bin/python benchmarks/bench_equilibrium.py --task polarity --seeds 0,1,2
      [--limit 2000 --epochs 8 --depths 1,2,4,8,16,32 --its 1,2,5 --json F --plot F.png]
      --from-json F [F ...]   (no runs: report and draw kept results)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def cli(*argv) -> str:
    exe = Path(sys.executable).parent / "deq-petsc"
    r = subprocess.run([str(exe), *map(str, argv)], capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"bench_equilibrium: deq-petsc {' '.join(map(str, argv))} failed:\n"
                 f"{r.stdout[-2000:]}{r.stderr[-2000:]}")
    return r.stdout


def score(report: dict) -> float:
    return report["accuracy"] if "accuracy" in report else report["mae"]


def one_seed(args, seed: int, out: Path) -> dict:
    common = ["--task", args.task, "--limit", args.limit, "--seed", seed, "--epochs",
              args.epochs, "--no-progress", "--overwrite", *args.train_args.split()]
    deq = out / f"deq-{seed}"
    cli("train", *common, "--out", deq)
    row = {"seed": seed, "deq": {}, "explicit": {}}
    for k in [*args.its.split(","), "converged"]:
        file = out / f"deq-{seed}-its-{k}.json"
        extra = [] if k == "converged" else ["-snes_max_it", k]
        cli("evaluate", "--checkpoint", deq / "checkpoint.pt", "--out", file, *extra)
        report = json.loads(file.read_text())
        row["deq"][k] = {"score": score(report), "forward_its": report["forward_its"]}
        print(f"seed {seed}: DEQ at {k} iterations: {score(report):.4f} "
              f"({report['forward_its']:.1f} its per batch)", flush=True)
    for depth in args.depths.split(","):
        twin = out / f"explicit-{depth}-{seed}"
        cli("train", *common, "--model", "explicit", "--depth", depth, "--out", twin)
        report = json.loads((twin / "report.json").read_text())
        row["explicit"][depth] = {"score": score(report)}
        print(f"seed {seed}: explicit twin, depth {depth}: {score(report):.4f}", flush=True)
    return row


def summary(rows: list[dict]) -> dict:
    """Mean and spread over seeds of every score."""
    import numpy as np

    def stats(values):
        v = np.array(values, dtype=float)
        return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if len(v) > 1 else 0.0,
                "n": len(v)}
    out = {"deq": {}, "explicit": {}}
    for k in rows[0]["deq"]:
        out["deq"][k] = {**stats([r["deq"][k]["score"] for r in rows]),
                         "forward_its": float(np.mean([r["deq"][k]["forward_its"]
                                                       for r in rows]))}
    for d in rows[0]["explicit"]:
        out["explicit"][d] = stats([r["explicit"][d]["score"] for r in rows])
    return out


def table(result: dict) -> str:
    s, metric = result["summary"], result["metric"]
    lines = [f"{result['task']}: test {metric}, mean +- std over seeds "
             f"{', '.join(str(r['seed']) for r in result['rows'])}",
             f"{'model':34s} {metric:>16s}"]
    for k, v in s["deq"].items():
        what = f"DEQ, {k} forward iterations" if k != "converged" else \
            f"DEQ, converged ({v['forward_its']:.1f} its per batch)"
        lines.append(f"{what:34s} {v['mean']:8.4f} +- {v['std']:.4f}")
    for d, v in s["explicit"].items():
        lines.append(f"{'explicit twin, depth ' + d:34s} {v['mean']:8.4f} +- {v['std']:.4f}")
    gain = s["deq"]["converged"]["mean"] - s["deq"][next(iter(s["deq"]))]["mean"]
    best = max(s["explicit"].items(), key=lambda kv: kv[1]["mean"] * (1 if metric ==
                                                                        "accuracy" else -1))
    lines.append(f"the equilibrium's gain over one iteration: {gain:+.4f}; the best twin "
                 f"(depth {best[0]}): {best[1]['mean']:.4f}")
    return "\n".join(lines)


def plot(result: dict, path) -> str:
    from deq_petsc.science.plots import finish_figure, subplots

    fig, ax = subplots(1, 1, figsize=(7, 4.2))
    ax = ax if not hasattr(ax, "__len__") else ax[0]
    s = result["summary"]
    # each cap at the iterations it let the solve make (a cap above convergence is the
    # converged solve: the same point)
    x = [s["deq"][k]["forward_its"] for k in s["deq"]]
    y = [s["deq"][k]["mean"] for k in s["deq"]]
    e = [s["deq"][k]["std"] for k in s["deq"]]
    ax.errorbar(x, y, yerr=e, fmt="o-", capsize=3, label="DEQ: inference capped at k "
                "iterations (the last: converged)")
    d = list(s["explicit"])
    ax.errorbar([float(v) for v in d], [s["explicit"][v]["mean"] for v in d],
                yerr=[s["explicit"][v]["std"] for v in d], fmt="s--", capsize=3,
                label="explicit twin trained at depth k")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("k: forward iterations (DEQ) or layers (explicit twin)")
    ax.set_ylabel(f"test {result['metric']}")
    return finish_figure(fig, [ax], path, f"{result['task']}: does the default model use its "
                         f"equilibrium? ({len(result['rows'])} seeds)")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="polarity")
    p.add_argument("--seeds", default="0")
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--depths", default="1,2,4,8,16,32")
    p.add_argument("--its", default="1,2,5")
    p.add_argument("--train-args", default="", help="more train flags, e.g. '--objective "
                   "regress'")
    p.add_argument("--out", default="runs/equilibrium")
    p.add_argument("--json")
    p.add_argument("--plot")
    p.add_argument("--from-json", nargs="+")
    args = p.parse_args()
    if args.from_json:
        rows, first = [], None
        for name in args.from_json:
            part = json.loads(Path(name).read_text())
            first = first or part
            rows += part["rows"]
        result = {**first, "rows": rows, "summary": summary(rows)}
    else:
        out = Path(args.out) / args.task
        out.mkdir(parents=True, exist_ok=True)
        rows = [one_seed(args, int(seed), out) for seed in args.seeds.split(",")]
        metric = "accuracy" if "regress" not in args.train_args else "MAE"
        result = {"task": args.task, "metric": metric, "settings": vars(args), "rows": rows,
                  "summary": summary(rows)}
    print(table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")


if __name__ == "__main__":
    main()
