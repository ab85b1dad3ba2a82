"""Which of the descriptor baseline's numbers carry its lead: the same fit with groups left out.

`deq-petsc baseline`'s gradient boosting on the periodic descriptors
(docs/data.md, "The reference"), on the same split, once with every column and
once per left-out group: the space group; the structure's density, volume per
atom and packing fraction; all five structure numbers (leaving the composition:
element fractions and their property statistics). About 30 s per fit on all
the crystals (the descriptors come from the baseline's cache, or are computed
once):

    .venv/bin/python benchmarks/bench_descriptor_ablation.py --task crystals --limit 0
"""

from __future__ import annotations

import argparse

import deq_petsc  # noqa: F401  (process set-up)

#: left-out groups, by the descriptor names' prefixes (data.descriptors.STRUCTURE_NUMBERS)
GROUPS = {
    "every descriptor": (),
    "without the space group": ("space group",),
    "without density, volume per atom, packing": ("density", "volume per atom",
                                                   "vdW packing fraction"),
    "composition alone (no structure numbers)": ("density", "volume per atom",
                                                 "vdW packing fraction", "space group",
                                                 "elements"),
}


def main():
    from deq_petsc.science.baseline import BaselineConfig, run_baseline, task_descriptors
    from deq_petsc.science.data import load_task
    from deq_petsc.science.metrics import accuracy_stderr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="crystals", choices=("crystals", "mof-pore"))
    p.add_argument("--limit", type=int, default=0, help="0: all")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    X, names = task_descriptors(data, progress=False)
    n_test = len(data.indices("test"))
    print(f"{args.task} (--limit {args.limit}, seed {args.seed}), {n_test} test samples, "
          f"gradient boosting on the descriptors:")
    for label, left_out in GROUPS.items():
        columns = [k for k, name in enumerate(names) if not name.startswith(left_out)]
        report = run_baseline(BaselineConfig(features=label, seed=args.seed, progress=False),
                              data, log=lambda *a, **k: None, X=X[:, columns])
        acc = report["accuracy"]
        print(f"  {label:45s} {len(columns):4d} columns: {acc:.3f} (standard error "
              f"{accuracy_stderr(acc, n_test):.3f}; fit {report['fit_seconds']:.0f} s)",
              flush=True)


if __name__ == "__main__":
    main()
