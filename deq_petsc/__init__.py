"""deq_petsc: Deep Equilibrium Models whose fixed points are solved by PETSc.

The residual ``F(z) = z - f(z, x)`` of a PyTorch cell ``f`` is handed to a
PETSc ``SNES``; every nonlinear solver PETSc has is one option away.

Importing this package does not initialise PETSc: follow petsc4py's convention
and call ``petsc4py.init(sys.argv)`` (or :func:`deq_petsc.init`) first when the
command line should reach the options database. The public names below are
loaded on first use for that reason.

Importing it does set up glibc's malloc for repeated state-sized temporaries
(:mod:`deq_petsc.allocator`: a float64 ``f`` evaluation 2-2.6x faster);
``DEQ_PETSC_MALLOC=default`` leaves the allocator alone.
"""

import sys
from importlib import import_module

from . import allocator as _allocator

__version__ = "0.1.0"

_allocator.tune()

_EXPORTS = {
    "DEQ": "deq_petsc.layer",
    "LayerStats": "deq_petsc.layer",
    "AdjointSolver": "deq_petsc.adjoint",
    "AdjointStats": "deq_petsc.adjoint",
    "KSPStats": "deq_petsc.adjoint",
    "SolveOutcome": "deq_petsc.outcome",
    "spectral_radius": "deq_petsc.diagnostics",
    "DEQSolver": "deq_petsc.solver",
    "SolveStats": "deq_petsc.solver",
    "FixedPointProblem": "deq_petsc.problem",
    "Linearization": "deq_petsc.problem",
    "TensorLayout": "deq_petsc.interop",
    "ResidualJacobian": "deq_petsc.operators",
    "DEQError": "deq_petsc.errors",
    "DEQConvergenceError": "deq_petsc.errors",
    "DEQNonFiniteError": "deq_petsc.errors",
}

__all__ = sorted(_EXPORTS) + ["__version__", "init"]


def init(argv=None, comm=None):
    """Initialise PETSc with ``argv`` (default ``sys.argv``), once.

    Must run before anything imports ``petsc4py.PETSc`` for the arguments to
    reach the options database (petsc4py's own convention); afterwards it
    raises rather than silently dropping them.
    """
    import petsc4py

    argv = list(sys.argv if argv is None else argv)
    if "petsc4py.PETSc" in sys.modules:
        if len(argv) > 1:
            raise RuntimeError(
                "PETSc is already initialised, so these options would be ignored: "
                f"{argv[1:]}; call deq_petsc.init(argv) before importing "
                "deq_petsc's solvers or petsc4py.PETSc")
        return
    if comm is None:
        petsc4py.init(argv)
    else:
        petsc4py.init(argv, comm=comm)


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deq_petsc' has no attribute {name!r}")


def __dir__():
    return __all__
