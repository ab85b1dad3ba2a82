"""Do the atoms' local environments carry what the species images and descriptors miss?

The crystals' DEQ trails gradient boosting on the descriptors by four points
(docs/data.md). The periodic images have one node per species: every atom of
an element shares one row, so two sites of one element with different
environments (an octahedral and a tetrahedral cation) are averaged together,
and the descriptors see only composition and a few density numbers. A band gap
depends on the atoms *and their environments* (issue "Accurate scientists").
Before building an atom- or site-level representation, this measures whether
the environments carry anything the existing inputs do not, with
``deq-petsc baseline``'s gradient boosting on the same split:

per atom of the cell, from its neighbours within 8 A (bonded: ``d < 1.15
(r_i + r_j)``, covalent radii, the images' rule):

* coordination number, and Hoppe's effective coordination number (bonds
  weighted by ``exp(1 - (d / d_w)^6)``, ``d_w`` their weighted mean length);
* nearest-neighbour distance over the sum of covalent radii;
* mean ``|chi_i - chi_j|`` over bonds (ionicity), the fraction of bonds to the
  same element, to a metal;
* whether the atom is a metal, and the fraction of its bonds to metals;

summarised over the cell's atoms by mean, standard deviation, min and max
(28 numbers, intensive: the same for every cell of a structure). Fits, by
default: environments alone, descriptors, descriptors + environments, images,
images + environments, descriptors + images (``--sets`` chooses):

    .venv/bin/python benchmarks/bench_site_environments.py --task crystals --limit 0
    .venv/bin/python benchmarks/bench_site_environments.py --task crystals --limit 0 \
        --sets environments,descriptors+environments
"""

import argparse
import time

import numpy as np

import deq_petsc  # noqa: F401  (process set-up)

RADIUS = 8.0
PER_ATOM = ("coordination", "effective coordination", "nearest / covalent sum",
            "bond ionicity", "bonds to the same element", "bonds to metals", "metal")
NAMES = [f"{s} {p}" for p in PER_ATOM for s in ("mean", "std", "min", "max")]
SETS = ("environments", "descriptors", "descriptors+environments", "images",
        "images+environments", "descriptors+images")


def environments(payload_kind: str, payload: str):
    """``(28 numbers, None)`` or ``(None, reason)`` for one CIF (text, or a file's path for
    ``payload_kind`` "cif_file"); never raises."""
    import warnings
    from pathlib import Path

    from pymatgen.core import Element

    from deq_petsc.science.data.graph_image import (BOND_TOLERANCE, covalent_radius,
                                            electronegativity, structure_from_cif)
    try:
        if payload_kind == "cif_file":
            payload = Path(payload).read_text(errors="replace")
        s = structure_from_cif(payload)
        z = np.array([site.specie.Z for site in s])
        r = np.array([covalent_radius(int(v)) for v in z])
        chi = np.array([electronegativity(int(v)) for v in z])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            metal = np.array([Element.from_Z(int(v)).is_metal for v in z], dtype=float)
        i, j, _, d = s.get_neighbor_list(RADIUS)
        keep = d > 1e-8
        i, j, d = i[keep], j[keep], d[keep]
        n = len(s)
        bonded = d < BOND_TOLERANCE * (r[i] + r[j])
        cn = np.bincount(i[bonded], minlength=n).astype(float)
        scaled = d / (r[i] + r[j])
        nearest = np.full(n, np.inf)
        np.minimum.at(nearest, i, scaled)
        nearest[~np.isfinite(nearest)] = RADIUS
        d_min = np.full(n, np.inf)
        np.minimum.at(d_min, i, d)
        # Hoppe's effective coordination: the weighted mean bond length d_w, iterated
        # five times from the shortest, then sum_j exp(1 - (d_j / d_w)^6)
        d_w = np.where(np.isfinite(d_min), d_min, 1.0)
        for _ in range(5):
            w = np.exp(1.0 - (d / d_w[i]) ** 6)
            d_w = np.bincount(i, w * d, n) / np.maximum(np.bincount(i, w, n), 1e-300)
            d_w = np.where(d_w > 0, d_w, 1.0)                 # an atom without neighbours
        econ = np.bincount(i, np.exp(1.0 - (d / d_w[i]) ** 6), n)

        def per_bond(values):
            total = np.bincount(i[bonded], values[bonded], n)
            return np.where(cn > 0, total / np.maximum(cn, 1), 0.0)

        ionicity = per_bond(np.abs(chi[i] - chi[j]))
        same = per_bond((z[i] == z[j]).astype(float))
        to_metal = per_bond(metal[j])
        columns = np.column_stack([cn, econ, nearest, ionicity, same, to_metal, metal])
        stats = np.stack([columns.mean(0), columns.std(0), columns.min(0), columns.max(0)], 1)
        return stats.reshape(-1), None
    except Exception as err:        # a failure is a missing row, as in the descriptors
        return None, f"{type(err).__name__}: {err}"


def main():
    from deq_petsc.science.baseline import BaselineConfig, run_baseline, task_descriptors
    from deq_petsc.science.data import load_task, make_task
    from deq_petsc.science.data.cache import DatasetCache
    from deq_petsc.science.data.workers import map_in_workers
    from deq_petsc.science.metrics import accuracy_stderr

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="crystals", choices=("crystals", "mof-pore"))
    p.add_argument("--limit", type=int, default=2000, help="0: all")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sets", default=",".join(SETS),
                   help="comma-separated feature sets to fit (an image set takes about 17 "
                        "minutes on all the crystals)")
    args = p.parse_args()
    sets = args.sets.split(",")
    unknown = set(sets) - set(SETS)
    if unknown:
        p.error(f"unknown feature set(s): {', '.join(sorted(unknown))}; known: {', '.join(SETS)}")

    data = load_task(args.task, limit=args.limit or None, seed=args.seed, progress=False)
    print(data.summary(), flush=True)
    task = make_task(data.task, **data.task_options)
    payload = {rec.id: rec.payload for rec in task.records(DatasetCache(None).root)}
    start = time.perf_counter()
    results = map_in_workers(environments, [(task.payload, payload[i]) for i in data.ids],
                             desc="environments")
    env = np.full((len(data.ids), len(NAMES)), np.nan)
    failed = 0
    for row, (vector, reason) in enumerate(results):
        if vector is None:
            failed += 1
        else:
            env[row] = vector
    print(f"environments of {len(data.ids)} structures: {time.perf_counter() - start:.0f} s, "
          f"{failed} failed", flush=True)
    blocks = {"environments": env,
              "descriptors": task_descriptors(data, progress=False)[0],
              "images": data.images.reshape(len(data.ids), -1).numpy()}
    rows = {}
    for label in sets:
        X = np.column_stack([blocks[b] for b in label.split("+")])
        report = run_baseline(BaselineConfig(features=label, seed=args.seed, progress=False),
                              data, log=lambda *a, **k: None, X=X)
        rows[label] = report
        print(f"gradient boosting on {label} ({X.shape[1]} features, {report['rounds']} "
              f"rounds, fit {report['fit_seconds']:.0f} s): test accuracy "
              f"{report['accuracy']:.3f}", flush=True)
    n_test = len(data.indices("test"))
    print(f"\n{args.task} (--limit {args.limit}), {n_test} test samples, gradient boosting:")
    for label, report in rows.items():
        acc = report["accuracy"]
        print(f"  {label:30s} {acc:.3f} (standard error {accuracy_stderr(acc, n_test):.3f})")


if __name__ == "__main__":
    main()
