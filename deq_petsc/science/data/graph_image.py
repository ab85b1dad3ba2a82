"""Graph images: atom-bond networks as fixed-size, multi-channel node-neighbour matrices.

Molecules (RDKit) -- one node per atom, hydrogens included, drawn at a 3D
geometry: QM9's B3LYP positions for QM9's molecules (:func:`xyz_image`), the
lowest-energy of ten ETKDG + MMFF94 conformers for a molecule known only by its
SMILES (:func:`smiles_image`). A dipole is a 3D quantity: the dipole of the MMFF94
partial charges at QM9's positions ranks QM9's DFT dipoles with Spearman 0.97
(Gasteiger charges on the same positions: 0.61); at a conformer from the SMILES,
0.85. Atoms in canonical order: RDKit's canonical ranks, ties between
topologically equivalent atoms broken by geometry, so the image depends neither
on the input's atom numbering nor on its orientation (tested). Image side
:data:`MOLECULE_SIZE` = 32 holds every QM9 molecule (at most 29 atoms); larger
molecules are rejected with :class:`DEQInputError`, never cropped.

================  ==============================  ===========================================
channel           diagonal (atom a)               off-diagonal (a, b)
================  ==============================  ===========================================
0 bonds           0                               bond order (aromatic 1.5)
1 topology        0                               1 / shortest-path length (all pairs)
2 polarity        Pauling electronegativity       chi_a - chi_b for bonded pairs
3 element         atomic number / 10              0
4 charge          MMFF94 partial charge (e) [1]_  0
5 distance        0                               1 / |r_a - r_b| (1/A, all pairs)
6 dipole          q_a (r_a - centroid) . mu_hat   0
================  ==============================  ===========================================

.. [1] Gasteiger's where MMFF94 has no parameters (elements outside QM9, such as Se).

Channel 6 is each atom's share of the charges' dipole ``mu = sum_a q_a (r_a -
centroid)`` along its direction, in e*A: the channel sums to ``|mu|``, a number
that alone classifies 89% of QM9 right (a near-label feature: its accuracy with
and without it is in ``docs/data.md``).

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
5-16 shell r0-r1  a-a pairs at r0 <= d < r1       a-b pairs at r0 <= d < r1, per atom of
                  (same scale)                    the cell, over a uniform gas's count
================  ==============================  ===========================================

Channels 5-16 resolve the structure by distance (shells 0-2 A, then 1 A apart
from 2 to 12 A, then 12-14 A: :data:`SHELLS`), bonded or not: entry ``(a, b)``
counts the b atoms in the shell around the a atoms, per atom of the cell,
divided by what a uniform gas of
the same number density would put in the shell, so each channel sums to the
shell's radial distribution ``g``. A cavity is geometry the bonds do not show:
the atoms of a framework with large pores crowd into thin walls, more than the
density says, at a few angstroms, and fall short of it at ten. On 2,000 CoRE
MOFs gradient boosting on the seven numbers ``g(R)``, R = 3-14 A, and the
density scored 0.835 where the 133 composition and structure descriptors scored
0.775; ``g(4 A)`` ranks the largest cavity diameter with Spearman 0.83, so it is
informative without being the label (docs/data.md). Four shells (0-3, 3-6, 6-10,
10-14 A: representation 2) took the MOF DEQ from 0.762 to 0.844; the opposite
wall of a pore of 5-8 A, the task's class boundaries, lies about 8-11 A from an
atom, which 1 A shells resolve: with them 0.853, and gradient boosting on the
thirteen radial numbers alone 0.862 (0.816 with four). Intensive, hence the same
for every cell of a structure (tested).
"""

from __future__ import annotations

import math
import re
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from deq_petsc.process.c_output import silenced
from deq_petsc.core.errors import DEQInputError

MOLECULE_SIZE = 32
PERIODIC_SIZE = 16
BOND_TOLERANCE = 1.15
#: the element channel holds ``Z / ELEMENT_SCALE`` on the diagonal (0: no node)
ELEMENT_SCALE = 10.0
MOLECULE_CHANNELS = ("bonds", "topology", "polarity", "element", "charge", "distance",
                     "dipole")
CONFORMER_SEED = 0xF00D
CONFORMERS = 10
DEBYE_PER_E_A = 4.80320           # 1 e * Angstrom in debye
#: the distance shells of the periodic images' radial channels (A)
SHELLS = ((0.0, 2.0), *((float(r), float(r + 1)) for r in range(2, 12)), (12.0, 14.0))
PERIODIC_CHANNELS = ("bonds", "bond length", "polarity", "element", "density",
                     *(f"shell {lo:g}-{hi:g} A" for lo, hi in SHELLS))
#: a CIF's size bound: 25 times the largest CIF of the CoRE MOF set (0.6 MB); pymatgen
#: reads a CIF whole, in memory, and slowly
MAX_CIF_BYTES = 16 << 20
#: an atom-count bound of periodic structures: twice the largest CoRE MOF (10,560 atoms);
#: the 14 A neighbour list behind the radial channels grows with it
MAX_ATOMS = 20_000
CELL_TAGS = ("_cell_length_a", "_cell_length_b", "_cell_length_c", "_cell_angle_alpha",
             "_cell_angle_beta", "_cell_angle_gamma")
#: what each channel holds and in what unit, for a person reading a drawn image: the
#: tables above, one (meaning, unit) per channel, keyed by the channel names of each kind
CHANNEL_MEANINGS = {
    MOLECULE_CHANNELS: (
        ("bond order (aromatic 1.5)", "bond order"),
        ("1 / shortest-path length, all pairs", "1/bonds"),
        ("diagonal: electronegativity; bonded: difference", "Pauling units"),
        ("diagonal: atomic number / 10", "Z/10"),
        ("diagonal: MMFF94 partial charge", "e"),
        ("1 / interatomic distance, all pairs", "1/Å"),
        ("diagonal: atom's share of the charges' dipole", "e·Å"),
    ),
    PERIODIC_CHANNELS: (
        ("bonds per atom of the cell", "bonds/atom"),
        ("1 / mean bond length", "1/Å"),
        ("diagonal: electronegativity; bonded: difference", "Pauling units"),
        ("diagonal: atomic number / 10", "Z/10"),
        ("diagonal: atoms of the species per 10 Å³", "atoms/10 Å³"),
        *((f"pairs {lo:g}-{hi:g} Å apart per atom, over a gas's", "g (uniform gas = 1)")
          for lo, hi in SHELLS),
    ),
}


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
@contextmanager
def _rdkit_quiet():
    """RDKit's own log off for the block: its complaints become our named errors."""
    from rdkit import RDLogger
    RDLogger.DisableLog("rdApp.*")
    try:
        yield
    finally:
        RDLogger.EnableLog("rdApp.*")


def mol_from_smiles(smiles: str):
    """RDKit molecule with explicit hydrogens; :class:`DEQInputError` if invalid."""
    _require("rdkit")
    from rdkit import Chem

    if not isinstance(smiles, str) or not smiles.strip():
        raise DEQInputError(f"empty SMILES {smiles!r}")
    _check_smiles_characters(smiles)
    with _rdkit_quiet():
        mol = Chem.MolFromSmiles(smiles.strip(), sanitize=False)
        if mol is None:
            raise DEQInputError(f"unparsable SMILES {smiles!r}")
        problems = Chem.DetectChemistryProblems(mol)
        if problems:
            raise DEQInputError(f"invalid SMILES {smiles!r}: {problems[0].Message()}")
        Chem.SanitizeMol(mol)
    dummies = [a.GetIdx() + 1 for a in mol.GetAtoms() if a.GetAtomicNum() == 0]
    if dummies:                  # '*' and R-groups: placeholders, not atoms of a molecule
        raise DEQInputError(f"SMILES {smiles!r}: atom {dummies[0]} is a dummy atom ('*'), "
                            f"not an element")
    return Chem.AddHs(mol)


def _check_smiles_characters(smiles: str) -> None:
    """RDKit stops reading at the first whitespace (what follows is a name to it) and at
    characters it does not know, and answers for the prefix: ``"C C(=O)O"`` is methane,
    ``"CCÖ"`` ethane. A SMILES is printable ASCII without blanks, so anything else inside
    it (surrounding blanks aside) is refused, naming the character and its position."""
    text = smiles.strip()
    start = smiles.index(text[0])
    for k, char in enumerate(text):
        if char.isspace():
            what = "whitespace"
        elif not char.isascii():
            what = "a non-ASCII character"
        elif not char.isprintable():
            what = "a control character"
        else:
            continue
        raise DEQInputError(f"SMILES {smiles!r}: {what} {char!r} at position {start + k + 1}; "
                            f"a SMILES is one word of printable ASCII (RDKit would read only "
                            f"{text[:k]!r})")


def outside_qm9(mol) -> str:
    """What puts a molecule outside QM9's chemistry, which polarity models learn from:
    QM9 holds neutral, closed-shell molecules, one per record. A model still answers for a
    salt, an ion or a radical, but from images unlike any it was trained on, so predict
    says so ('' when the molecule is like QM9's)."""
    from rdkit import Chem

    notes = []
    charge = Chem.GetFormalCharge(mol)
    if charge:
        notes.append(f"net charge {charge:+d}")
    radicals = sum(atom.GetNumRadicalElectrons() for atom in mol.GetAtoms())
    if radicals:
        notes.append(f"a radical ({radicals} unpaired electron{'s' * (radicals > 1)})")
    fragments = len(Chem.GetMolFrags(mol))
    if fragments > 1:
        notes.append(f"{fragments} separate molecules")
    return "; ".join(notes)


def mol_from_xyz(elements, coordinates):
    """An RDKit molecule (hydrogens explicit, with a conformer) from atoms and their
    positions in Angstrom, its bonds and bond orders perceived for a neutral molecule
    (``rdDetermineBonds``; where the default connectivity makes a strained cage hypervalent,
    the Hueckel connectivity). :class:`DEQInputError` if neither gives a valid molecule."""
    _require("rdkit")
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds

    xyz = np.asarray(coordinates, dtype=float).reshape(-1, 3)
    if len(elements) != len(xyz) or len(xyz) == 0:
        raise DEQInputError(f"{len(elements)} elements for {len(xyz)} positions")
    if not np.all(np.isfinite(xyz)):
        raise DEQInputError("non-finite atom positions")
    block = f"{len(xyz)}\n\n" + "\n".join(f"{e} {x:.8f} {y:.8f} {z:.8f}"
                                           for e, (x, y, z) in zip(elements, xyz))
    with _rdkit_quiet():
        atoms = Chem.MolFromXYZBlock(block)
        if atoms is None:
            raise DEQInputError("unreadable atoms (an unknown element?)")
        for hueckel in (False, True):
            mol = Chem.Mol(atoms)                   # perception changes the molecule
            try:
                if hueckel:     # YAeHMOP warns on stderr about every O-H and N-H bond
                    with silenced(2):
                        rdDetermineBonds.DetermineBonds(mol, charge=0, useHueckel=True)
                else:
                    rdDetermineBonds.DetermineBonds(mol, charge=0)
                Chem.SanitizeMol(mol)
                return mol
            except Exception as err:     # RDKit's perception raises ValueError, RuntimeError
                reason = f"{type(err).__name__}: {err}"
    raise DEQInputError(f"no neutral molecule fits these atoms' positions ({reason})")


def embed_conformer(mol, seed: int = CONFORMER_SEED, n_conformers: int = CONFORMERS):
    """``mol`` in canonical atom order with a 3D conformer: the lowest MMFF94
    energy of ``n_conformers`` ETKDGv3 embeddings (random seed ``seed``), each optimised
    with MMFF94 (UFF where MMFF94 lacks parameters). What a molecule known only by its
    SMILES gets in place of a DFT geometry;
    canonical order first, so that the conformer (and the image) does not depend on how
    the input numbered its atoms. Deterministic on one machine."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    # atoms and bonds in the order of the canonical SMILES: ETKDG depends on both
    canonical = Chem.MolFromSmiles(Chem.MolToSmiles(Chem.RemoveHs(mol)))
    if canonical is None:
        raise DEQInputError("RDKit cannot read back its own canonical SMILES of this molecule")
    mol = Chem.AddHs(canonical)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    params.numThreads = 1
    with _rdkit_quiet():
        ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not ids:                           # strained cages: start from random positions
            params.useRandomCoords = True
            ids = list(AllChem.EmbedMultipleConfs(mol, n_conformers, params))
        if not ids:
            raise DEQInputError("no 3D conformer could be embedded (ETKDG failed)")
        if AllChem.MMFFHasAllMoleculeParams(mol):
            results = AllChem.MMFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
            mol.SetProp("_conformer", "ETKDG + MMFF94")
        else:                                 # elements MMFF94 lacks (Se, B, ...): UFF
            results = AllChem.UFFOptimizeMoleculeConfs(mol, numThreads=1, maxIters=2000)
            mol.SetProp("_conformer", "ETKDG + UFF")
    energies = [energy for _, energy in results]
    best = ids[int(np.argmin(energies))]
    keep = Chem.Conformer(mol.GetConformer(best))
    mol.RemoveAllConformers()
    mol.AddConformer(keep, assignId=True)
    return mol


def _partial_charges(mol) -> tuple[np.ndarray, str]:
    """MMFF94 partial charges; Gasteiger's for a molecule MMFF94 cannot type (an element
    it lacks, such as Se or B: outside QM9, so ``predict`` warns about it anyway)."""
    from rdkit.Chem import AllChem, rdPartialCharges
    with _rdkit_quiet():
        props = AllChem.MMFFGetMoleculeProperties(mol)
    if props is not None:
        return np.array([props.GetMMFFPartialCharge(i) for i in range(mol.GetNumAtoms())]), \
            "MMFF94"
    mol = type(mol)(mol)
    rdPartialCharges.ComputeGasteigerCharges(mol)
    charge = np.array([a.GetDoubleProp("_GasteigerCharge") for a in mol.GetAtoms()])
    return np.where(np.isfinite(charge), charge, 0.0), "Gasteiger"


def _canonical_order(mol, distances: np.ndarray) -> np.ndarray:
    """Atoms in canonical order: RDKit's canonical ranks (topology), and between atoms
    that topology cannot tell apart (the hydrogens of a methyl group, the two oxygens of a
    nitro group) their geometry, ``sum_b Z_b / |r_a - r_b|``. So the image does not depend
    on the input's numbering, nor on its orientation; two atoms that tie on both are
    equivalent by symmetry and either order gives the same image."""
    from rdkit import Chem
    ranks = np.asarray(list(Chem.CanonicalRankAtoms(mol, breakTies=False)))
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=float)
    with np.errstate(divide="ignore"):
        pair = z[None, :] / distances
    np.fill_diagonal(pair, 0.0)                     # an atom's own 1/0
    potential = pair.sum(axis=1)
    return np.lexsort((-potential, ranks))      # last key first: ranks, then potential


def molecule_image(mol, size: int = MOLECULE_SIZE) -> GraphImage:
    """The graph image of an RDKit molecule (hydrogens as they are in ``mol``), at its 3D
    conformer; a molecule without one gets :func:`embed_conformer`'s."""
    from rdkit import Chem

    n = mol.GetNumAtoms()
    if n > size:
        raise DEQInputError(f"molecule with {n} atoms does not fit a {size}x{size} graph image")
    if n == 0:
        raise DEQInputError("molecule without atoms")
    geometry = "given"
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        mol = embed_conformer(mol)
        geometry = mol.GetProp("_conformer")
    r = np.asarray(mol.GetConformer().GetPositions(), dtype=float)
    d = np.linalg.norm(r[:, None, :] - r[None, :, :], axis=-1)
    order = _canonical_order(mol, d)                # position p holds atom order[p]
    position = np.empty(n, dtype=int)
    position[order] = np.arange(n)

    charge, charges = _partial_charges(mol)
    img = np.zeros((len(MOLECULE_CHANNELS), size, size), dtype=np.float32)
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()])
    chi = np.array([electronegativity(int(v)) for v in z])
    p = position
    img[2, p, p] = chi
    img[3, p, p] = z / ELEMENT_SCALE
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
    with np.errstate(divide="ignore"):
        img[5][np.ix_(p, p)] = np.where(d > 1e-6, 1.0 / d, 0.0)
    centred = r - r.mean(axis=0)
    mu = charge @ centred                           # e * Angstrom
    norm = float(np.linalg.norm(mu))
    if norm > 1e-9:
        img[6, p, p] = charge * (centred @ (mu / norm))
    nodes = [mol.GetAtomWithIdx(int(i)).GetSymbol() for i in order]
    return GraphImage(img, nodes, MOLECULE_CHANNELS,
                      info={"smiles": Chem.MolToSmiles(Chem.RemoveHs(mol)), "atoms": n,
                            "geometry": geometry, "charges": charges,
                            "charge_dipole_debye": norm * DEBYE_PER_E_A,
                            "outside_domain": outside_qm9(mol)})


def smiles_image(smiles: str, size: int = MOLECULE_SIZE) -> GraphImage:
    """A SMILES's image, at the conformer of :func:`embed_conformer` (what a new molecule
    gets: the DFT geometries of QM9 are for QM9's molecules only)."""
    return molecule_image(mol_from_smiles(smiles), size)


def xyz_image(elements, coordinates, size: int = MOLECULE_SIZE) -> GraphImage:
    """A molecule's image at the geometry given (QM9's B3LYP positions)."""
    return molecule_image(mol_from_xyz(elements, coordinates), size)


# -- periodic structures -------------------------------------------------------------
def structure_from_cif(text: str):
    """pymatgen ``Structure`` from CIF text; :class:`DEQInputError` if it cannot be read, or
    holds more than one structure, or a species that is not an element."""
    _require("pymatgen")
    import warnings

    from pymatgen.core import Structure
    if not isinstance(text, str) or "_cell_length_a" not in text:
        raise DEQInputError("not a CIF (no _cell_length_a)")
    if len(text) > MAX_CIF_BYTES:
        raise DEQInputError(f"CIF of {len(text):,} characters: over the {MAX_CIF_BYTES:,} "
                            f"this reads (the largest CoRE MOF's CIF has 0.6 MB)")
    _check_one_block(text)
    for tag, value in re.findall(r"^\s*(_cell_length_[abc]|_cell_angle_\w+)\s+(\S+)", text, re.M):
        number = re.match(r"[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?", value)   # "5.64(2)": 5.64
        low, high = (0, math.inf) if "length" in tag else (0, 180)
        if number is None or not low < float(number.group()) < high:
            raise DEQInputError(f"invalid cell: {tag} {value} (a length must be positive, an "
                                f"angle in (0, 180) degrees)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            structure = Structure.from_str(text, fmt="cif")
    except Exception as err:  # pymatgen raises ValueError, KeyError, IndexError, ...
        raise DEQInputError("unreadable CIF: " + (_why_unreadable(text, caught) or
                                                  f"{type(err).__name__}: {err}")) from None
    if len(structure) == 0:
        raise DEQInputError("CIF without atoms")
    _check_elements(structure)
    return structure


def _structure_blocks(text: str) -> list[str]:
    """The names of a CIF's data blocks that hold a structure (a cell), skipping
    ``;``-delimited text fields (where a line may begin with ``data_`` as prose) and
    blocks without a cell (a journal's ``data_global`` of authors and citations)."""
    blocks, name, in_text = [], None, False
    has_cell = {}
    for line in text.splitlines():
        if line.startswith(";"):
            in_text = not in_text
            continue
        if in_text:
            continue
        stripped = line.strip()
        if stripped.startswith("data_"):
            name = stripped.split()[0][len("data_"):]
            blocks.append(name)
            has_cell.setdefault(name, False)
        elif name is not None and stripped.startswith("_cell_length_a"):
            has_cell[name] = True
    return [b for b in blocks if has_cell.get(b)]


def _check_one_block(text: str) -> None:
    """pymatgen reads the first data block of a CIF and drops the others without a word:
    a CIF of several structures is refused, naming them, rather than half-read."""
    blocks = _structure_blocks(text)
    if len(blocks) > 1:
        names = ", ".join(f"data_{b}" for b in blocks[:3]) + (", ..." if len(blocks) > 3 else "")
        raise DEQInputError(f"{len(blocks)} structures in one CIF ({names}): give each its "
                            f"own file")


def _why_unreadable(text: str, caught) -> str:
    """What pymatgen's 'Invalid CIF file with no structures!' hides, from the cell's tags
    and the warnings it gave while it failed ('' when neither says)."""
    missing = [tag for tag in CELL_TAGS if not re.search(rf"^\s*{tag}(\s|$)", text, re.M)]
    if missing:
        return (f"no {', '.join(missing)} (a cell needs all of a, b, c, alpha, beta and "
                f"gamma)")
    for warning in caught:
        over = re.search(r"occupancies \(\[(.*?)\]\) sum to > 1", str(warning.message))
        if over:
            return (f"the occupancies of one site sum to {over.group(1)}, above 1 (two atoms "
                    f"on the same site?)")
    return ""


def _check_elements(structure) -> None:
    """A species pymatgen does not know becomes a placeholder without an atomic number
    (its ``Z`` is garbage, and RDKit's radius of it overflows): refused by name."""
    from pymatgen.core.periodic_table import DummySpecies

    unknown = sorted({sp.symbol for sp in structure.composition.elements
                      if isinstance(sp, DummySpecies)})
    if unknown:
        raise DEQInputError(f"unknown species {', '.join(unknown)}: not an element")


def read_cif(path) -> str:
    """The text of a CIF file, read only when it is a regular file within
    :data:`MAX_CIF_BYTES`: a folder or a FIFO is called what it is (opening a FIFO with no
    writer blocks for ever) and a 3 GB file is refused before it fills the memory."""
    from pathlib import Path

    path = Path(path)
    if problem := not_a_regular_file(path):
        raise DEQInputError(f"{path}: {problem}" if path.exists() else
                            f"no such CIF file: {path}")
    size = path.stat().st_size
    if size > MAX_CIF_BYTES:
        raise DEQInputError(f"{path}: a CIF of {size:,} bytes, over the {MAX_CIF_BYTES:,} "
                            f"this reads")
    return path.read_bytes().decode("utf-8", errors="replace")


def not_a_regular_file(path) -> str | None:
    """Why ``path`` is not a file to read (None when it is): what it is instead, found by
    ``stat`` alone, which never blocks as opening a FIFO does."""
    import os
    import stat

    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        return f"cannot read it ({err.strerror or err})"
    if stat.S_ISREG(mode):
        return None
    kinds = {stat.S_ISDIR: "a folder", stat.S_ISFIFO: "a FIFO (named pipe)",
             stat.S_ISSOCK: "a socket", stat.S_ISCHR: "a character device",
             stat.S_ISBLK: "a block device"}
    kind = next((name for test, name in kinds.items() if test(mode)), "not a regular file")
    return f"{kind}, not a file"


def structure_image(structure, size: int = PERIODIC_SIZE,
                    tolerance: float = BOND_TOLERANCE) -> GraphImage:
    """The species graph image of a periodic structure (see the module docstring)."""
    if not structure.is_ordered:
        raise DEQInputError("disordered structure (partial occupancies): order it first")
    if len(structure) > MAX_ATOMS:
        raise DEQInputError(f"structure with {len(structure):,} atoms: over the "
                            f"{MAX_ATOMS:,} a periodic image is drawn for")
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
    r_max = max(tolerance * 2 * float(radii.max()), SHELLS[-1][1])
    centers, neighbors, _, dist = structure.get_neighbor_list(r_max)
    near = (dist > 1e-8) & kept[centers] & kept[neighbors]   # other atoms, kept species
    bonded = near & (dist < tolerance * (radii[centers] + radii[neighbors]))
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
    img[3, diag, diag] = species / ELEMENT_SCALE
    count = np.array([np.sum(z_site == z) for z in species])
    img[4, diag, diag] = count / volume * 10.0
    pair = species_of_site[centers[near]] * k + species_of_site[neighbors[near]]
    shell = np.searchsorted([hi for _, hi in SHELLS], dist[near], side="right")
    in_shell = np.bincount(shell * k * k + pair, minlength=(len(SHELLS) + 1) * k * k)
    in_shell = in_shell.reshape(len(SHELLS) + 1, k, k)       # the last: beyond the shells
    first = len(PERIODIC_CHANNELS) - len(SHELLS)                  # the first shell's channel
    for c, (lo, hi) in enumerate(SHELLS):
        uniform = n_atoms / volume * 4.0 / 3.0 * math.pi * (hi ** 3 - lo ** 3)
        img[first + c, :k, :k] = in_shell[c] / (n_atoms * uniform)
    _check_storable(img, n_atoms, volume)
    from pymatgen.core import Element
    nodes = [Element.from_Z(int(z)).symbol for z in species]
    coordination = np.bincount(centers[bonded], minlength=n_atoms)
    return GraphImage(img, nodes, PERIODIC_CHANNELS, truncated=truncated,
                      info={"formula": structure.composition.reduced_formula,
                            "atoms": n_atoms, "volume": volume,
                            "mean_coordination": float(coordination.mean())})


def _check_storable(img: np.ndarray, n_atoms: int, volume: float) -> None:
    """Images are stored and solved in float16 (at most 65504): the radial channels, pair
    counts over a uniform gas's, grow with the volume per atom, and two atoms in a cell of
    1000 A overflow them to Inf, which the solve would report as its own NaN. Such a cell
    is named as the cause here, one input's error."""
    largest = float(np.abs(img).max())
    if not largest <= float(np.finfo(np.float16).max):
        raise DEQInputError(f"cell too large: {n_atoms} atoms in {volume:.4g} A^3 "
                            f"({volume / n_atoms:.4g} A^3 per atom): an "
                            f"entry of its image ({largest:.3g}) overflows the float16 "
                            f"images are stored in")


def cif_image(text: str, size: int = PERIODIC_SIZE) -> GraphImage:
    return structure_image(structure_from_cif(text), size)


# -- what a model has seen ------------------------------------------------------------
def node_atomic_numbers(images, channel: int | None = None) -> np.ndarray:
    """``[M, N]`` int: each node's atomic number in graph images ``[M, C, N, N]`` (or one
    ``[C, N, N]``, giving ``[1, N]``), read off the element channel's diagonal; 0 where
    there is no node. The one decoding of the element channel (the model's embeddings
    get the scale, :data:`ELEMENT_SCALE`, through their config)."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim == 3:
        images = images[None]
    k = MOLECULE_CHANNELS.index("element") if channel is None else channel  # both kinds
    diag = np.diagonal(images[:, k], axis1=1, axis2=2)
    return np.rint(diag * ELEMENT_SCALE).astype(np.int64)


def elements_in(images, channel: int | None = None) -> list[int]:
    """The atomic numbers present in graph images, sorted: the chemical domain a model
    trained on them has seen."""
    z = node_atomic_numbers(images, channel)
    return sorted(int(v) for v in np.unique(z[z > 0]))


def element_symbols(numbers) -> str:
    from rdkit import Chem
    table = Chem.GetPeriodicTable()
    return ", ".join(table.GetElementSymbol(int(z)) for z in numbers)


# -- looking at one ------------------------------------------------------------------
def graph_from_image(image, channels) -> GraphImage:
    """A stored image ``[C, N, N]`` as a :class:`GraphImage` whose nodes are named by
    element (decoded from the element channel), so a drawing of a cached image reads
    like one of a freshly built molecule or crystal; padding nodes are left out."""
    image = np.asarray(image)
    z = node_atomic_numbers(image, list(channels).index("element"))[0]
    used = int(np.count_nonzero(z))
    return GraphImage(image, [_symbol(int(v)) for v in z[:used]], tuple(channels))


def _symbol(z: int) -> str:
    from rdkit import Chem
    return Chem.GetPeriodicTable().GetElementSymbol(z)


#: panels per row of :func:`render_png`: 17 channels in one row were 6,000 pixels wide
PANELS_PER_ROW = 4


def render_png(graph: GraphImage, path, title: str | None = None) -> str:
    """Write a graph image as one readable PNG: a grid of panels, :data:`PANELS_PER_ROW`
    per row, one per channel, titled with what the channel holds and coloured on a bar
    in its unit, both axes naming the nodes by element. Returns the path."""
    from matplotlib.figure import Figure      # drawn by Agg at savefig, without pyplot

    n_channels = graph.image.shape[0]
    cols = min(PANELS_PER_ROW, n_channels)
    rows = -(-n_channels // cols)
    fig = Figure(figsize=(4.0 * cols, 3.7 * rows + (0.4 if title else 0)), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for c, ax in enumerate(axes):
        if c < n_channels:
            _draw_channel(fig, ax, graph, c)
        else:
            ax.set_axis_off()                 # the grid's empty corner
    if title:
        fig.suptitle(title)
    fig.savefig(path, dpi=100)
    return str(path)


def _draw_channel(fig, ax, graph: GraphImage, c: int) -> None:
    """One channel: signed values on a diverging map centred on 0 (so a sign reads at a
    glance), others from 0; the colour bar carries the unit."""
    n_used = max(len(graph.nodes), 1)
    data = graph.image[c, :n_used, :n_used]
    vmax = float(np.abs(data).max()) or 1.0
    signed = data.min() < 0
    im = ax.imshow(data, cmap="RdBu_r" if signed else "viridis",
                   vmin=-vmax if signed else 0, vmax=vmax)
    name = graph.channels[c]
    meanings = CHANNEL_MEANINGS.get(tuple(graph.channels))
    meaning, unit = meanings[c] if meanings else ("", "")
    ax.set_title(f"{c}: {name}" + (f"\n{meaning}" if meaning else ""), fontsize=9)
    if n_used <= 32:
        size = 7 if n_used <= 16 else 5.5
        ax.set_xticks(range(n_used), graph.nodes, fontsize=size, rotation=90)
        ax.set_yticks(range(n_used), graph.nodes, fontsize=size)
    bar = fig.colorbar(im, ax=ax, shrink=0.8)
    bar.set_label(unit, fontsize=8)
    bar.ax.tick_params(labelsize=7)
