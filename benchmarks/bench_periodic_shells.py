"""What the distance shells of the periodic images buy (issue "Accurate scientists").

Periodic images (representation 3) carry twelve shell channels, 0-2 A, 1 A apart
from 2 to 12 A, and 12-14 A: per species pair, the neighbours in the shell per atom of the cell over
a uniform gas's count, so each channel sums to the shell's radial distribution
``g``. Side by side in one run, on the same split:

1. the DEQ (``TrainConfig``'s defaults: the convolutional cell, ``deq-petsc train``'s
   until the pair cell; ``--epochs``, ``--lr-schedule``) with
   every channel and with the shells zeroed (which a convolution cannot tell from
   their absence: the images of representation 1 plus empty channels);
2. ``deq-petsc baseline``'s gradient boosting on the flattened images, with and
   without the shells;
3. the near-label check: gradient boosting on nothing but the shells' ``g`` and the
   number density (13 numbers), and each one's rank correlation with the target
   (the largest cavity diameter, or the band gap).

    .venv/bin/python benchmarks/bench_periodic_shells.py --task mof-pore --limit 0 --epochs 20

Prints a table; ``--out`` keeps the run folders and ``results.json``.
"""

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

import deq_petsc  # noqa: F401  (process set-up)
from common import train_and_test, without


def shells(data) -> list[str]:
    return [c for c in data.channels if c.startswith("shell ")]


def gbm(data, X, label, seed):
    """``deq-petsc baseline``'s fit and choice of rounds on the features ``X``."""
    from deq_petsc.science.baseline import BaselineConfig, run_baseline

    report = run_baseline(BaselineConfig(features=label, seed=seed, progress=False), data,
                          log=lambda *a, **k: None, X=X)
    print(f"gradient boosting on {label} ({X.shape[1]} features, {report['rounds']} rounds): "
          f"test accuracy {report['accuracy']:.3f}", flush=True)
    return report["accuracy"]


def main():
    from scipy.stats import spearmanr

    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.data import load_task

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="mof-pore", choices=("mof-pore", "crystals"))
    p.add_argument("--limit", type=int, default=2000, help="0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    p.add_argument("--out", default=None)
    args = p.parse_args()

    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    print(data.summary())
    names = shells(data)
    index = [list(data.channels).index(c) for c in names]
    images = data.images.numpy()
    g = images[:, index].sum(axis=(2, 3))                                 # [M, shells]
    density = np.diagonal(images[:, list(data.channels).index("density")], axis1=1,
                          axis2=2).sum(1) / 10                            # atoms / A^3
    results = {"task": args.task, "limit": args.limit, "seed": args.seed,
               "epochs": args.epochs, "lr_schedule": args.lr_schedule,
               "rank_correlation_with_target": {}, "test_accuracy": {}}
    for name, column in zip(names + ["density"], np.column_stack([g, density]).T):
        rho = float(spearmanr(column, data.targets).correlation)
        results["rank_correlation_with_target"][name] = rho
    print("rank correlation with the target: " + ", ".join(
        f"g({n[6:]}) {r:+.2f}" if n != "density" else f"density {r:+.2f}"
        for n, r in results["rank_correlation_with_target"].items()))

    flat = images.reshape(len(images), -1)
    kept = [c for c in range(images.shape[1]) if c not in index]
    rows = results["test_accuracy"]
    rows[f"gbm, shells' g and density ({len(names) + 1} numbers)"] = gbm(
        data, np.column_stack([g, density]), "shells' g and density", args.seed)
    rows["gbm, images without shells"] = gbm(
        data, images[:, kept].reshape(len(images), -1), "images without shells", args.seed)
    rows["gbm, images"] = gbm(data, flat, "images", args.seed)

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_shells."))
    for label, removed in (("deq, without shells", names), ("deq, every channel", [])):
        cfg = TrainConfig(task=args.task, epochs=args.epochs, limit=args.limit, seed=args.seed,
                          lr_schedule=args.lr_schedule)
        report, val_acc, seconds = train_and_test(
            cfg, without(data, removed),
            root / label.replace(", ", "-").replace(" ", "-"))
        rows[label] = report["accuracy"]
        results[f"{label}: seconds"] = seconds
        print(f"{label}: test accuracy {report['accuracy']:.3f} (validation "
              f"{val_acc:.3f}; {seconds:.0f} s)", flush=True)

    print(f"\n{args.task} (--limit {args.limit}), test accuracy, one run each:")
    for label, acc in rows.items():
        print(f"  {label:40s} {acc:.3f}")
    root.mkdir(parents=True, exist_ok=True)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {root / 'results.json'}")


if __name__ == "__main__":
    main()
