"""Running the CLI and MPI scripts in subprocesses, as a user would."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, timeout=300, env=None):
    exe = cli_path()
    cmd = [exe] if exe else [sys.executable, "-m", "deq_petsc.cli"]
    return subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def mpiexec(n, *args, timeout=300, python=True):
    """``mpiexec -n N [python] args...`` from the project root, one thread per rank."""
    exe = shutil.which("mpiexec", path=str(BIN)) or shutil.which("mpiexec")
    if exe is None:
        raise RuntimeError("mpiexec not found: run ci/setup-env.sh")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [exe, "-n", str(n)] + ([sys.executable] if python else []) + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT)


def cli_path():
    return shutil.which("deq-petsc", path=str(BIN)) or shutil.which("deq-petsc")


def synthetic(n=40, channels=2, size=6, seed=0):
    """A small task data set whose label and target depend on the image (something to fit)."""
    import numpy as np
    import torch

    from deq_petsc.science.data.tasks import TaskData

    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, channels, size, size, generator=g)
    target = (images[:, 0, :3].mean((1, 2)) - images[:, 1, 3:].mean((1, 2))).double().numpy()
    labels = torch.as_tensor(target > np.median(target), dtype=torch.int64)
    split = np.zeros(n, dtype=np.int8)
    split[int(0.8 * n):int(0.9 * n)] = 1
    split[int(0.9 * n):] = 2
    return TaskData(task="polarity", classes=("low", "high"), channels=("a", "b"), images=images,
                    labels=labels, targets=target, ids=[str(i) for i in range(n)],
                    split_of=split, params={}, attempted=n)


#: Solves tight enough that distributed and serial runs agree to rounding (MPI scripts).
TIGHT_SOLVER = {"snes_rtol": 1e-12, "snes_atol": 1e-14, "snes_max_it": 300}
TIGHT_ADJOINT = {"ksp_rtol": 1e-12, "ksp_atol": 1e-15, "ksp_max_it": 300}


def shared_tempdir(mpi):
    """One temporary folder for all ranks (rank 0 makes it), as a Path."""
    import tempfile
    return Path(mpi.bcast(tempfile.mkdtemp() if mpi.Get_rank() == 0 else None, root=0))


def _petsc_scalar_is_double() -> bool:
    import torch

    from deq_petsc.core.interop import petsc_torch_dtype
    return petsc_torch_dtype() == torch.float64


#: Tests written for PETSc's default double scalars (tolerances below float32's
#: epsilon, float64 zero-copy, gradients against finite differences). In an
#: environment built with ``PETSC_CONFIGURE_OPTIONS=--with-precision=single`` they
#: are skipped, and the rest of the suite checks that configuration.
double_scalars = pytest.mark.skipif(
    not _petsc_scalar_is_double(),
    reason="needs PETSc's double-precision scalars (this build is single precision)")


def rock_salts_csv(path, n=10):
    """A crystals CSV (``material_id, band_gap, cif``) of ``n`` rock salts with lattice
    constants 5.0 + 0.1 k and gaps k mod 4; row 3 is not a CIF, row 8's gap is missing:
    a full build of it renders in seconds and skips two rows with their reasons."""
    import pandas as pd
    from pymatgen.core import Lattice, Structure
    fcc = [[0, 0, 0], [0, 0.5, 0.5], [0.5, 0, 0.5], [0.5, 0.5, 0]]
    cl = [[(x + 0.5) % 1 for x in site] for site in fcc]
    rows = [(f"x-{k}", float(k % 4), Structure(       # the conventional cell, without the
        Lattice.cubic(5.0 + 0.1 * k), ["Na"] * 4 + ["Cl"] * 4,    # symmetry search
        fcc + cl).to(fmt="cif")) for k in range(n)]
    rows[3] = ("x-3", 1.0, "no cif at all")
    rows[8] = ("x-8", float("nan"), rows[8][2])
    pd.DataFrame(rows, columns=["material_id", "band_gap", "cif"]).to_csv(path, index=False)
    return path


def synthetic_build(task, limit=None, seed=0, split_by="random", **_):
    """A stand-in for ``deq_petsc.cli.commands._load_data`` (monkeypatch it): ``limit`` of a
    40-sample synthetic source in ``seed``'s order, split 80/10/10 (``scaffold``: in the
    reverse order), so another --limit, --seed or --split-by draws another split of the
    same ids, as the real builds do, in milliseconds."""
    import dataclasses

    import numpy as np

    from deq_petsc.science.data.tasks import random_split

    full = synthetic(40)
    order = np.random.default_rng(seed).permutation(40)[:limit or 40]
    if split_by == "scaffold":
        order = order[::-1].copy()
    return dataclasses.replace(full, images=full.images[order], labels=full.labels[order],
                               targets=full.targets[order], ids=[full.ids[i] for i in order],
                               split_of=random_split(len(order)), attempted=len(order))


def cli_in_process(capfd, *argv):
    """``deq-petsc ARGV`` in this process: its exit status and everything it printed
    (PETSc prints through C's stdout, hence capfd)."""
    import signal
    import warnings

    from deq_petsc.cli.main import main

    # main() sets up a process: kernel variables (too late to choose kernels here, so
    # later records and subprocesses would inherit a claim), a warnings filter, signal
    # handlers. The test process gets back what it had.
    environ = dict(os.environ)
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP,
                                                signal.SIGPIPE)}
    with warnings.catch_warnings():
        try:
            code = main([str(a) for a in argv])
        except SystemExit as exit_:
            code = exit_.code
        finally:
            os.environ.clear()
            os.environ.update(environ)
            for sig, handler in handlers.items():
                signal.signal(sig, handler)
    out, err = capfd.readouterr()
    return code, out + err


def final_line(text: str) -> str:
    return text.strip().splitlines()[-1] if text.strip() else ""


#: rock salt as a P1 CIF of two sites: what the CIF tables vary line by line
NACL_CIF = """data_NaCl
_cell_length_a 5.64
_cell_length_b 5.64
_cell_length_c 5.64
_cell_angle_alpha 90
_cell_angle_beta 90
_cell_angle_gamma 90
_symmetry_space_group_name_H-M 'P 1'
loop_
_atom_site_label
_atom_site_type_symbol
_atom_site_fract_x
_atom_site_fract_y
_atom_site_fract_z
_atom_site_occupancy
Na1 Na 0 0 0 1
Cl1 Cl 0.5 0.5 0.5 1
"""
