"""One thread for the BLAS under PETSc's vector operations.

PETSc's ``VecNorm``/``VecMDot``/``VecMAXPY`` call the system BLAS (Debian's
OpenBLAS, pthreads build). Its worker threads busy-wait after each call,
competing with torch's own threads for the same cores: on 2 cores a
``VecNorm`` of 512k doubles took 1.1 ms instead of 0.08, and the cell's
convolution inside a solve 40% longer than outside (``-log_view``,
``benchmarks/bench_iteration.py``). These operations are memory-bound, so
one thread loses nothing, and torch keeps the cores for ``f``.

:func:`limit` calls ``openblas_set_num_threads(1)`` on every OpenBLAS loaded in
the process once PETSc is (it runs when :mod:`deq_petsc.core.interop` is imported);
a user's own ``OPENBLAS_NUM_THREADS`` is left as it is.
"""

from __future__ import annotations

import ctypes
import os

_done: list[str] = []


def loaded_openblas() -> list[str]:
    """Paths of the OpenBLAS libraries mapped into this process (Linux; [] elsewhere)."""
    try:
        with open("/proc/self/maps") as fh:
            paths = {line.split()[-1] for line in fh if "openblas" in line.lower()}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/") and ".so" in p)


def limit() -> list[str]:
    """Set each loaded OpenBLAS to one thread; returns the libraries it set."""
    if "OPENBLAS_NUM_THREADS" in os.environ:
        return []
    for path in loaded_openblas():
        if path in _done:
            continue
        try:
            lib = ctypes.CDLL(path)
            setter = lib.openblas_set_num_threads
        except (OSError, AttributeError):
            continue
        setter(1)
        _done.append(path)
    return list(_done)


def threads(path: str) -> int | None:
    """The thread count an OpenBLAS library reports (for tests and ``--version``)."""
    try:
        return int(ctypes.CDLL(path).openblas_get_num_threads())
    except (OSError, AttributeError):
        return None
