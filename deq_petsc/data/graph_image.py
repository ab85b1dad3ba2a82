"""Graph images: atom-bond networks as fixed-size, multi-channel node-neighbour matrices.

Molecules (RDKit) -- one node per atom, hydrogens included, in RDKit's
canonical order (``CanonicalRankAtoms`` with ties broken), so the same
molecule always gives the same image whatever the input's atom numbering.
Image side :data:`MOLECULE_SIZE` = 32 holds every QM9 molecule (at most 29
atoms); larger molecules are rejected with :class:`DEQInputError`, never
cropped.

================  ==============================  ===========================================
channel           diagonal (atom a)               off-diagonal (a, b)
================  ==============================  ===========================================
0 bonds           0                               bond order (aromatic 1.5)
1 topology        0                               1 / shortest-path length (all pairs)
2 polarity        Pauling electronegativity       chi_a - chi_b for bonded pairs
3 element         atomic number / 10              0
4 charge          Gasteiger partial charge        0
================  ==============================  ===========================================

Periodic structures (pymatgen) -- one node per *species*, sorted by atomic
number: the quotient of the atom-bond network by translations and by the
equivalence of atoms of one element. A unit cell is an arbitrary repeat unit
(the same crystal has primitive, conventional and super cells of any size), so
an atom-indexed image of a solid is not canonical; this one is the same for
every cell of the same structure because all its entries are intensive
(per atom or per volume). It has a fixed size (:data:`PERIODIC_SIZE` = 16
species; structures with more species keep the 16 most abundant, counted in
:attr:`GraphImage.truncated`) whatever the number of atoms, which is what
metal-organic frameworks with hundreds to thousands of atoms need, and it
keeps what sets their pore size: the atom number density and the bonding
pattern of the framework (low density and long linkers mean large cavities),
rather than the local neighbourhood of one node.

Bonds in periodic structures: ``d_ij < 1.15 (r_i + r_j)`` with RDKit's
covalent radii, over all periodic images. (Rock salt: 6 Na-Cl bonds per
atom, Na-Na at 3.99 A excluded; fcc Cu: 12; diamond Si: 4.)

================  ==============================  ===========================================
channel           diagonal (species a)            off-diagonal (a, b)
================  ==============================  ===========================================
0 bonds           a-a bonds per atom of the cell  a-b bonds per atom of the cell
1 bond length     1 / mean a-a bond length (1/A)  1 / mean a-b bond length (1/A)
2 polarity        Pauling electronegativity       chi_a - chi_b for bonded pairs
3 element         atomic number / 10              0
4 density         atoms of a per 10 A^3           0
================  ==============================  ===========================================
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from ..errors import DEQInputError

MOLECULE_SIZE = 32
PERIODIC_SIZE = 16
BOND_TOLERANCE = 1.15
MOLECULE_CHANNELS = ("bonds", "topology", "polarity", "element", "charge")
PERIODIC_CHANNELS = ("bonds", "bond length", "polarity", "element", "density")


@dataclass
class GraphImage:
    """A rendered graph: ``image[channel, i, j]`` plus what its nodes are."""

    image: np.ndarray
    nodes: list[str]
    channels: tuple[str, ...]
    truncated: int = 0
    info: dict = field(default_factory=dict)


def _require(module: str):
    try:
        return __import__(module)
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(f"{module} is needed for graph images: pip install -e .[data]") from err


@lru_cache(maxsize=None)
def electronegativity(z: int) -> float:
    """Pauling electronegativity (0 where undefined: He, Ne, Ar)."""
    import warnings

    from pymatgen.core import Element
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        chi = Element.from_Z(z).X
    return 0.0 if chi is None or math.isnan(chi) else float(chi)


@lru_cache(maxsize=None)
def covalent_radius(z: int) -> float:
    from rdkit import Chem
    return float(Chem.GetPeriodicTable().GetRcovalent(z))


# -- molecules -----------------------------------------------------------------------
def mol_from_smiles(smiles: str):
    """RDKit molecule with explicit hydrogens; :class:`DEQInputError` if invalid."""
    _require("rdkit")
    from rdkit import Chem, RDLogger

    if not isinstance(smiles, str) or not smiles.strip():
        raise DEQInputError(f"empty SMILES {smiles!r}")
    RDLogger.DisableLog("rdApp.*")
    try:
        mol = Chem.MolFromSmiles(smiles, sanitize=False)
        if mol is None:
            raise DEQInputError(f"unparsable SMILES {smiles!r}")
        problems = Chem.DetectChemistryProblems(mol)
        if problems:
            raise DEQInputError(f"invalid SMILES {smiles!r}: {problems[0].Message()}")
        Chem.SanitizeMol(mol)
    finally:
        RDLogger.EnableLog("rdApp.*")
    return Chem.AddHs(mol)


def molecule_image(mol, size: int = MOLECULE_SIZE) -> GraphImage:
    """The graph image of an RDKit molecule (hydrogens as they are in ``mol``)."""
    from rdkit import Chem
    from rdkit.Chem import rdPartialCharges

    n = mol.GetNumAtoms()
    if n > size:
        raise DEQInputError(f"molecule with {n} atoms does not fit a {size}x{size} graph image")
    if n == 0:
        raise DEQInputError("molecule without atoms")
    ranks = list(Chem.CanonicalRankAtoms(mol, breakTies=True))
    order = np.argsort(ranks)                       # position p holds atom order[p]
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)

    mol = Chem.Mol(mol)
    rdPartialCharges.ComputeGasteigerCharges(mol)
    img = np.zeros((len(MOLECULE_CHANNELS), size, size), dtype=np.float32)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    chi = np.array([electronegativity(int(v)) for v in z])
    charge = np.array([a.GetDoubleProp("_GasteigerCharge") for a in mol.GetAtoms()])
    charge = np.where(np.isfinite(charge), charge, 0.0)
    p = position
    img[2, p, p] = chi
    img[3, p, p] = z / 10.0
    img[4, p, p] = charge
    for bond in mol.GetBonds():
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        order_ij = bond.GetBondTypeAsDouble()
        img[0, p[i], p[j]] = img[0, p[j], p[i]] = order_ij
        img[2, p[i], p[j]] = chi[i] - chi[j]
        img[2, p[j], p[i]] = chi[j] - chi[i]
    topo = Chem.GetDistanceMatrix(mol)
    with np.errstate(divide="ignore"):
        inv = np.where(topo > 0, 1.0 / topo, 0.0)
    inv[~np.isfinite(inv)] = 0.0                    # disconnected fragments: no path
    img[1][np.ix_(p, p)] = inv
    nodes = [mol.GetAtomWithIdx(int(i)).GetSymbol() for i in order]
    return GraphImage(img, nodes, MOLECULE_CHANNELS,
                      info={"smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)), "atoms": n})


def smiles_image(smiles: str, size: int = MOLECULE_SIZE) -> GraphImage:
    return molecule_image(mol_from_smiles(smiles), size)


# -- periodic structures -------------------------------------------------------------
def structure_from_cif(text: str):
    """pymatgen ``Structure`` from CIF text; :class:`DEQInputError` if it cannot be read."""
    _require("pymatgen")
    import warnings

    from pymatgen.core import Structure
    if not isinstance(text, str) or "_cell_length_a" not in text:
        raise DEQInputError("not a CIF (no _cell_length_a)")
    for tag, value in re.findall(r"^\s*(_cell_length_[abc]|_cell_angle_\w+)\s+(\S+)", text, re.M):
        number = re.match(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", value)   # "5.64(2)": 5.64
        low, high = (0, math.inf) if "length" in tag else (0, 180)
        if number is None or not low < float(number.group()) < high:
            raise DEQInputError(f"invalid cell: {tag} {value} (a length must be positive, an "
                                f"angle in (0, 180) degrees)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = Structure.from_str(text, fmt="cif")
    except Exception as err:  # pymatgen raises ValueError, KeyError, IndexError, ...
        raise DEQInputError(f"unreadable CIF: {type(err).__name__}: {err}") from None
    if len(structure) == 0:
        raise DEQInputError("CIF without atoms")
    return structure


def structure_image(structure, size: int = PERIODIC_SIZE,
                    tolerance: float = BOND_TOLERANCE) -> GraphImage:
    """The species graph image of a periodic structure (see the module docstring)."""
    if not structure.is_ordered:
        raise DEQInputError("disordered structure (partial occupancies): order it first")
    z_site = np.array([site.specie.Z for site in structure])
    species, counts = np.unique(z_site, return_counts=True)
    truncated = 0
    if len(species) > size:                         # keep the most abundant, then sort by Z
        keep = np.sort(species[np.argsort(-counts, kind="stable")[:size]])
        truncated = len(species) - size
        species = keep
    index = {int(z): k for k, z in enumerate(species)}
    kept = np.array([int(z) in index for z in z_site])
    n_atoms = len(structure)
    volume = structure.volume

    radii = np.array([covalent_radius(int(z)) for z in z_site])
    r_max = tolerance * 2 * float(radii.max())
    centers, neighbors, _, dist = structure.get_neighbor_list(r_max)
    bonded = (dist > 1e-8) & (dist < tolerance * (radii[centers] + radii[neighbors]))
    bonded &= kept[centers] & kept[neighbors]
    species_of_site = np.array([index.get(int(z), -1) for z in z_site], dtype=np.intp)
    a = species_of_site[centers[bonded]]
    b = species_of_site[neighbors[bonded]]
    d = dist[bonded]

    k = len(species)
    pairs = np.zeros((k, k))
    inv_sum = np.zeros((k, k))
    np.add.at(pairs, (a, b), 1.0)
    np.add.at(inv_sum, (a, b), 1.0 / d)
    img = np.zeros((len(PERIODIC_CHANNELS), size, size), dtype=np.float32)
    img[0, :k, :k] = pairs / n_atoms
    with np.errstate(invalid="ignore", divide="ignore"):
        img[1, :k, :k] = np.where(pairs > 0, inv_sum / pairs, 0.0)
    chi = np.array([electronegativity(int(z)) for z in species])
    delta = chi[:, None] - chi[None, :]
    img[2, :k, :k] = np.where(pairs > 0, delta, 0.0)
    diag = np.arange(k)
    img[2, diag, diag] = chi
    img[3, diag, diag] = species / 10.0
    count = np.array([np.sum(z_site == z) for z in species])
    img[4, diag, diag] = count / volume * 10.0
    from pymatgen.core import Element
    nodes = [Element.from_Z(int(z)).symbol for z in species]
    coordination = np.bincount(centers[bonded], minlength=n_atoms)
    return GraphImage(img, nodes, PERIODIC_CHANNELS, truncated=truncated,
                      info={"formula": structure.composition.reduced_formula,
                            "atoms": n_atoms, "volume": volume,
                            "mean_coordination": float(coordination.mean())})


def cif_image(text: str, size: int = PERIODIC_SIZE) -> GraphImage:
    return structure_image(structure_from_cif(text), size)


# -- what a model has seen ------------------------------------------------------------
def elements_in(images, channel: int | None = None) -> list[int]:
    """The atomic numbers present in graph images ``[M, C, N, N]`` (or one ``[C, N, N]``),
    read from the diagonal of the element channel (Z / 10): the chemical domain a model
    trained on them has seen, sorted."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    k = MOLECULE_CHANNELS.index("element") if channel is None else channel  # both kinds
    diag = np.diagonal(images[:, k], axis1=1, axis2=2)
    z = np.rint(diag[diag > 0] * 10.0).astype(int)
    return sorted(int(v) for v in np.unique(z))


def element_symbols(numbers) -> str:
    from rdkit import Chem
    table = Chem.GetPeriodicTable()
    return ", ".join(table.GetElementSymbol(int(z)) for z in numbers)


# -- looking at one ------------------------------------------------------------------
def render_png(graph: GraphImage, path, title: str | None = None) -> str:
    """Write the channels of a graph image side by side as a PNG; returns the path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    img = graph.image
    n_used = max(len(graph.nodes), 1)
    fig, axes = plt.subplots(1, img.shape[0], figsize=(3.2 * img.shape[0], 3.6),
                             constrained_layout=True)
    for c, ax in enumerate(np.atleast_1d(axes)):
        data = img[c, :n_used, :n_used]
        vmax = float(np.abs(data).max()) or 1.0
        cmap = "RdBu_r" if data.min() < 0 else "viridis"
        im = ax.imshow(data, cmap=cmap, vmin=-vmax if cmap == "RdBu_r" else 0, vmax=vmax)
        ax.set_title(graph.channels[c])
        ticks = range(n_used)
        if n_used <= 32:
            ax.set_xticks(ticks, graph.nodes, fontsize=6, rotation=90)
            ax.set_yticks(ticks, graph.nodes, fontsize=6)
        fig.colorbar(im, ax=ax, shrink=0.7)
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)
