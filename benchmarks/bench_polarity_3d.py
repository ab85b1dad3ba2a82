"""What the 3D channels of the polarity images buy, and what a new molecule pays for them.

Polarity images (representation 2) are drawn at QM9's B3LYP positions; a molecule
known only by its SMILES is drawn at an ETKDG + MMFF94 conformer. Two questions
(issue "Accurate scientists"), answered side by side in one run:

1. **Ablation.** The same DEQ (``TrainConfig``'s defaults: the convolutional cell, ``deq-petsc
   train``'s until the pair cell; ``--epochs``) trained on
   the same split with every channel, without the dipole channel (a near-label
   feature: its sum, the dipole of the MMFF94 charges, alone classifies most of QM9
   right), and without both 3D channels (distance, dipole: the 2D image plus
   MMFF94 charges), with and without the image's graph sums in the injection
   (``--no-sums``). A channel is removed by zeroing it, which a convolution cannot
   tell from its absence.
2. **The shift at prediction time.** Each trained model is evaluated on the test
   molecules drawn at QM9's positions and drawn from their SMILES (the path of
   ``deq-petsc predict``); and the dipole channel's sum alone, thresholded on the
   training split, and ``deq-petsc baseline``'s gradient boosting on the descriptors
   plus that sum, are scored the same two ways. One more model is trained on images
   drawn from the SMILES throughout (no shift, but no DFT geometry either).

    .venv/bin/python benchmarks/bench_polarity_3d.py --limit 2000 --epochs 10

Prints a table; ``--out`` keeps the three run folders and ``results.json``.
"""

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

import deq_petsc  # noqa: F401  (process set-up)
from common import without

#: name: (channels zeroed, graph sums in the injection); "conformers": trained on images
#: drawn from the SMILES, as the test molecules of "from SMILES" are
VARIANTS = {"all channels": ((), True), "all channels, no sums": ((), False),
            "trained on conformers": ((), True),
            "without dipole": (("dipole",), True),
            "without distance, dipole": (("distance", "dipole"), True),
            "without distance, dipole, no sums": (("distance", "dipole"), False)}


def smiles_images(data, which, jobs):
    """The molecules ``which`` (indices) drawn from their SMILES (ETKDG + MMFF94), as
    ``predict`` draws one: images of the whole set (zeros elsewhere) and a mask of those
    drawn."""
    from deq_petsc.science.data.tasks import make_task, render
    from deq_petsc.science.data.workers import map_in_workers

    smiles = {r.id: r.payload for r in make_task("polarity").records(None)}
    rendered = map_in_workers(render, [("smiles", smiles[data.ids[i]], 32) for i in which],
                              desc="molecules from SMILES", n_jobs=jobs, progress=False)
    ok = np.zeros(len(data.ids), dtype=bool)
    images = torch.zeros_like(data.images)
    for i, (img, _) in zip(which, rendered):
        if img is not None:
            ok[i] = True
            images[i] = torch.from_numpy(img.astype(np.float32))
    return images, ok


def subset(data, keep, images=None):
    """The data set restricted to the samples ``keep`` (a mask), optionally other images."""
    idx = np.flatnonzero(keep)
    return replace(data, images=(data.images if images is None else images)[idx],
                   labels=data.labels[idx], targets=data.targets[idx],
                   ids=[data.ids[i] for i in idx], split_of=data.split_of[idx])


def baseline_with_the_dipole(data, score, test_idx, from_smiles, jobs):
    """``deq-petsc baseline``'s gradient boosting (same settings) on the descriptors, and
    on the descriptors plus the dipole channel's sum: the 3D information the DEQ has, given
    to the reference too. Tested at QM9's positions and drawn from SMILES."""
    from deq_petsc.science.baseline import task_descriptors
    from sklearn.ensemble import HistGradientBoostingClassifier

    X, _ = task_descriptors(data, jobs=jobs, progress=False, log=lambda *a, **k: None)
    y = data.labels.numpy()
    tr, va = data.indices("train"), data.indices("val")
    rows = {}
    for name, F in (("descriptors", X), ("descriptors + dipole sum",
                                         np.hstack([X, score(data.images)[:, None]]))):
        model = HistGradientBoostingClassifier(max_iter=500, learning_rate=0.05,
                                               early_stopping=False, random_state=0)
        model.fit(F[tr], y[tr])
        val = [float((p == y[va]).mean()) for p in model.staged_predict(F[va])]
        k = int(np.argmax(val)) + 1
        tests = {"QM9 positions": F[test_idx]}
        if name != "descriptors":
            tests["from SMILES"] = np.hstack([X[test_idx], score(from_smiles)[:, None]])
        for where, Ft in tests.items():
            pred = next(p for i, p in enumerate(model.staged_predict(Ft), 1) if i == k)
            acc = float((pred == y[test_idx]).mean())
            rows[f"gbm, {name}, {where}"] = acc
            print(f"gradient boosting on {name} ({k} rounds, val {val[k - 1]:.3f}), {where}: "
                  f"test accuracy {acc:.3f}")
    return rows


def threshold_accuracy(score_train, y_train, score_test, y_test):
    """Accuracy on test of ``score > t``, ``t`` the best threshold on train."""
    candidates = np.unique(score_train)
    best = max(candidates, key=lambda t: ((score_train > t) == y_train).mean())
    return float(((score_test > best) == y_test).mean()), float(best)


def accuracy(model, images, labels, channels, removed):
    from deq_petsc.science.inference import predict
    images = images.clone()
    for name in removed:
        images[:, list(channels).index(name)] = 0
    logits, *_ = predict(model, images)
    return float((logits.argmax(1) == labels).float().mean())


def main():
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.data import load_task
    from deq_petsc.science.train import Trainer

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS),
                   metavar="VARIANT", help=f"(default: all: {', '.join(VARIANTS)})")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    torch.manual_seed(args.seed)

    data = load_task("polarity", limit=args.limit, seed=args.seed, progress=False)
    print(data.summary())
    which = (np.arange(len(data.ids)) if "trained on conformers" in args.variants
             else data.indices("test"))
    conformer_images, embedded = smiles_images(data, which, args.jobs)
    test_idx = np.intersect1d(data.indices("test"), np.flatnonzero(embedded))
    failed = len(which) - int(embedded.sum())
    print(f"{failed} of {len(which)} molecules could not be embedded from their SMILES")
    y_test = data.labels[test_idx]
    dft_images = data.images[test_idx]
    from_smiles = conformer_images[test_idx]
    print(f"test split: {len(test_idx)} molecules drawn from their SMILES as well "
          f"(the others are left out of both columns)")
    dipole = list(data.channels).index("dipole")
    score = lambda imgs: imgs[:, dipole].diagonal(dim1=1, dim2=2).sum(1).numpy()  # noqa: E731
    tr = data.indices("train")
    results = {"limit": args.limit, "seed": args.seed, "epochs": args.epochs,
               "test_molecules": len(test_idx), "embedding_failures": failed, "models": {}}
    for name, images in (("QM9 positions", dft_images), ("from SMILES", from_smiles)):
        acc, t = threshold_accuracy(score(data.images[tr]), data.labels[tr].numpy(),
                                    score(images), y_test.numpy())
        results[f"dipole channel sum alone, {name}"] = acc
        print(f"the dipole channel's sum alone (> {t * 4.8032:.2f} D, chosen on train), "
              f"{name}: test accuracy {acc:.3f}")
    agreement = np.corrcoef(score(dft_images), score(from_smiles))[0, 1]
    results["dipole_sum_correlation_qm9_vs_smiles"] = float(agreement)
    print(f"correlation of the dipole sums, QM9 positions vs from SMILES: {agreement:.3f}")
    results.update(baseline_with_the_dipole(data, score, test_idx, from_smiles, args.jobs))

    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_polarity_3d."))
    for name in args.variants:
        removed, sums = VARIANTS[name]
        cfg = TrainConfig(task="polarity", epochs=args.epochs, limit=args.limit, seed=args.seed,
                          sums=sums)
        start = time.perf_counter()
        trained_on = (subset(data, embedded, conformer_images) if name == "trained on conformers"
                      else data)
        trainer = Trainer(cfg, without(trained_on, removed), root / name.replace(", ", "-")
                          .replace(" ", "-"), progress=False, log=lambda *a, **k: None)
        try:
            trainer.fit()
            seconds = time.perf_counter() - start
            model = trainer.model
            row = {"removed": list(removed), "sums": sums, "train_seconds": seconds,
                   "val_accuracy": trainer.history[-1]["val_acc"],
                   "test_qm9_positions": accuracy(model, dft_images, y_test, data.channels,
                                                  removed),
                   "test_from_smiles": accuracy(model, from_smiles, y_test, data.channels,
                                                removed)}
        finally:
            trainer.destroy()
        results["models"][name] = row
        print(f"{name:26s} val {row['val_accuracy']:.3f}  test at QM9 positions "
              f"{row['test_qm9_positions']:.3f}  from SMILES {row['test_from_smiles']:.3f}  "
              f"({seconds:.0f} s)", flush=True)
    (root / "results.json").write_text(json.dumps(results, indent=1))
    print(f"wrote {root / 'results.json'}")


if __name__ == "__main__":
    main()
