"""Does a 3D dipole estimate help the polarity baseline? (issue "Accurate scientists")

A dipole is a 3D quantity; the graph images and the 2D descriptors carry none.
The cheapest 3D estimate a new SMILES can get: an RDKit ETKDG conformer
optimised with MMFF94, and the dipole of its MMFF (and Gasteiger) partial
charges at those positions, plus the two largest principal moments of the
atom positions. This fits the same gradient boosting as ``deq-petsc baseline``
(the same settings: 500 rounds at most, chosen on the validation split) on the same
split with and without those four numbers and prints the test
accuracies side by side, and the rank correlation of the estimates with QM9's
DFT dipoles.

    .venv/bin/python benchmarks/bench_dipole_feature.py --limit 20000
"""

import argparse
import time

import numpy as np

import deq_petsc  # noqa: F401  (process set-up)


def dipole_features(smiles: str):
    from rdkit import Chem, RDLogger
    from rdkit.Chem import AllChem, rdPartialCharges
    RDLogger.DisableLog("rdApp.*")
    mol = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(mol, randomSeed=0xF00D) != 0:
        return [np.nan] * 4
    try:
        AllChem.MMFFOptimizeMolecule(mol)
    except Exception:
        pass
    r = mol.GetConformer().GetPositions()
    r = r - r.mean(0)
    rdPartialCharges.ComputeGasteigerCharges(mol)
    q = np.array([a.GetDoubleProp("_GasteigerCharge") for a in mol.GetAtoms()])
    props = AllChem.MMFFGetMoleculeProperties(mol)
    qm = (np.array([props.GetMMFFPartialCharge(i) for i in range(mol.GetNumAtoms())])
          if props is not None else np.full(len(q), np.nan))
    debye = 4.803                          # e * Angstrom in Debye
    moments = np.sort(np.linalg.eigvalsh(np.cov(r.T)))[-2:]
    return [np.linalg.norm(q @ r) * debye, np.linalg.norm(qm @ r) * debye, *moments]


def fit(F, y, split):
    from sklearn.ensemble import HistGradientBoostingClassifier
    tr, va, te = split
    model = HistGradientBoostingClassifier(max_iter=500, learning_rate=0.05,
                                           early_stopping=False, random_state=0)
    model.fit(F[tr], y[tr])
    val = [float((p == y[va]).mean()) for p in model.staged_predict(F[va])]
    k = int(np.argmax(val)) + 1
    test = next(p for i, p in enumerate(model.staged_predict(F[te]), 1) if i == k)
    return val[k - 1], float((test == y[te]).mean()), k


def main():
    from scipy.stats import spearmanr

    from deq_petsc.science.baseline import task_descriptors
    from deq_petsc.science.data import load_task
    from deq_petsc.science.data.tasks import make_task
    from deq_petsc.science.data.workers import map_in_workers

    p = argparse.ArgumentParser()
    p.add_argument("--limit", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    data = load_task("polarity", limit=args.limit, seed=args.seed, progress=False)
    X, _ = task_descriptors(data, progress=False, log=lambda *a: None)
    smiles = {r.id: r.payload for r in make_task("polarity").records(None)}
    start = time.perf_counter()
    D = np.array(map_in_workers(dipole_features, [(smiles[i],) for i in data.ids],
                                desc="conformers", progress=False))
    print(f"{len(data.ids)} molecules: 3D features in {time.perf_counter() - start:.1f} s, "
          f"{int(np.isnan(D[:, 0]).sum())} embeddings failed")
    print(f"Spearman with the DFT dipole: Gasteiger {spearmanr(D[:, 0], data.targets, nan_policy='omit')[0]:.3f}, "
          f"MMFF {spearmanr(D[:, 1], data.targets, nan_policy='omit')[0]:.3f}")
    y = data.labels.numpy()
    split = [data.indices(s) for s in ("train", "val", "test")]
    for name, F in (("descriptors", X), ("descriptors + 3D", np.hstack([X, D])),
                    ("3D only", D)):
        val, test, k = fit(F, y, split)
        print(f"{name:18s} val {val:.3f} test {test:.3f} ({k} rounds)")


if __name__ == "__main__":
    main()
