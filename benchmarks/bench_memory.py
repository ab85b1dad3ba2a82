"""Memory of one training step: the DEQ against its explicit twin unrolled 8, 32, 128 times.

Deep AndersoNN's claim: a DEQ trains where an explicit network of the same depth no longer
fits, because the implicit gradient keeps one application of the cell for backward while
autograd keeps every layer. Measured here on each task's default model (``deq-petsc
train``'s: the pair cell, width 16) with the trainer's own step (``Trainer._train_epoch``
on one batch: forward, loss, backward, Adam), each configuration in a fresh process:

* ``saved MB``: the bytes autograd saves for backward during the step's forward
  (saved-tensor hooks; a tensor saved twice counts twice);
* ``peak MB``: the process's peak resident memory during the first step, above its peak
  before it (model, data and a no-grad forward already in it); the run's peak beside it;
* ``step s``: the best of ``--repeat`` steps.

The explicit twin's memory grows linearly with its depth; the depth at which it would need
the machine's memory (``MemTotal``) is the fitted line's. Without ``--cap-gib`` no
configuration is run past ``--max-gib`` (a training process that runs out of memory takes
the machine with it); with it, each process may map at most that much (``RLIMIT_AS``), so
a twin too deep for it ends in an allocation error, reported as out of memory. The DEQ's
own "depth" is its forward iterations.

Run:  .venv/bin/python benchmarks/bench_memory.py [--tasks polarity,crystals]
      [--depths 8,32,128] [--batch 64] [--json FILE]
      [--cap-gib 20 --depths 256,400]    (a twin that runs out under a cap)
      (quick, the suite's case: --tasks polarity --depths 2,4 --limit 60 --batch 8 --repeat 1)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # Linux: kB


def child(task: str, kind: str, depth: int, batch: int, limit: int, repeat: int,
          threads: int, cap_gib: float | None = None) -> dict:
    """One configuration's step, measured in this (fresh) process; with ``cap_gib`` the
    process may not map more (``RLIMIT_AS``), so that running out is an allocation error
    here and not the machine's out-of-memory killer."""
    if cap_gib:
        cap = int(cap_gib * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))
    import deq_petsc
    deq_petsc.init([sys.argv[0]])
    import torch

    from deq_petsc.core.diagnostics import SavedTensorBytes
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.data import load_task
    from deq_petsc.science.inference import model_dtype
    from deq_petsc.science.train import Trainer

    torch.set_num_threads(threads)
    data = load_task(task, limit=limit, seed=0, progress=False)
    cfg = TrainConfig(task=task, kind=kind, depth=depth, cell="pair", width=16,
                      batch_size=batch, epochs=1, limit=limit).for_task()
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, data, out, progress=False, log=lambda *a: None)
        dtype = model_dtype(trainer.model)
        rows = data.indices("train")[:batch]
        X = data.images[rows].to(dtype)
        y = trainer.objective.targets(data, "train")[:batch]
        with torch.no_grad():                  # the model's inference peak: the baseline
            trainer.model.eval()
            trainer.model(X)
        before = _peak_mb()
        with SavedTensorBytes() as saved:
            start = time.perf_counter()
            sums = trainer._train_epoch(0, X, y)
            times = [time.perf_counter() - start]
        after = _peak_mb()
        for k in range(1, repeat):
            start = time.perf_counter()
            trainer._train_epoch(k, X, y)
            times.append(time.perf_counter() - start)
        its = sums["f_its"] / max(sums["batches"], 1) if kind == "deq" else depth
        trainer.model.destroy() if hasattr(trainer.model, "destroy") else None
    return {"task": task, "kind": kind, "depth": depth, "batch": batch,
            "params": sum(p.numel() for p in trainer.model.parameters()),
            "image": list(X.shape[1:]), "dtype": str(dtype).replace("torch.", ""),
            "saved_mb": saved.total / 2**20, "peak_over_mb": after - before,
            "peak_mb": after, "baseline_mb": before, "step_s": min(times),
            "forward_its": its}


def run(args) -> dict:
    rows = []
    for task in args.tasks.split(","):
        configs = [("deq", 8)] + [("explicit", int(d)) for d in args.depths.split(",")]
        for kind, depth in configs:
            cmd = [sys.executable, __file__, "--child", task, kind, str(depth),
                   "--batch", str(args.batch), "--limit", str(args.limit),
                   "--repeat", str(args.repeat), "--threads", str(args.threads)]
            if args.cap_gib:
                cmd += ["--cap-gib", str(args.cap_gib)]
            r = subprocess.run(cmd, capture_output=True, text=True)
            if r.returncode and args.cap_gib and _out_of_memory(r.stderr):
                row = {"task": task, "kind": kind, "depth": depth, "batch": args.batch,
                       "out_of_memory": True, "cap_gib": args.cap_gib}
                rows.append(row)
                print(f"{task:9s} {kind} x{depth}: out of memory under the {args.cap_gib:g} "
                      f"GiB cap ({_out_of_memory(r.stderr)})", flush=True)
                continue
            if r.returncode:
                sys.exit(f"bench_memory: {task} {kind} {depth} failed:\n{r.stderr[-3000:]}")
            row = json.loads(r.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(_line(row), flush=True)
            if not args.cap_gib and row["peak_mb"] > args.max_gib * 1024:
                print(f"  (stopping {task}: past --max-gib {args.max_gib})")
                break
    return {"rows": rows, "fits": _fits(rows), "machine_gib": _mem_total_gib(),
            "settings": vars(args)}


def _out_of_memory(stderr: str) -> str:
    """The allocation error's line when the child ran out under its cap, else ''."""
    for line in reversed(stderr.splitlines()):
        if "can't allocate memory" in line or "MemoryError" in line or \
                "Cannot allocate memory" in line:
            return line.strip()[:160]
    return ""


def _merged(files) -> dict:
    """Several runs' rows as one result (a later run's row replaces an earlier one's of the
    same task, kind and depth), fitted again."""
    import gzip
    rows, settings, machine = {}, [], None
    for name in files:
        opener = gzip.open if name.endswith(".gz") else open
        with opener(name, "rt") as fh:
            part = json.load(fh)
        settings.append(part["settings"])
        machine = machine or part["machine_gib"]
        for r in part["rows"]:
            rows[(r["task"], r["kind"], r["depth"])] = r
    merged = sorted(rows.values(), key=lambda r: (r["task"] != "polarity", r["task"],
                                                  r["kind"] != "deq", r["depth"]))
    return {"rows": merged, "fits": _fits(merged), "machine_gib": machine,
            "settings": settings}


def _line(row) -> str:
    what = (f"DEQ ({row['forward_its']:.1f} forward its)" if row["kind"] == "deq" else
            f"explicit x{row['depth']}")
    return (f"{row['task']:9s} {what:26s} saved {row['saved_mb']:9.1f} MB  peak +"
            f"{row['peak_over_mb']:9.1f} MB (run peak {row['peak_mb']:8.1f} MB)  step "
            f"{row['step_s']:7.3f} s")


def _mem_total_gib() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def _fits(rows) -> dict:
    """Per task: the explicit twin's memory per layer (least squares on its depths) and the
    depth at which its step's peak would reach the machine's memory; the DEQ's beside it."""
    import numpy as np
    out = {}
    total_mb = _mem_total_gib() * 1024
    for task in dict.fromkeys(r["task"] for r in rows):
        ex = [r for r in rows if r["task"] == task and r["kind"] == "explicit"
              and not r.get("out_of_memory")]
        deq = next(r for r in rows if r["task"] == task and r["kind"] == "deq")
        failed = [r["depth"] for r in rows if r["task"] == task and r.get("out_of_memory")]
        fit = {"deq_saved_mb": deq["saved_mb"], "deq_peak_mb": deq["peak_mb"],
               "deq_peak_over_mb": deq["peak_over_mb"], "deq_forward_its": deq["forward_its"],
               "explicit_out_of_memory_at": min(failed) if failed else None}
        if len(ex) >= 2:
            d = np.array([r["depth"] for r in ex], dtype=float)
            per_layer, base = np.polyfit(d, [r["peak_mb"] for r in ex], 1)
            saved_per_layer = np.polyfit(d, [r["saved_mb"] for r in ex], 1)[0]
            grows = per_layer > 0          # small cases: the RSS is noise, not a line
            fit.update(peak_mb_per_layer=per_layer, peak_mb_at_depth_0=base,
                       saved_mb_per_layer=saved_per_layer,
                       depth_at_machine_memory=(total_mb - base) / per_layer if grows else None,
                       deq_equal_depth=(deq["peak_mb"] - base) / per_layer if grows else None)
        out[task] = fit
    return out


def plot(result: dict, path: str) -> str:
    """Peak memory of one training step against the explicit twin's depth, per task, with
    the DEQ's (at its forward iterations), the machine's memory and the fitted lines."""
    from deq_petsc.science.plots import finish_figure, subplots

    fig, ax = subplots(1, 1, figsize=(7, 4.5))
    ax = ax if not hasattr(ax, "__len__") else ax[0]
    total = result["machine_gib"]
    for task, color in zip(result["fits"], ("C0", "C1", "C2", "C3")):
        ex = [r for r in result["rows"] if r["task"] == task and r["kind"] == "explicit"]
        ok = [r for r in ex if not r.get("out_of_memory")]
        ax.plot([r["depth"] for r in ok], [r["peak_mb"] / 1024 for r in ok], "o-",
                color=color, label=f"{task}: explicit twin")
        for r in ex:
            if r.get("out_of_memory"):
                ax.plot([r["depth"]], [r["cap_gib"]], "x", color=color, markersize=10,
                        label=f"{task}: out of memory under a {r['cap_gib']:g} GiB cap")
        fit = result["fits"][task]
        deq = next(r for r in result["rows"] if r["task"] == task and r["kind"] == "deq")
        ax.plot([deq["forward_its"]], [deq["peak_mb"] / 1024], "*", color=color,
                markersize=14, label=f"{task}: DEQ ({deq['forward_its']:.0f} forward its)")
        if fit.get("depth_at_machine_memory"):       # the fitted line, on a log axis
            import numpy as np
            d = np.geomspace(1, fit["depth_at_machine_memory"], 60)
            ax.plot(d, (fit["peak_mb_at_depth_0"] + fit["peak_mb_per_layer"] * d) / 1024, ":",
                    color=color, alpha=0.6, label=f"{task}: fitted line")
    ax.axhline(total, color="k", lw=1, label=f"this machine's memory ({total:.1f} GiB)")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("depth: explicit layers, or the DEQ's forward iterations")
    ax.set_ylabel("peak resident memory of one training step (GiB)")
    batch = result["rows"][0]["batch"]
    return finish_figure(fig, [ax], path, f"one training step, batch {batch}: the DEQ's memory "
                         "does not grow with depth, its explicit twin's does")


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tasks", default="polarity,crystals")
    p.add_argument("--depths", default="8,32,128")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--limit", type=int, default=2000, help="the cached build to draw from")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-gib", type=float, default=12.0,
                   help="no deeper configuration of a task once a step's peak passes this")
    p.add_argument("--cap-gib", type=float, default=None,
                   help="each configuration's process may map at most this (RLIMIT_AS): one "
                        "that needs more is reported out of memory instead of run")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--plot", help="draw the results as a PNG here")
    p.add_argument("--from-json", nargs="+", metavar="FILE",
                   help="no runs: the results of these runs (merged), reported and drawn")
    p.add_argument("--child", nargs=3, metavar=("TASK", "KIND", "DEPTH"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        task, kind, depth = args.child
        print(json.dumps(child(task, kind, int(depth), args.batch, args.limit, args.repeat,
                               args.threads, args.cap_gib)))
        return
    if args.from_json:
        result = _merged(args.from_json)
        for row in result["rows"]:
            print(f"{row['task']:9s} explicit x{row['depth']}: out of memory under the "
                  f"{row['cap_gib']:g} GiB cap" if row.get("out_of_memory") else _line(row))
    else:
        result = run(args)
    for task, fit in result["fits"].items():
        if fit.get("depth_at_machine_memory") is None:
            print(f"{task}: the step's peak RSS does not grow measurably with the depths run")
        else:
            print(f"{task}: the explicit twin's step peak grows {fit['peak_mb_per_layer']:.1f} "
                  f"MB per layer (autograd saves {fit['saved_mb_per_layer']:.1f} MB each); "
                  f"at depth {fit['depth_at_machine_memory']:.0f} it would need all "
                  f"{result['machine_gib']:.1f} GiB of this machine. The DEQ's step peaks at "
                  f"{fit['deq_peak_mb']:.0f} MB ({fit['deq_forward_its']:.1f} forward "
                  f"iterations), what an explicit twin of depth "
                  f"{max(fit['deq_equal_depth'], 0):.0f} needs.")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(result, fh, indent=1)
    if args.plot:
        print(f"wrote {plot(result, args.plot)}")


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "2")
    main()
