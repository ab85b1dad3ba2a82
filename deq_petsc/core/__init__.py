"""The PETSc core: a fixed-point problem, the SNES that solves it, the KSP that
differentiates it, and what every solve reports.

:mod:`.problem` (``F(z) = z - f(z, x)`` and its Jacobian products), :mod:`.solver`
(:class:`~deq_petsc.core.solver.DEQSolver`, which owns its SNES and vectors),
:mod:`.lean` (Picard and Anderson as SNES types on the model's tensors),
:mod:`.adjoint` (backward and tangent solves), :mod:`.operators` (python ``Mat``),
:mod:`.interop` (tensor <-> ``Vec``), :mod:`.outcome` and :mod:`.convergence`
(statistics, converged reasons as named errors), :mod:`.options_spec` and
:mod:`.petsc_options` (our options, defaults, one-line errors), :mod:`.solver_sets`
(the named solver configurations). It knows nothing of models, data or training.
"""
