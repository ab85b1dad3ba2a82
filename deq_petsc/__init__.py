"""deq_petsc: Deep Equilibrium Models whose fixed points are solved by PETSc.

The residual ``F(z) = z - f(z, x)`` of a PyTorch cell ``f`` is handed to a
PETSc ``SNES``; every nonlinear solver PETSc has is one option away.

Importing this package does not initialise PETSc: follow petsc4py's convention
and call ``petsc4py.init(sys.argv)`` (or :func:`deq_petsc.init`) first when the
command line should reach the options database. The public names below are
loaded on first use for that reason.

Importing it does set up glibc's malloc for repeated state-sized temporaries
(:mod:`deq_petsc.process.allocator`: a float64 ``f`` evaluation 2-2.6x faster);
``DEQ_PETSC_MALLOC=default`` leaves the allocator alone.
"""

import importlib.abc
import importlib.util
import sys
from importlib import import_module

from .process import allocator as _allocator

__version__ = "0.1.0"

_allocator.tune()

_EXPORTS = {
    "DEQ": "deq_petsc.layer.deq",
    "LayerStats": "deq_petsc.layer.deq",
    "AdjointSolver": "deq_petsc.core.adjoint",
    "AdjointStats": "deq_petsc.core.adjoint",
    "KSPStats": "deq_petsc.core.adjoint",
    "SolveOutcome": "deq_petsc.core.outcome",
    "spectral_radius": "deq_petsc.core.diagnostics",
    "DEQSolver": "deq_petsc.core.solver",
    "SolveStats": "deq_petsc.core.solver",
    "FixedPointProblem": "deq_petsc.core.problem",
    "Linearization": "deq_petsc.core.problem",
    "TensorLayout": "deq_petsc.core.interop",
    "ResidualJacobian": "deq_petsc.core.operators",
    "DEQError": "deq_petsc.core.errors",
    "DEQConvergenceError": "deq_petsc.core.errors",
    "DEQNonFiniteError": "deq_petsc.core.errors",
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


#: module paths that PETSc option strings and run folders written before the package
#: moved into layer folders (2026-12) still name: ``-snes_python_type
#: deq_petsc.lean.Anderson`` resolves to :mod:`deq_petsc.core.lean` itself
_MOVED = {"deq_petsc.lean": "deq_petsc.core.lean"}


class _MovedModules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old path as the module that now lives elsewhere, on first use (so that
    importing deq_petsc still does not import petsc4py.PETSc)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in _MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    _specs: dict = {}

    def create_module(self, spec):
        module = import_module(_MOVED[spec.name])
        self._specs[module.__name__] = module.__spec__
        return module

    def exec_module(self, module):
        """Already executed under its new name; the import machinery has just given it the
        alias's spec, so it gets its own back (its relative imports and reload read it)."""
        module.__spec__ = self._specs.pop(module.__name__, module.__spec__)


sys.meta_path.append(_MovedModules())


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'deq_petsc' has no attribute {name!r}")


def __dir__():
    return __all__
