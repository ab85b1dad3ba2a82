"""Descriptor vectors: what a chemist would hand a gradient-boosted model first.

They are the reference the graph-image DEQs are measured against (issue
"Accurate scientists"), so they are the standard, well-tried ones rather than
anything tuned to our labels:

* molecules: RDKit's 2D descriptor set (``Descriptors.CalcMolDescriptors``,
  ~217 numbers: weights, counts, TPSA, charges, logP, topological indices) and
  a Morgan count fingerprint (radius 2, 1024 bins);
* periodic structures (crystals, MOFs): element fractions (Z = 1..100),
  fraction-weighted statistics (mean, standard deviation, min, max) of seven
  element properties, and intensive structure numbers: density, volume per
  atom, van der Waals packing fraction, space group (spglib, symprec 0.1).

Every entry is intensive or canonical, so the vector does not depend on atom
numbering or on which cell of a crystal the CIF holds. Values that cannot be
computed are NaN (gradient boosting handles missing values), never an error;
an unreadable input gives ``(None, reason)`` like :func:`tasks.render`.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from deq_petsc.core.errors import DEQInputError
from .graph_image import (covalent_radius, electronegativity, mol_from_smiles, read_cif,
                          structure_from_cif)

DESCRIPTOR_VERSION = 1
MORGAN_BINS = 1024
MAX_Z = 100
ELEMENT_PROPERTIES = ("Z", "electronegativity", "covalent radius", "row", "group",
                      "atomic mass", "Mendeleev number")
STRUCTURE_NUMBERS = ("density (g/cm3)", "volume per atom (A3)", "vdW packing fraction",
                     "space group", "elements")
SPACE_GROUP_MAX_ATOMS = 2000      # spglib on larger cells costs more than the rest together


def molecule_names() -> list[str]:
    from rdkit.Chem import Descriptors
    return [name for name, _ in Descriptors._descList] + [f"morgan{k}" for k in
                                                          range(MORGAN_BINS)]


def periodic_names() -> list[str]:
    from pymatgen.core import Element
    fractions = [f"x({Element.from_Z(z).symbol})" for z in range(1, MAX_Z + 1)]
    stats = [f"{s} {p}" for p in ELEMENT_PROPERTIES for s in ("mean", "std", "min", "max")]
    return fractions + stats + list(STRUCTURE_NUMBERS)


def names(kind: str) -> list[str]:
    return molecule_names() if kind == "molecule" else periodic_names()


# -- molecules -------------------------------------------------------------------------
def molecule_descriptors(smiles: str) -> np.ndarray:
    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    mol = Chem.RemoveHs(mol_from_smiles(smiles))
    values = Descriptors.CalcMolDescriptors(mol, missingVal=float("nan"))
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=MORGAN_BINS)
    counts = generator.GetCountFingerprintAsNumPy(mol)
    return np.concatenate([np.fromiter(values.values(), dtype=np.float64, count=len(values)),
                           counts.astype(np.float64)])


# -- periodic structures ---------------------------------------------------------------
@lru_cache(maxsize=None)
def element_properties(z: int) -> tuple[float, ...]:
    import warnings

    from pymatgen.core import Element
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        e = Element.from_Z(z)
        mendeleev = e.mendeleev_no
        return (float(z), electronegativity(z), covalent_radius(z), float(e.row),
                float(e.group), float(e.atomic_mass),
                float(mendeleev) if mendeleev is not None else float("nan"))


@lru_cache(maxsize=None)
def vdw_radius(z: int) -> float:
    from rdkit import Chem
    return float(Chem.GetPeriodicTable().GetRvdw(z))


def structure_descriptors(structure) -> np.ndarray:
    if not structure.is_ordered:
        raise DEQInputError("disordered structure (partial occupancies): order it first")
    z_site = np.array([site.specie.Z for site in structure])
    if z_site.max() > MAX_Z:
        raise DEQInputError(f"element Z = {z_site.max()} beyond Z = {MAX_Z}")
    species, counts = np.unique(z_site, return_counts=True)
    x = counts / counts.sum()
    fractions = np.zeros(MAX_Z)
    fractions[species - 1] = x
    props = np.array([element_properties(int(z)) for z in species])      # [k, 7]
    mean = x @ props
    std = np.sqrt(np.maximum(x @ (props - mean) ** 2, 0.0))
    stats = np.stack([mean, std, props.min(0), props.max(0)], axis=1).reshape(-1)
    n, volume = len(structure), float(structure.volume)
    packing = sum(4.0 / 3.0 * math.pi * vdw_radius(int(z)) ** 3 for z in z_site) / volume
    space_group = float("nan")
    if n <= SPACE_GROUP_MAX_ATOMS:
        import os
        import warnings

        # spglib's C library writes "spglib: ssm_get_exact_positions failed." and the like
        # to stderr, through the progress bar (38 lines over the 36,737 Materials Project
        # crystals); it reads this variable at each warning. A user's own SPGLIB_WARNING
        # stays as it is.
        os.environ.setdefault("SPGLIB_WARNING", "OFF")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                space_group = float(structure.get_space_group_info(symprec=0.1)[1])
        except Exception:      # spglib gives up on some cells: a missing value, not an error
            pass
    numbers = [float(structure.density), volume / n, packing, space_group, float(len(species))]
    return np.concatenate([fractions, stats, numbers])


# -- one input, in a worker --------------------------------------------------------------
def describe(payload_kind: str, payload: str):
    """``(descriptor vector float64, None)`` or ``(None, reason)``; never raises."""
    try:
        if payload_kind == "smiles":
            return molecule_descriptors(payload), None
        text = read_cif(payload) if payload_kind == "cif_file" else payload
        return structure_descriptors(structure_from_cif(text)), None
    except DEQInputError as err:
        return None, str(err)
    except Exception as err:  # a library failing deep inside on odd input: report, go on
        return None, f"{type(err).__name__}: {err}"


def descriptor_matrix(payload_kind: str, payloads: list[str], n_jobs=None,
                      progress: bool = True) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Descriptors of many inputs: ``(matrix [n, d] with NaN rows for failures,
    [(row, reason), ...])``."""
    from .workers import map_in_workers

    kind = "molecule" if payload_kind == "smiles" else "periodic"
    width = len(names(kind))
    results = map_in_workers(describe, [(payload_kind, p) for p in payloads],
                             desc="descriptors", n_jobs=n_jobs, progress=progress)
    matrix = np.full((len(payloads), width), np.nan)
    failed = []
    for row, (vector, reason) in enumerate(results):
        if vector is None:
            failed.append((row, reason))
        else:
            matrix[row] = vector
    matrix[~np.isfinite(matrix)] = np.nan        # RDKit's Ipc overflows to inf on some inputs
    return matrix, failed
