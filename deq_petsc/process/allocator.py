"""glibc's malloc, set up for a process that allocates the same large temporaries over and over.

A DEQ solve evaluates ``f`` tens of times per batch, and each evaluation
allocates the same state-sized temporaries (torch's float64 CPU convolution:
an im2col buffer of ~38 MB for a 32 x 16 x 32 x 32 state). glibc serves any
block above its mmap threshold (dynamic, at most 32 MB) with a fresh
``mmap``, and returns it to the kernel on ``free``; the next call maps it
again and page-faults every page in. That cost 2-2.6x the arithmetic of a
float64 ``f`` (measured: ``benchmarks/bench_iteration.py``).

:func:`tune` raises the mmap threshold to 256 MB and the trim threshold to
1 GB (``mallopt``), so such blocks come from the heap and are reused. It runs
when :mod:`deq_petsc` is imported, so the CLI, the library, the benchmarks and
every MPI rank get it without the user knowing. The price: up to 1 GB of freed
memory stays with the process instead of going back to the kernel at once.

Left alone when the user chose for themselves (``glibc.malloc`` tunables in
``GLIBC_TUNABLES``, or ``MALLOC_MMAP_THRESHOLD_``/``MALLOC_TRIM_THRESHOLD_``),
when ``DEQ_PETSC_MALLOC=default``, and off glibc.
"""

from __future__ import annotations

import ctypes
import os

#: ``mallopt`` parameters (malloc.h) and the values we set.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 256 << 20
TRIM_THRESHOLD = 1 << 30

_state = {"status": "not tuned yet"}


def _libc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.gnu_get_libc_version.restype = ctypes.c_char_p
        libc.gnu_get_libc_version()
    except (OSError, AttributeError):
        return None                    # not glibc (musl, macOS, Windows)
    return libc


def _user_chose() -> str | None:
    if os.environ.get("DEQ_PETSC_MALLOC", "").lower() == "default":
        return "DEQ_PETSC_MALLOC=default"
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_"):
        if name in os.environ:
            return name
    return None


def tune() -> str:
    """Set the thresholds once per process (idempotent); returns :func:`status`."""
    if _state["status"] != "not tuned yet":
        return _state["status"]
    chooser = _user_chose()
    libc = None if chooser else _libc()
    if chooser:
        _state["status"] = f"glibc defaults or the user's ({chooser})"
    elif libc is None:
        _state["status"] = "not glibc: the platform's allocator as it is"
    elif libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and \
            libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD):
        _state["status"] = (f"tuned: mmap threshold {MMAP_THRESHOLD >> 20} MB, trim threshold "
                            f"{TRIM_THRESHOLD >> 20} MB")
    else:                               # pragma: no cover - a glibc that refuses the values
        _state["status"] = "glibc refused the thresholds: its defaults"
    return _state["status"]


def status() -> str:
    """What :func:`tune` did in this process, in words."""
    return _state["status"]


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]


def large_blocks_are_mapped(size: int = 40 << 20) -> bool | None:
    """Whether glibc serves a ``size``-byte block by a fresh ``mmap`` (read back, not assumed).

    Allocates and frees one block and compares ``mallinfo2().hblkhd`` (bytes in
    mmapped blocks) before and after. ``None`` off glibc (or glibc < 2.33).
    """
    libc = _libc()
    if libc is None or not hasattr(libc, "mallinfo2"):
        return None
    libc.mallinfo2.restype = _MallInfo2
    libc.malloc.restype = ctypes.c_void_p
    before = libc.mallinfo2().hblkhd
    block = libc.malloc(size)
    if not block:                       # pragma: no cover - out of memory
        return None
    mapped = libc.mallinfo2().hblkhd - before >= size
    libc.free(ctypes.c_void_p(block))
    return mapped
