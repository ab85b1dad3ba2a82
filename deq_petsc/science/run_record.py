"""What a run was: the PETSc options in force, the code, the machine and the settings.

The same seed trains a different model on another CPU or BLAS kernel, and a
solver chosen by options leaves no trace in the numbers it produced; a result
can only be repeated, or its difference from another explained, if it carries
all of this. :func:`run_record` gathers it as plain data (JSON-able, and
loadable from a checkpoint with ``weights_only=True``); the trainer writes it
into ``checkpoint.pt``, ``report.json`` and ``run.json``, the demo into
``summary.json``, ``evaluate --out`` into its report, and ``deq-petsc
--version`` prints its software part.

Nothing personal is recorded: no host or user name, and of the environment only
the variables that change what the libraries compute (threads, kernels, PETSc's
own options).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import torch
from petsc4py import PETSc

from deq_petsc.core.petsc_options import changes_no_number

#: Environment variables that change the numbers or the speed of a run (thread counts,
#: the CPU kernels of OpenBLAS, oneDNN and ATen, PETSc's own options and build).
ENVIRONMENT = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
               "OPENBLAS_CORETYPE", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA",
               "ATEN_CPU_CAPABILITY", "MKL_CBWR", "PETSC_OPTIONS", "PETSC_DIR", "PETSC_ARCH",
               "CUDA_VISIBLE_DEVICES", "DEQ_PETSC_MALLOC", "DEQ_PETSC_KERNELS")

#: Option families that choose a run's solvers (under the run's prefix): what a resume
#: restores. ``npc_`` and ``tangent_`` are the nonlinear preconditioner and the tangent
#: solve of Gauss-Newton products.
SOLVER_FAMILIES = ("snes_", "ksp_", "pc_", "npc_", "adjoint_", "tangent_", "tao_", "deq_",
                   "train_")


def run_record(settings: dict | None = None, prefix: str = "", comm=None) -> dict:
    """The record of a run in this process, as plain data.

    ``settings``: the run's own settings (a ``TrainConfig`` as a dict, the demo's
    config, a command's arguments); ``prefix``: the options prefix the run's
    solvers read (its solver options are ``petsc_options`` entries starting with it).
    """
    return {"petsc_options": petsc_options(),
            "prefix": prefix,
            "command": list(sys.argv),
            "code": code(),
            "software": software(),
            "machine": machine(comm),
            "settings": settings}


def petsc_options() -> dict:
    """The options database as ``-options_view`` prints it: every entry (the command
    line, ``-options_file``, ``PETSC_OPTIONS`` and program values in force now), name
    without the dash -> value (None for a flag)."""
    return dict(sorted(PETSc.Options().getAll().items()))


def options_text(options: dict, prefix: str = "") -> str:
    """``{"snes_type": "anderson", "snes_monitor": None}`` -> ``-snes_type anderson
    -snes_monitor`` (each name under ``prefix``): what a user would type."""
    return " ".join(f"-{prefix}{name}" + ("" if value is None else f" {value}")
                    for name, value in options.items())


def solver_options(options: dict, prefix: str = "") -> dict:
    """The entries of ``options`` (a record's ``petsc_options``) that choose the solvers
    of a run under ``prefix``, without the prefix: ``-<prefix>snes_*``, ``ksp_*``,
    ``adjoint_*``, ``tao_*``, ``deq_*``, ``train_*`` (see :data:`SOLVER_FAMILIES`), but
    not monitors or viewers."""
    chosen = {}
    for name, value in options.items():
        if not name.startswith(prefix):
            continue
        rest = name[len(prefix):]
        if rest.startswith(SOLVER_FAMILIES) and \
                not changes_no_number(rest):
            chosen[rest] = value
    return chosen


def snes_settings(snes) -> dict:
    """A SNES's type and tolerances read back from the object: what the options that
    reached it made of it (a typo'd or misplaced option leaves the defaults here)."""
    from deq_petsc.core.lean import snes_method
    rtol, atol, stol, max_it = snes.getTolerances()
    return {"snes_type": snes.getType(), "method": snes_method(snes), "rtol": rtol,
            "atol": atol, "stol": stol, "max_it": max_it}


@lru_cache(maxsize=1)
def code() -> dict:
    """deq_petsc's version and, when it runs from a git checkout, the commit and whether
    the working tree differs from it (a commit alone does not say what ran then)."""
    from deq_petsc import __version__

    root = Path(__file__).resolve().parents[2]      # deq_petsc/science/run_record.py
    commit = _git(root, "rev-parse", "HEAD")
    status = _git(root, "status", "--porcelain", "--untracked-files=no") if commit else None
    return {"version": __version__, "commit": commit,
            "modified": None if status is None else bool(status)}


def _git(root: Path, *args: str) -> str | None:
    """``git -C root args`` (stripped output), or None: not a checkout of its own (an
    installed package inside someone else's repository is not), no git, or too slow."""
    if not (root / ".git").exists():
        return None
    try:
        done = subprocess.run(["git", "-C", str(root), *args], capture_output=True,
                              text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def software() -> dict:
    """The versions and builds that compute a run's numbers (``--version`` prints them)."""
    import numpy
    import petsc4py

    from deq_petsc.process import allocator, kernels
    from deq_petsc.core.devices import describe
    devices = describe()
    return {"python": platform.python_version(),
            "torch": str(torch.__version__),      # a str subclass a checkpoint refuses
            "torch_cuda": torch.version.cuda,
            "torch_cpu_capability": _cpu_capability(),
            "numpy": numpy.__version__,
            "petsc": ".".join(map(str, PETSc.Sys.getVersion())),
            "petsc4py": petsc4py.__version__,
            "petsc_scalar": devices["petsc_scalar"],
            "petsc_device_memory": devices["petsc_device_memory"],
            "mpi4py": _version_of("mpi4py"),
            "cuda_devices": devices["cuda_devices"],
            "malloc": allocator.status(),
            "kernels": kernels.describe()}


def _cpu_capability() -> str | None:
    """The CPU kernels ATen dispatches to (avx2, avx512, ...): the same seed can round
    differently under another."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except AttributeError:                       # torch before 2.1
        return None


def _version_of(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def machine(comm=None) -> dict:
    """The CPU, its cores, the OS, the MPI size, torch's threads and the environment
    variables of :data:`ENVIRONMENT` that are set."""
    from .parallel import usable_cores
    comm = comm if comm is not None else PETSc.COMM_WORLD
    return {"cpu": _cpu_model(),
            "cores": os.cpu_count(),
            "cores_usable": usable_cores(),
            "os": platform.platform(),
            "architecture": platform.machine(),
            "mpi_size": comm.getSize(),
            "torch_threads": torch.get_num_threads(),
            "environment": {name: os.environ[name] for name in ENVIRONMENT
                            if name in os.environ}}


@lru_cache(maxsize=1)
def _cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what ``platform`` knows)."""
    from deq_petsc.process.kernels import cpuinfo
    return cpuinfo("model name") or platform.processor() or platform.machine() or "unknown"
