"""What some channels of the graph images are worth to the DEQ: trained with every channel
and with the named ones zeroed, side by side on the same split and initialisation.

A zeroed channel is what a convolution cannot tell from an absent one (the graph
sums of a zero channel are constant, so they add nothing either), and the
models' weights start the same: the difference between the rows is the
channels' and the noise of training, nothing else. ``TrainConfig``'s
defaults (the convolutional cell, ``deq-petsc train``'s until the pair cell), with
``--epochs`` and ``--lr-schedule``:

    .venv/bin/python benchmarks/bench_channel_ablation.py --task crystals --limit 0 \
        --epochs 12 --zero "bond length,polarity"

(The trial of periodic representation 4's environment channels, docs/data.md, was
``--zero coordination,contact`` at commit 185bfff.)

``--zero`` takes one comma-separated group of channel names (see ``deq-petsc data``);
prints the test and validation accuracy and the time of each run.
"""

import argparse
import math
import tempfile
from pathlib import Path

import deq_petsc  # noqa: F401  (process set-up)
from common import train_and_test, without


def main():
    from deq_petsc.science.config import TrainConfig
    from deq_petsc.science.data import load_task

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="crystals", choices=("polarity", "mof-pore", "crystals"))
    p.add_argument("--limit", type=int, default=2000, help="0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr-schedule", default="cosine", choices=("constant", "cosine"))
    p.add_argument("--zero", required=True, help="comma-separated channel names")
    p.add_argument("--out", default=None, help="keep the run folders here")
    args = p.parse_args()

    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    print(data.summary(), flush=True)
    zero = [name.strip() for name in args.zero.split(",") if name.strip()]
    unknown = [name for name in zero if name not in data.channels]
    if unknown:
        p.error(f"no channel {', '.join(map(repr, unknown))} in the {args.task} images; "
                f"they have: {', '.join(data.channels)}")
    root = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_ablation."))
    n_test = len(data.indices("test"))
    rows = {}
    for label, removed in (("every channel", []), (f"without {', '.join(zero)}", zero)):
        cfg = TrainConfig(task=args.task, epochs=args.epochs, limit=args.limit, seed=args.seed,
                          lr_schedule=args.lr_schedule)
        report, val_acc, seconds = train_and_test(cfg, without(data, removed),
                                                  root / f"run{len(rows)}")
        rows[label] = (report["accuracy"], val_acc, seconds)
        print(f"{label}: test accuracy {rows[label][0]:.3f}, validation {rows[label][1]:.3f} "
              f"({rows[label][2]:.0f} s)", flush=True)
    print(f"\n{args.task} (--limit {args.limit}), {args.epochs} epochs ({args.lr_schedule}), "
          f"{n_test} test samples:")
    for label, (test, val, seconds) in rows.items():
        se = math.sqrt(test * (1 - test) / n_test)
        print(f"  {label:40s} test {test:.3f} (standard error {se:.3f}), validation {val:.3f}, "
              f"{seconds:.0f} s")


if __name__ == "__main__":
    main()
