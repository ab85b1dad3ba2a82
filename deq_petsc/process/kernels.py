"""The same numbers on every x86 machine with AVX2: the CPU kernels a run computes with, pinned.

A float32 model trained from one seed is not the same model on an AVX2 and an
AVX-512 machine: four libraries choose their kernels by the CPU they find, and
each choice rounds differently (measured on one conv + linear + group norm +
softmax forward, each variable below alone changes some of its bits):

* oneDNN (torch's convolutions): ``ONEDNN_MAX_CPU_ISA``;
* ATen's own vectorised kernels (softmax, reductions): ``ATEN_CPU_CAPABILITY``;
* MKL (torch's BLAS and some of oneDNN's GEMMs): ``MKL_CBWR``, MKL's conditional
  numerical reproducibility;
* OpenBLAS (PETSc's vector kernels and NumPy's): ``OPENBLAS_CORETYPE``.

Rounding differences grow through training (the demo's Picard model: spectral
radius 0.862 on an AVX-512 machine, 0.954 on an AVX2 one, from the same seed).
:func:`pin` sets all four to their AVX2 (Haswell) paths, which every x86 CPU
with AVX2 and FMA has, before any of the libraries loads: the command line
calls it first (``DEQ_PETSC_KERNELS=portable``, the default), and
``DEQ_PETSC_KERNELS=native`` leaves the libraries their own choice (the
fastest on a given CPU, the same numbers only on the same kind of CPU).
A variable the user has set is never changed, so an ``OPENBLAS_CORETYPE`` a
machine needs keeps its value. What was pinned is in every run record.

What pinning cannot fix: the number of threads (a reduction split over more
threads sums in another order: ``OMP_NUM_THREADS`` is recorded, not pinned),
MPI's reduction order over another number of ranks, and another version of
torch, PETSc or the BLAS.
"""

from __future__ import annotations

import os

#: The AVX2 paths of each library, which every x86-64 CPU with AVX2 and FMA runs.
PORTABLE = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "MKL_CBWR": "AVX2",
            "OPENBLAS_CORETYPE": "Haswell"}
#: CPU flags those paths need (``/proc/cpuinfo``).
NEEDED_FLAGS = ("avx2", "fma")
MODES = ("portable", "native")
VARIABLE = "DEQ_PETSC_KERNELS"


def cpuinfo(field: str) -> str | None:
    """The first value of ``field`` in Linux's ``/proc/cpuinfo`` (``flags``, ``model
    name``), None where there is none (another OS, a restricted container)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith(field):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags, None where unknown."""
    flags = cpuinfo("flags")
    return None if flags is None else set(flags.split())


def mode(environ=None) -> str:
    """``DEQ_PETSC_KERNELS``: ``portable`` (default) or ``native``; anything else is an
    error worth one line, raised before any work."""
    environ = os.environ if environ is None else environ
    value = environ.get(VARIABLE, "portable").strip().lower() or "portable"
    if value not in MODES:
        raise ValueError(f"{VARIABLE}={environ[VARIABLE]!r}: must be one of "
                         f"{', '.join(MODES)}")
    return value


def pin(environ=None, flags=None) -> dict[str, str]:
    """Set the portable kernels' variables the user has not set; returns those set.

    Does nothing under ``DEQ_PETSC_KERNELS=native``, on a CPU without AVX2 and FMA
    (or one whose flags are unknown: no x86 Linux), or for a variable already set.
    Must run before torch, NumPy or PETSc are loaded: each reads its variable once.
    """
    environ = os.environ if environ is None else environ
    if mode(environ) == "native":
        return {}
    flags = cpu_flags() if flags is None else flags
    if flags is None or not all(f in flags for f in NEEDED_FLAGS):
        return {}
    pinned = {name: value for name, value in PORTABLE.items() if name not in environ}
    environ.update(pinned)
    if environ is os.environ:
        _pinned_here.append(True)
    return pinned


#: Whether :func:`pin` ran in this process (on ``os.environ``): variables set after the
#: libraries loaded (a library user's script, a test) do not choose their kernels.
_pinned_here: list = []


def describe(environ=None) -> str:
    """What the kernels are, as the version line says it: ``portable (AVX2 paths)``, or
    ``native`` (this CPU's own choice), with the variables a user set beside."""
    environ = os.environ if environ is None else environ
    try:
        chosen = mode(environ)
    except ValueError:
        chosen = environ.get(VARIABLE, "")
    pinned = all(environ.get(name) == value for name, value in PORTABLE.items())
    if chosen == "portable" and pinned:
        return "portable (AVX2 paths)"
    if chosen == "portable" and environ is os.environ and not _pinned_here:
        chosen = "not pinned"            # the library outside the command line
    own = ", ".join(f"{n}={environ[n]}" for n in PORTABLE if n in environ)
    return f"{chosen}" + (f" ({own})" if own else " (this CPU's own choice)")
