"""The science tasks: Deep AndersoNN's three, and QM9's HOMO-LUMO gap, from real DFT data
available offline.

========  ===============================  ==========================================
task      source                           classes (defaults)
========  ===============================  ==========================================
polarity  QM9 (PyPI ``qm9pack``): B3LYP/   weakly / strongly polar: dipole <= / > the
          6-31G(2df,p) dipoles, 130,831    median of all of QM9 (2.475 D), so labels
          molecules                        do not depend on ``limit``
gap       QM9's HOMO-LUMO gaps (eV), the   small / large gap: <= / > QM9's median
          same molecules and images        (6.8 eV); mostly a regression target
mof-pore  CoRE MOF 2019-ASR (PyPI          largest cavity diameter (Zeo++) < 5 A,
          ``core-mof``): 12,020 CIFs       5-8 A, >= 8 A
crystals  Materials Project PBE band gaps  metal (gap = 0 exactly, as PBE reports
          (``shared/data/mp_crystals_      metals; the 141 entries with 0 < gap <
          bandgap.csv.gz``, or any CSV     0.01 eV are semiconductors), semiconductor
          with ``material_id, band_gap,    (0 < gap < 3 eV), insulator (>= 3 eV)
          cif``)
========  ===============================  ==========================================

A build picks ``limit`` records at random (by ``seed``) from the source, renders
their graph images (in parallel, with a progress bar), skips unusable inputs
with a count and the first reasons, splits what was built 80/10/10 into
train/validation/test and caches the result. The split is random (by the same
seed), or for molecules by Bemis-Murcko scaffold (``split_by="scaffold"``):
whole scaffold groups, largest first, fill train, then validation, so the test
molecules have ring systems the model never saw, the usual test of whether a
molecular model generalises beyond its training chemistry.
"""

from __future__ import annotations

import functools
import importlib.util
import math
import os
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deq_petsc.core.errors import DEQCacheError, DEQInputError
from deq_petsc.core.registry import Registry
from .cache import DatasetCache, cache_key, file_stamp, fingerprint
from .graph_image import (MOLECULE_CHANNELS, MOLECULE_SIZE, PERIODIC_CHANNELS, PERIODIC_SIZE,
                          cif_image, read_cif, smiles_image, xyz_image)
from .workers import map_in_workers

# by kind of input; molecules 2: drawn in 3D (MMFF94 charges, distance and dipole channels);
# periodic 2: four distance shells, 3: twelve (1 A apart from 2 to 12 A)
REPRESENTATION_VERSION = {"molecule": 2, "periodic": 3}
SPLITS = ("train", "val", "test")
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
SPLIT_KINDS = ("random", "scaffold")
#: the arrays of a built data set (a cache entry without one of them is rebuilt)
BUILD_ARRAYS = ("images", "labels", "targets", "ids", "split")


# -- sources -----------------------------------------------------------------------------
def _package_dir(name: str) -> Path:
    """A data package's folder without importing it (qm9pack's __init__ needs pkg_resources)."""
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None:
        raise ImportError(f"the data package {name!r} is not installed: pip install -e .[data]")
    return Path(spec.origin).parent


def qm9_files() -> list[Path]:
    return sorted((_package_dir("qm9pack") / "data").glob("qm9_part[0-9].csv"))


def core_mof_files() -> tuple[Path, Path]:
    data = _package_dir("CoRE_MOF") / "data"
    return data / "2019-ASR.csv", data / "2019-ASR.tar.xz"


def default_crystals_csv() -> Path | None:
    """``../shared/data/mp_crystals_bandgap.csv.gz`` beside the project, or $DEQ_PETSC_CRYSTALS_CSV."""
    env = os.environ.get("DEQ_PETSC_CRYSTALS_CSV")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "shared" / "data" / "mp_crystals_bandgap.csv.gz"
        if candidate.exists():
            return candidate
    return None


@dataclass
class Record:
    id: str
    payload: str          # SMILES, CIF text, or a path to a CIF file
    target: float         # the DFT number the label comes from
    geometry: str = ""    # molecules: the DFT positions the image is drawn at (QM9's)


# -- tasks -------------------------------------------------------------------------------
def _keeps_the_protocol(name: str, task) -> None:
    """What a registered task must be: a Task with a known kind and payload, its classes
    and target named, its source and labels implemented."""
    if not (isinstance(task, type) and issubclass(task, Task)):
        raise TypeError(f"task {name!r}: register a subclass of Task")
    if getattr(task, "name", None) != name:
        raise ValueError(f"task {name!r}: its name attribute must be the name it is "
                         f"registered under")
    if getattr(task, "kind", None) not in REPRESENTATION_VERSION or \
            getattr(task, "payload", None) not in PAYLOADS:
        raise ValueError(f"task {name!r}: kind must be one of {sorted(REPRESENTATION_VERSION)} "
                         f"and payload one of {sorted(PAYLOADS)}")
    if len(getattr(task, "classes", ())) < 2 or not getattr(task, "target_name", ""):
        raise ValueError(f"task {name!r}: needs two or more classes and a target_name")
    missing = [m for m in ("params", "records", "label") if getattr(task, m) is getattr(Task, m)]
    if missing:
        raise TypeError(f"task {name!r}: implement {', '.join(missing)}")


#: what a record's payload may be: SMILES, CIF text, or a CIF file's path
PAYLOADS = ("smiles", "cif", "cif_file")


class Task:
    """A graph-image task: the protocol a plug-in implements, then registers with
    ``@TASKS.register`` (one module; no other file names a task).

    A task says what its inputs are (``kind``: drawn as molecules or periodic structures,
    which fixes the image, the descriptors of the baseline and what ``predict`` takes:
    ``--smiles`` or ``--cif``; ``payload``: a record's input is SMILES, CIF text or a CIF
    file), where they come from (:meth:`records`, with :meth:`params`, everything the
    cache key needs) and what is predicted (:meth:`label` of a record's DFT ``target``,
    one of ``classes``; the target itself when regressed, named ``target_name``). The
    splits, rendering, cache, baseline and command line are the same for every task.
    """
    name: str
    kind: str             # "molecule" or "periodic"
    payload: str          # what a Record's payload is: "smiles", "cif" (text) or "cif_file"
    classes: tuple[str, ...]
    target_name: str
    #: what its samples are called in reports ("molecules")
    samples: str = "samples"
    #: epochs per solver set of ``deq-petsc demo --task NAME`` when --epochs is not given
    demo_epochs: int = 3

    @property
    def size(self) -> int:
        return MOLECULE_SIZE if self.kind == "molecule" else PERIODIC_SIZE

    @property
    def channels(self) -> tuple[str, ...]:
        return MOLECULE_CHANNELS if self.kind == "molecule" else PERIODIC_CHANNELS

    def params(self) -> dict:
        raise NotImplementedError

    def records(self, cache_root: Path) -> list[Record]:
        raise NotImplementedError

    def label(self, target: float) -> int:
        raise NotImplementedError


#: the graph-image tasks, by name: a module adds its own with ``@TASKS.register``, an
#: installed package through the entry-point group ``deq_petsc.tasks``
TASKS: Registry[type[Task]] = Registry("task", check=_keeps_the_protocol,
                                       group="deq_petsc.tasks")

#: QM9 gives orbital energies in Hartree
EV_PER_HARTREE = 27.211386245988
#: the QM9 columns every QM9 task reads (one parse, shared by the tasks)
QM9_COLUMNS = ("Index", "SMILES", "Dipole_debye", "HOMO_LUMO_gap_au", "Elements", "XYZ_Ang")


@TASKS.register
class PolarityTask(Task):
    name, kind, target_name = "polarity", "molecule", "dipole (D)"
    payload, samples = "smiles", "molecules"
    classes = ("weakly polar", "strongly polar")
    #: the QM9 column of the target, its unit's factor, and the threshold's key in params
    column, scale, threshold_key = "Dipole_debye", 1.0, "threshold_debye"

    def __init__(self, threshold: float | None = None):
        self.threshold = threshold

    def _targets(self) -> np.ndarray:
        columns = _qm9_columns(_stamped(qm9_files()), QM9_COLUMNS)
        return np.asarray(columns[QM9_COLUMNS.index(self.column)], dtype=float) * self.scale

    def params(self):
        if self.threshold is None:        # QM9's median: labels that do not depend on limit
            self.threshold = float(np.median(self._targets()))
        return {self.threshold_key: self.threshold,
                "sources": [fingerprint(f) for f in qm9_files()]}

    def records(self, cache_root):
        self.params()
        index, smiles, _, _, elements, xyz = _qm9_columns(_stamped(qm9_files()), QM9_COLUMNS)
        return [Record(f"qm9-{i}", s, float(t), f"{e}\n{x}")
                for i, s, t, e, x in zip(index, smiles, self._targets(), elements, xyz)]

    def label(self, target):
        return int(target > self.threshold)


@TASKS.register
class GapTask(PolarityTask):
    """QM9's HOMO-LUMO gap: a smooth electronic property of the same molecules, drawn the
    same way (QM9's DFT positions), mostly to be regressed (``--objective regress``): the
    second of PETScML's regression studies beside the dipole. Its two classes split at
    QM9's median gap, as polarity's do at the median dipole."""

    name, target_name = "gap", "HOMO-LUMO gap (eV)"
    classes = ("small gap", "large gap")
    column, scale, threshold_key = "HOMO_LUMO_gap_au", EV_PER_HARTREE, "threshold_ev"


def _stamped(files: list[Path]) -> tuple:
    """The files' stamps (path first) as a hashable key (it changes when a file does)."""
    return tuple(file_stamp(f) for f in files)


@functools.lru_cache(maxsize=2)
def _qm9_columns(stamped: tuple, columns: tuple[str, ...]) -> tuple[list, ...]:
    """QM9's ``columns`` as python lists, read once per process (a test session or a
    notebook loads the task many times; the table is 134k rows, ~1 s to parse)."""
    import pandas as pd
    if not stamped:
        raise ImportError("qm9pack ships no qm9_part*.csv files")
    df = pd.concat([pd.read_csv(path, usecols=list(columns)) for path, *_ in stamped],
                   ignore_index=True)
    return tuple(df[c].tolist() for c in columns)


@TASKS.register
class MofPoreTask(Task):
    name, kind, target_name = "mof-pore", "periodic", "LCD (A)"
    payload, samples = "cif_file", "MOFs"
    # polarity's 32 x 32 images take 20-45 s an epoch on 2 cores, the periodic tasks'
    # 16 x 16 ones 5-15 s, and 3 epochs left the MOF models barely trained (docs/solvers.md)
    demo_epochs = 12
    classes = ("LCD < 5 A", "5 <= LCD < 8 A", "LCD >= 8 A")

    def __init__(self, edges=(5.0, 8.0)):
        self.edges = tuple(float(e) for e in edges)

    def params(self):
        csv, archive = core_mof_files()
        return {"edges": self.edges, "sources": [fingerprint(csv), fingerprint(archive)]}

    def _extracted(self, cache_root: Path) -> Path:
        """The archive's CIFs, extracted once (about 4 s, 266 MB) into the cache."""
        _, archive = core_mof_files()
        target = cache_root / "sources" / "core-mof-2019-ASR"
        if (target / ".complete").exists():
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".extract.", dir=target.parent))
        with tarfile.open(archive, "r:xz") as tar:
            members = [m for m in tar.getmembers() if m.isfile() and m.name.endswith(".cif")]
            for m in members:
                m.name = os.path.basename(m.name)   # flat, and nothing outside tmp
            tar.extractall(tmp, members=members, filter="data")
        (tmp / ".complete").write_text(str(len(members)))
        try:
            os.rename(tmp, target)       # atomic; fails if another process got there first
        except OSError:
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
            if not (target / ".complete").exists():
                raise
        return target

    def records(self, cache_root):
        import pandas as pd
        csv, _ = core_mof_files()
        df = pd.read_csv(csv, usecols=["filename", "LCD"])
        folder = self._extracted(cache_root)
        return [Record(str(name), str(folder / f"{name}.cif"), float(lcd))
                for name, lcd in zip(df["filename"], df["LCD"])]

    def label(self, target):
        return int(np.searchsorted(self.edges, target, side="right"))


@TASKS.register
class CrystalsTask(Task):
    name, kind, target_name = "crystals", "periodic", "PBE band gap (eV)"
    payload, samples, demo_epochs = "cif", "crystals", 12
    classes = ("metal", "semiconductor", "insulator")

    def __init__(self, csv=None, metal_cutoff: float = 0.0, insulator_gap: float = 3.0):
        self.csv = Path(csv) if csv is not None else default_crystals_csv()
        if self.csv is None:
            raise FileNotFoundError("no crystal data set: pass csv=... (columns material_id, "
                                    "band_gap, cif) or set DEQ_PETSC_CRYSTALS_CSV")
        self.metal_cutoff = metal_cutoff
        self.insulator_gap = insulator_gap

    def params(self):
        return {"metal_cutoff_eV": self.metal_cutoff, "insulator_gap_eV": self.insulator_gap,
                "sources": [fingerprint(self.csv)]}

    def records(self, cache_root):
        import pandas as pd
        try:
            df = pd.read_csv(self.csv)
        except (ValueError, UnicodeDecodeError, pd.errors.ParserError, OSError) as err:
            raise DEQInputError(f"{self.csv}: not a readable CSV ({type(err).__name__}: "
                                f"{str(err).splitlines()[0] if str(err) else ''})") from None
        missing = {"material_id", "band_gap", "cif"} - set(df.columns)
        if missing:
            raise DEQInputError(f"{self.csv}: missing columns {sorted(missing)} (need "
                                f"material_id, band_gap, cif)")
        # a gap that is not a number is a missing value: skipped and counted by the build
        gaps = pd.to_numeric(df["band_gap"], errors="coerce")
        return [Record(str(m), c if isinstance(c, str) else "", float(g))
                for m, c, g in zip(df["material_id"], df["cif"], gaps)]

    def label(self, target):
        if target <= self.metal_cutoff:
            return 0
        return 1 if target < self.insulator_gap else 2


def make_task(name: str, **options) -> Task:
    """The registered task ``name`` with its options (an unknown name: a ValueError
    naming the known ones)."""
    return TASKS[name](**options)


# -- building one image (runs in worker processes) ---------------------------------------
def stored_image(graph) -> np.ndarray:
    """A graph's image as data sets store it (float16), checked finite after the cast (an
    entry beyond 65504 becomes Inf there): what the model sees in training, in a batch and
    for one input alone."""
    stored = graph.image.astype(np.float16)
    if not np.all(np.isfinite(stored)):
        raise DEQInputError("non-finite entries in the graph image (NaN, or beyond the "
                            "range of the float16 images are stored in)")
    return stored


def qm9_geometry(text: str):
    """QM9's ``Elements`` and ``XYZ_Ang`` columns (one line each, as a :class:`Record`'s
    ``geometry`` holds them) as element symbols and an ``[n, 3]`` array in Angstrom."""
    elements_text, _, xyz_text = text.partition("\n")
    elements = [e.strip().strip("'\"") for e in elements_text.strip("[] ").split(",")]
    try:   # "[[0.5995,0.,1.],...]": numbers as Python writes them, not always JSON
        xyz = np.array(xyz_text.replace("[", " ").replace("]", " ").split(","), dtype=float)
    except ValueError:
        raise DEQInputError("unreadable atom positions") from None
    if xyz.size != 3 * len(elements):
        raise DEQInputError(f"{len(elements)} elements for {xyz.size} coordinates")
    return elements, xyz.reshape(-1, 3)


def render(payload_kind: str, payload: str, size: int, geometry: str = ""):
    """``(image float16, None)`` or ``(None, reason)``: bad inputs never raise out of here.
    A molecule with a ``geometry`` (QM9's DFT positions) is drawn at it; one without at an
    ETKDG + MMFF94 conformer of its SMILES."""
    image, reason, _ = render_with_info(payload_kind, payload, size, geometry)
    return image, reason


def render_with_info(payload_kind: str, payload: str, size: int, geometry: str = ""):
    """:func:`render`'s answer and the graph's ``info`` (``{}`` for a bad input): what
    ``predict`` reports beside an image, such as a molecule outside QM9's chemistry."""
    try:
        if payload_kind == "smiles" and geometry:
            graph = xyz_image(*qm9_geometry(geometry), size)
        elif payload_kind == "smiles":
            graph = smiles_image(payload, size)
        elif payload_kind == "cif":
            graph = cif_image(payload, size)
        else:
            graph = cif_image(read_cif(payload), size)
        return stored_image(graph), None, graph.info
    except DEQInputError as err:
        return None, str(err), {}
    except Exception as err:  # a library failing deep inside on odd input: report, go on
        return None, f"{type(err).__name__}: {err}", {}


# -- the data set ------------------------------------------------------------------------
@dataclass
class TaskData:
    """Images, labels and the split of one task's build."""

    task: str
    classes: tuple[str, ...]
    channels: tuple[str, ...]
    images: "torch.Tensor"          # noqa: F821  (float32, [M, C, N, N])
    labels: "torch.Tensor"          # noqa: F821  (int64, [M])
    targets: np.ndarray
    ids: list[str]
    split_of: np.ndarray            # 0 train, 1 val, 2 test
    params: dict
    attempted: int
    skipped: list[tuple[str, str]] = field(default_factory=list)
    from_cache: bool = False
    cache_path: str = ""
    task_options: dict = field(default_factory=dict)   # make_task's (e.g. csv=): not keyed

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split_of == SPLITS.index(split))

    def split(self, split: str):
        idx = self.indices(split)
        return self.images[idx], self.labels[idx]

    def class_balance(self) -> dict:
        out = {}
        for s in SPLITS:
            counts = np.bincount(self.labels[self.indices(s)].numpy(), minlength=len(self.classes))
            out[s] = {c: int(k) for c, k in zip(self.classes, counts)}
        return out

    def summary(self) -> str:
        lines = [f"task {self.task}: {len(self.ids)} graph images {tuple(self.images.shape[1:])} "
                 f"({'cache' if self.from_cache else 'built'}: {self.cache_path})"
                 + (", split by Bemis-Murcko scaffold" if self.params.get("split_by") ==
                    "scaffold" else ""),
                 f"  channels: {', '.join(self.channels)}"]
        for s, counts in self.class_balance().items():
            total = sum(counts.values())
            parts = ", ".join(f"{c} {k} ({100 * k / total:.0f}%)" if total else f"{c} 0"
                              for c, k in counts.items())
            lines.append(f"  {s:5s} {total:6d}: {parts}")
        if self.skipped:
            lines.append(f"  skipped {len(self.skipped)} of {self.attempted} inputs; first: "
                         + "; ".join(f"{i}: {r}" for i, r in self.skipped[:3]))
        else:
            lines.append(f"  skipped 0 of {self.attempted} inputs")
        return "\n".join(lines)


def load_task(name: str, limit: int | None = None, seed: int = 0, cache_dir=None,
              n_jobs: int | None = None, progress: bool = True, rebuild: bool = False,
              split_by: str = "random", **task_options) -> TaskData:
    """Build (or load from the cache) the graph-image data set of a task (or, for a
    PDE task of :mod:`.pde`, its solutions, collectively over ``PETSC_COMM_WORLD``)."""
    import torch

    from .pde import FIELD_TASKS
    if name in FIELD_TASKS:
        return FIELD_TASKS[name](name, limit=limit, seed=seed, cache_dir=cache_dir,
                                 progress=progress, rebuild=rebuild, split_by=split_by)
    task = make_task(name, **task_options)
    if split_by not in SPLIT_KINDS:
        raise DEQInputError(f"split_by must be one of {SPLIT_KINDS}, got {split_by!r}")
    if split_by == "scaffold" and task.kind != "molecule":
        raise DEQInputError(f"a scaffold split needs molecules; {name} holds periodic "
                            f"structures (use the random split)")
    cache = DatasetCache(cache_dir, required=("params", "attempted", "skipped"),
                         arrays=BUILD_ARRAYS)
    params = {"task": name, "representation": REPRESENTATION_VERSION[task.kind], "size": task.size,
              "limit": limit, "seed": seed, **task.params()}
    if split_by != "random":                 # the random split keeps its old cache keys
        params["split_by"] = split_by
    key = cache_key(params)
    entry = None
    if not rebuild:
        try:
            entry = cache.load(name, key)
        except DEQCacheError as err:
            print(f"deq_petsc.science.data: {err}; rebuilding", file=sys.stderr)
            cache.discard(name, key)
    if entry is None and not rebuild:
        entry = _reseeded(task, cache, params)
        if entry is not None:
            entry[1]["params"] = params
            cache.store_or_warn(name, key, *entry)
    if entry is None:
        arrays, meta = _build(task, limit, seed, cache.root, n_jobs, progress, split_by)
        meta["params"] = params
        path = cache.store_or_warn(name, key, arrays, meta)
        from_cache = False
    else:
        arrays, meta = entry
        path = cache.path(name, key)
        from_cache = True
    return TaskData(task=name, classes=task.classes, channels=task.channels,
                    images=torch.from_numpy(arrays["images"].astype(np.float32)),
                    labels=torch.from_numpy(arrays["labels"].astype(np.int64)),
                    targets=arrays["targets"], ids=[str(i) for i in arrays["ids"]],
                    split_of=arrays["split"], params=meta["params"],
                    attempted=meta["attempted"],
                    skipped=[tuple(s) for s in meta["skipped"]], from_cache=from_cache,
                    cache_path=str(path), task_options=dict(task_options))


def random_split(m: int) -> np.ndarray:
    """0 train, 1 val, 2 test for ``m`` samples already in random order: 80/10/10."""
    n_train = int(round(SPLIT_FRACTIONS[0] * m))
    n_val = int(round(SPLIT_FRACTIONS[1] * m))
    split = np.full(m, 2, dtype=np.int8)
    split[:n_train] = 0
    split[n_train:n_train + n_val] = 1
    return split


def murcko_scaffold(smiles: str) -> str:
    """The Bemis-Murcko scaffold (ring systems and their linkers) as canonical SMILES;
    ``""`` for an acyclic molecule."""
    from rdkit import Chem
    from rdkit.Chem.Scaffolds import MurckoScaffold

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return smiles                 # cannot happen for built images; keeps it a group
    return Chem.MolToSmiles(MurckoScaffold.GetScaffoldForMol(mol))


def scaffold_split(smiles: list[str]) -> np.ndarray:
    """Whole scaffold groups to train, largest first, until the next would pass 80%;
    then to validation until 90%; the rest (the rarest scaffolds) to test."""
    groups: dict[str, list[int]] = {}
    for k, s in enumerate(smiles):
        groups.setdefault(murcko_scaffold(s), []).append(k)
    ordered = sorted(groups.values(), key=lambda g: (-len(g), g[0]))
    m = len(smiles)
    train_cut, val_cut = SPLIT_FRACTIONS[0] * m, (SPLIT_FRACTIONS[0] + SPLIT_FRACTIONS[1]) * m
    split = np.full(m, 2, dtype=np.int8)
    n_train = n_val = 0
    for group in ordered:
        if n_train + len(group) <= train_cut:
            split[group] = 0
            n_train += len(group)
        elif n_train + n_val + len(group) <= val_cut:
            split[group] = 1
            n_val += len(group)
    return split


#: the seed whose full build another seed's is rearranged from (the default's)
RESEED_FROM = 0


def reseed_source(params: dict) -> dict | None:
    """The parameters of the cached build that the build of ``params`` is a rearrangement
    of (seed :data:`RESEED_FROM`, all else equal), or ``None``: only a full build
    (``limit`` None) with a random split and another seed is one."""
    if params.get("limit") is not None or params.get("split_by", "random") != "random" \
            or params.get("seed") == RESEED_FROM:
        return None
    return {**params, "seed": RESEED_FROM}


def _record_order(n_records: int, seed) -> np.ndarray:
    """The order in which a build with ``seed`` takes the source's records."""
    return np.random.default_rng(seed).permutation(n_records)


def full_build_ids(records, seed) -> list[str]:
    """The ids of all ``records`` in the order a full build with ``seed`` takes them
    (skipped ones included)."""
    return [str(records[k].id) for k in _record_order(len(records), seed)]


def rows_for(ids, wanted) -> np.ndarray | None:
    """Row indices that put arrays in ``ids`` order into ``wanted`` order; ``None`` unless
    ``wanted`` is ``ids`` rearranged."""
    position = {str(i): k for k, i in enumerate(ids)}
    if len(position) != len(ids) or len(wanted) != len(ids) or \
            any(i not in position for i in wanted):
        return None
    return np.array([position[str(i)] for i in wanted], dtype=np.int64)


def _reseeded(task: Task, cache: DatasetCache, params: dict):
    """The build of ``params``, rearranged from the cached build of :func:`reseed_source`
    (its full build with seed :data:`RESEED_FROM`); ``None`` when there is none, or it no
    longer matches the source.

    With every record used, a seed decides only the records' order, hence the random
    split: the images are the same. Without this, ``--seed 1`` on all of CoRE MOF would
    render its 12,020 frameworks again (21 minutes on 2 cores) to study the spread of a
    result over splits. Subsets (``limit``) and scaffold splits are built as before."""
    source = reseed_source(params)
    if source is None:
        return None
    try:
        entry = cache.load(task.name, cache_key(source))
    except DEQCacheError:
        return None                     # the source build rebuilds itself when asked for
    if entry is None:
        return None
    arrays, meta = entry
    records = task.records(cache.root)
    try:                                # meta.json carries no digest: a bad one is no source
        reasons = {str(i): str(r) for i, r in meta["skipped"]}
    except (TypeError, ValueError):
        return None
    wanted = full_build_ids(records, params["seed"])
    take = rows_for(arrays["ids"], [i for i in wanted if i not in reasons])
    if take is None or len(wanted) != len(take) + len(reasons):
        return None                     # the source changed since that build: build anew
    out = {k: arrays[k][take] for k in ("images", "labels", "targets", "ids")}
    out["split"] = random_split(len(take))
    meta = {k: v for k, v in meta.items() if k not in ("digests", "params")}
    meta["skipped"] = [(i, reasons[i]) for i in wanted if i in reasons]
    return out, meta


def _build(task: Task, limit, seed, cache_root: Path, n_jobs, progress, split_by="random"):
    records = task.records(cache_root)
    order = _record_order(len(records), seed)
    if limit is not None:
        order = order[:limit]
    chosen = [records[i] for i in order]
    # a target that is missing, not a number or negative (dipoles, cavity diameters and
    # band gaps are magnitudes) has no label: skipped with its reason, never mislabelled
    bad_target = {k: f"{task.target_name} {r.target!r} is not a non-negative number"
                  for k, r in enumerate(chosen) if not (math.isfinite(r.target) and r.target >= 0)}
    results = map_in_workers(render, [(task.payload, r.payload, task.size, r.geometry)
                                      for k, r in enumerate(chosen) if k not in bad_target],
                             desc=f"{task.name} graph images", n_jobs=n_jobs,
                             progress=progress, unit="img")
    rendered = iter(results)
    results = [(None, bad_target[k]) if k in bad_target else next(rendered)
               for k in range(len(chosen))]

    images, labels, targets, ids, payloads, skipped = [], [], [], [], [], []
    for record, (image, reason) in zip(chosen, results):
        if image is None:
            skipped.append((record.id, reason))
            continue
        images.append(image)
        labels.append(task.label(record.target))
        targets.append(record.target)
        ids.append(record.id)
        payloads.append(record.payload)
    if skipped:
        print(f"deq_petsc.science.data: skipped {len(skipped)} of {len(chosen)} {task.name} inputs; "
              f"first reasons: " + "; ".join(f"{i}: {r}" for i, r in skipped[:3]),
              file=sys.stderr)
    if not images:
        raise DEQInputError(f"no usable inputs for {task.name} among {len(chosen)}")
    split = scaffold_split(payloads) if split_by == "scaffold" else random_split(len(images))
    arrays = {"images": np.stack(images), "labels": np.asarray(labels, dtype=np.int64),
              "targets": np.asarray(targets, dtype=np.float64),
              "ids": np.asarray(ids, dtype=str), "split": split}
    meta = {"attempted": len(chosen), "skipped": skipped, "classes": list(task.classes),
            "channels": list(task.channels)}
    return arrays, meta


