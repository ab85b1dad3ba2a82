"""``DEQSolver``: a PETSc ``SNES`` that finds ``z* = f(z*, x)``.

The SNES sees the residual ``F(z) = z - f(z, x)`` and, for Newton-type
methods, the exact Jacobian ``I - J_f`` as a python ``Mat``
(:mod:`deq_petsc.core.operators`). Everything else -- the method, tolerances,
monitors, nonlinear preconditioning -- comes from the options database under
the solver's prefix, with the program defaults below applied first so that
the command line always wins::

    -snes_type anderson -snes_anderson_m 5 -snes_monitor -snes_converged_reason
    -snes_type nrichardson -snes_linesearch_type basic        # Picard
    -snes_type newtonls -ksp_type gmres                       # Newton-Krylov
    -snes_type anderson -npc_snes_type nrichardson            # composite

Every converged reason is checked: a diverged one raises
:class:`~deq_petsc.core.errors.DEQConvergenceError` (``DEQNonFiniteError`` when the
cell produced NaN/Inf), carrying the reason name and the residual history.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from petsc4py import PETSc

from .callbacks import petsc_callback
from .convergence import solve_accepted
from .errors import DEQConvergenceError, DEQError, DEQNonFiniteError
from .interop import TensorLayout, layout_changed, vec_local_view
from .lean import snes_method
from .operators import ResidualJacobian, create_residual_jacobian
from .options_spec import LEAN as LEAN_OPTIONS, SOLVER as SOLVER_OPTIONS
from .outcome import SolveOutcome
from .petsc_options import (check_positive_ints, inserted_defaults, ksp_reason_name,
                            options_checked, petsc_message, snes_reason_name)
from .problem import FixedPointProblem

_FUNCTION_EVENT = PETSc.Log.Event("DEQFunction")
_SOLVE_EVENT = PETSc.Log.Event("DEQSolve")

#: Program defaults, applied before ``setFromOptions()`` (command line wins).
#: PETSc's own defaults hold for everything not listed. Anderson is the DEQ
#: workhorse, in its lean form (:mod:`deq_petsc.core.lean`: PETSc's algorithm on the
#: model's own tensors, each sample stopping at its own tolerance); PETSc's default
#: depth of 30 costs 60 state-sized vectors. ``-snes_type anderson`` is PETSc's own.
DEFAULT_OPTIONS = {
    "snes_type": "python",
    "snes_python_type": "deq_petsc.core.lean.Anderson",
    "snes_anderson_m": 5,
    "snes_max_it": 100,
}


#: PETSc's default ``-snes_rtol``, and how close to its machine epsilon a state can get.
#: A float32 cell's rounding (its f is computed in single precision, whatever PETSc's
#: scalars) left Anderson, Picard, NGMRES and Newton on a 64-unit tanh cell at relative
#: residuals 1.4e-8 to 3.4e-8: below 1e-8 Anderson ended on the step tolerance and the
#: others at -snes_max_it, as failures. 100 eps (1.2e-5 in float32) is well above that
#: floor, also for larger states whose sums round more; float64 keeps PETSc's 1e-8.
PETSC_RTOL = 1e-8
RTOL_EPS_FACTOR = 100


def precision_rtol(dtype: torch.dtype) -> float:
    """The default ``-snes_rtol`` for a state of ``dtype``: ``max(1e-8, 100 eps)``."""
    return max(PETSC_RTOL, RTOL_EPS_FACTOR * torch.finfo(dtype).eps)


@dataclass
class SolveStats(SolveOutcome):
    """What one forward solve cost and how it ended; ``method`` is the SNES type."""

    function_evals: int = 0
    jvp_count: int = 0
    vjp_count: int = 0
    linear_iterations: int = 0
    nonfinite_evals: int = 0
    first_nonfinite_eval: int | None = None   # 1-based; None: every f was finite
    #: f evaluations counted per sample (a lean solver stops samples one by one)
    sample_evals: int = 0
    #: iterations each sample needed (its own stopping rule met; the whole solve's
    #: when the batch stops together)
    sample_iterations: list[int] = field(default_factory=list)
    #: how the solve stopped: batch (one test on the whole batch), worst or each
    #: (every sample to its own tolerance; each: a sample stops once it is there)
    sample_stop: str = "batch"

    RESIDUAL = "||F||"
    DERIVED = SolveOutcome.DERIVED + ("snes_type",)

    @property
    def snes_type(self) -> str:
        """The SNES type: ``method`` under its forward-solve name."""
        return self.method

    @property
    def time_per_function_eval(self) -> float:
        return self.time / self.function_evals if self.function_evals else math.nan

    @property
    def samples(self) -> int:
        return len(self.sample_iterations)

    @property
    def mean_sample_iterations(self) -> float:
        """Iterations per sample, on average: what per-sample stopping saves."""
        its = self.sample_iterations
        return sum(its) / len(its) if its else math.nan

    def _cost_summary(self) -> str:
        extra = ""
        if self.jvp_count or self.vjp_count or self.linear_iterations:
            extra = (f", {self.linear_iterations} linear its, {self.jvp_count} JVPs, "
                     f"{self.vjp_count} VJPs")
        return f", {self.function_evals} f evals{extra}"


class _SNESContext:
    """The SNES callbacks for one state layout; the problem changes per solve."""

    def __init__(self, layout: TensorLayout, jacobian: ResidualJacobian, check_finite: bool):
        self.layout = layout
        self.jacobian = jacobian
        self.check_finite = check_finite
        # Where the state is cast to the model's dtype (float32 models, float64 PETSc):
        # one buffer for all evaluations instead of an allocation per call.
        self.z_buffer = None if layout.zero_copy else layout.empty()
        self.problem: FixedPointProblem | None = None
        self.state: torch.Tensor | None = None     # the solve's tensor (lean types)
        self.state_vec: PETSc.Vec | None = None    # ... and the Vec that stands for it
        self.reset_counters()

    def reset_counters(self):
        self.error = None              # the first exception raised in a callback
        self.jacobian.error = None
        self.function_evals = 0
        self.nonfinite_evals = 0
        self.first_nonfinite_eval = None
        self.jacobian.jvp_count = 0
        self.jacobian.vjp_count = 0
        self.sample_evals = 0
        self.lean_run = None

    # -- the lean types' side (deq_petsc.core.lean): they work on tensors, not on Vecs -------
    def lean_state(self, X) -> torch.Tensor:
        """The tensor a lean type iterates in place of ``X``: the solve's own (no copy,
        the model's dtype and device), or ``X`` read once when it is another Vec (the
        lean type as another SNES's nonlinear preconditioner)."""
        if self.state is not None and self.state_vec is not None \
                and X.handle == self.state_vec.handle:
            return self.state
        return self.layout.read(X).clone()

    @petsc_callback(_FUNCTION_EVENT)
    @torch.no_grad()
    def lean_f(self, problem: FixedPointProblem, z: torch.Tensor, samples: int) -> torch.Tensor:
        """``f(z)`` for a lean type, counted (once, and once per sample evaluated)."""
        fz = problem(z)
        if fz.dtype != z.dtype:             # the state keeps its precision
            fz = fz.to(z.dtype)
        self.function_evals += 1
        self.sample_evals += samples
        return fz

    def lean_nonfinite(self):
        """A lean type saw a non-finite residual norm (its NaN test costs nothing)."""
        if not self.check_finite:
            return
        self.nonfinite_evals += 1
        if self.first_nonfinite_eval is None:
            self.first_nonfinite_eval = self.function_evals

    def lean_finished(self, snes, X, run):
        """The answer into ``X``, unless ``X`` stands for the solve's tensor, which holds it
        already: then the run is the solve's own, kept for the statistics. Otherwise the
        residual at the answer goes into the SNES's function as well (PETSc's Anderson
        reads it from its nonlinear preconditioner)."""
        if run.z_out is self.state:
            self.lean_run = run
            return
        self.layout.write(run.z_out, X)
        F = snes.getFunction()[0]
        out = vec_local_view(F, "w")
        out.copy_(run.F_out.reshape(-1))

    @petsc_callback(_FUNCTION_EVENT)
    @torch.no_grad()
    def evalFunction(self, snes, X, F):
        z = self.layout.read(X, out=self.z_buffer)
        fz = self.problem(z).reshape(-1)
        if fz.device.type != "cpu":
            fz = fz.cpu()
        out = vec_local_view(F, "w")
        # F = X - f: torch promotes a float32 f to PETSc's float64 inside the kernel,
        # no float64 copy of f is made
        torch.sub(vec_local_view(X, "r"), fz, out=out)
        self.function_evals += 1
        # One reduction, no temporary: a NaN/Inf entry makes the sum non-finite.
        if self.check_finite and not bool(torch.isfinite(out.sum())):
            self.nonfinite_evals += 1
            if self.first_nonfinite_eval is None:
                self.first_nonfinite_eval = self.function_evals

    @petsc_callback()
    def evalJacobian(self, snes, X, J, P):
        self.jacobian.problem = self.problem
        self.jacobian.set_point(self.layout.read(X))

    def raise_callback_error(self):
        """PETSc reports a Python exception in a callback as a bare error code; re-raise
        the exception itself (a bug in the cell, a failure on this rank)."""
        err = self.error or self.jacobian.error
        if err is not None:
            raise err


class DEQSolver:
    """Owns a ``SNES`` (and its vectors) that solves fixed-point problems.

    Parameters
    ----------
    prefix:
        Options prefix of the SNES (and its KSP). The default, none, lets a
        user's ``-snes_type anderson`` apply directly.
    comm:
        Communicator of the state vector (default ``PETSC_COMM_SELF``: each
        process solves its own batch). Pass ``PETSc.COMM_WORLD`` for one
        distributed state whose local part is each rank's tensor.
    options:
        Program defaults for this solver (keys without the prefix, e.g.
        ``{"snes_type": "ngmres"}`` or ours, ``{"deq_check_finite": False}``),
        layered over :data:`DEFAULT_OPTIONS` and a ``snes_rtol`` the state's
        precision can reach (:func:`precision_rtol`: 1e-8 in float64, 1.2e-5 in
        float32); the options database (the command line) overrides them all. A
        ``deq_*`` key that is not one of ours is a ``DEQOptionsError``.
    check_convergence:
        Raise on a diverged reason (default). With ``False`` the caller must
        inspect ``stats.converged``.

    Our own options (``-help`` lists them)::

        -<prefix>deq_check_finite <true>   test each f evaluation for NaN/Inf
        -<prefix>deq_jvp <reverse>         JVPs by double backward, or forward-mode AD
        -<prefix>deq_stats_view            print the statistics of every solve
        -<prefix>deq_accept_max_it         DIVERGED_MAX_IT gives the last iterate (training)
    """

    def __init__(self, prefix: str = "", comm=None, options: dict | None = None,
                 check_convergence: bool = True):
        self.prefix = prefix or ""
        self.comm = PETSc.COMM_SELF if comm is None else comm
        self.own_defaults, self.user_defaults = SOLVER_OPTIONS.split(
            options, f"DEQSolver(prefix={self.prefix!r}, options=...)", passed_on=(LEAN_OPTIONS,))
        self.accept_max_it = False          # our options are read at the first set-up
        self.defaults = {**DEFAULT_OPTIONS, **self.user_defaults}
        self.check_convergence = check_convergence
        self.snes = PETSc.SNES().create(comm=self.comm)
        self.snes.setOptionsPrefix(self.prefix)
        self._layout: TensorLayout | None = None
        self._ctx: _SNESContext | None = None
        self._F: PETSc.Vec | None = None
        self._J: PETSc.Mat | None = None
        self.last_stats: SolveStats | None = None

    # -- set-up ---------------------------------------------------------------------
    def _read_own_options(self):
        with inserted_defaults(self.prefix, self.own_defaults):
            own = SOLVER_OPTIONS.read(self.prefix)
        self.stats_view = own["deq_stats_view"]
        self.accept_max_it = own["deq_accept_max_it"]
        return own["deq_check_finite"], own["deq_jvp"]

    def _setup(self, layout: TensorLayout, problem: FixedPointProblem):
        if not layout_changed(self.comm, layout, self._layout):
            return
        if self._layout is not None:
            self.snes.reset()
            self._destroy_vectors()
        check_finite, jvp_mode = self._read_own_options()
        jacobian = ResidualJacobian(problem, layout, jvp_mode)
        self._ctx = _SNESContext(layout, jacobian, check_finite)
        self._F = PETSc.Vec().createMPI((layout.numel, PETSc.DECIDE), comm=self.comm)
        self._J = create_residual_jacobian(jacobian, comm=self.comm)
        self.snes.setFunction(self._ctx.evalFunction, self._F)
        self.snes.setJacobian(self._ctx.evalJacobian, self._J, self._J)
        self.snes.setApplicationContext(self._ctx)   # where the lean types find the cell
        # Programmatic defaults the options database may override: a python Mat
        # has no entries, so no preconditioner can be built from it.
        self.snes.getKSP().getPC().setType(PETSc.PC.Type.NONE)
        with inserted_defaults(self.prefix, self.defaults_for(layout.dtype)), \
                options_checked(self.snes, "the forward SNES"):
            check_positive_ints(self.prefix)
            try:
                self.snes.setFromOptions()
            except PETSc.Error:
                if self._ctx.error is not None:      # a lean type's own refusal
                    raise self._ctx.error from None
                raise
            if self.snes.hasNPC():                   # a lean type as preconditioner
                self.snes.getNPC().setApplicationContext(self._ctx)
        SOLVER_OPTIONS.print_help(self.prefix, self.comm)
        max_it = self.snes.getTolerances()[3]
        self.snes.setConvergenceHistory(length=max(int(max_it) + 1, 1000), reset=True)
        self._layout = layout

    def defaults_for(self, dtype: torch.dtype) -> dict:
        """The program defaults for a state of ``dtype``: a relative tolerance the
        precision can reach (:func:`precision_rtol`) unless the caller gave one; in
        float64 PETSc's own (some SNES types have their own)."""
        rtol = precision_rtol(dtype)
        return self.defaults if rtol <= PETSC_RTOL else {"snes_rtol": rtol, **self.defaults}

    def set_from_options(self):
        """Re-read the options database (after changing it between solves)."""
        layout, self._layout = self._layout, None
        if layout is not None:
            self._setup(layout, self._ctx.problem)

    # -- solve ----------------------------------------------------------------------
    def solve(self, problem: FixedPointProblem, z0: torch.Tensor | None = None):
        """Solve ``z = f(z, x)`` from ``z0`` (default ``problem.z0``).

        Returns ``(z_star, stats)``; ``z_star`` is a new tensor with ``z0``'s
        shape, dtype and device (never a view of PETSc memory that a later
        solve could overwrite).
        """
        self.require_alive()
        z0 = problem.z0 if z0 is None else z0.detach()
        if z0.shape != problem.z0.shape:
            raise ValueError(f"z0 of shape {tuple(z0.shape)} does not match the problem's "
                             f"{tuple(problem.z0.shape)}")
        layout = TensorLayout.like(z0)
        self._setup(layout, problem)
        ctx = self._ctx
        ctx.problem = problem
        ctx.jacobian.problem = problem
        ctx.reset_counters()

        z = z0.clone(memory_format=torch.contiguous_format)
        X = layout.create_vec(z, comm=self.comm)   # shares z's memory when zero-copy
        ctx.state, ctx.state_vec = z, X            # a lean type iterates z itself
        _SOLVE_EVENT.begin()
        start = time.perf_counter()
        try:
            try:
                self.snes.solve(None, X)
            except PETSc.Error as err:
                ctx.raise_callback_error()
                raise DEQError(f"PETSc failed inside the forward solve "
                               f"(prefix {self.prefix or 'none'}): {petsc_message(err)}") from None
            elapsed = time.perf_counter() - start
            z_star = z if layout.zero_copy or ctx.lean_run is not None \
                else layout.read(X).clone()
        finally:
            _SOLVE_EVENT.end()
            ctx.state = ctx.state_vec = None
            X.destroy()

        stats = self._collect_stats(elapsed)
        self.last_stats = stats
        if self.stats_view:
            PETSc.Sys.Print(f"DEQSolver{' ' + self.prefix if self.prefix else ''}: "
                            f"{stats.summary()}", comm=self.comm)
        if self.check_convergence:
            self._raise_if_failed(stats)
        return z_star, stats

    def _collect_stats(self, elapsed: float) -> SolveStats:
        snes, ctx = self.snes, self._ctx
        norms, _ = snes.getConvergenceHistory()
        reason = int(snes.getConvergedReason())
        iterations = int(snes.getIterationNumber())
        run = ctx.lean_run
        if run is not None:
            samples = dict(sample_evals=ctx.sample_evals,
                           sample_iterations=list(run.samples.iterations), sample_stop=run.mode)
        else:
            batch = ctx.layout.shape[0] if len(ctx.layout.shape) > 1 else 1
            samples = dict(sample_evals=ctx.function_evals * batch,
                           sample_iterations=[iterations] * batch)
        return SolveStats(
            method=snes_method(snes),
            reason=reason,
            reason_name=snes_reason_name(reason),
            iterations=iterations,
            function_evals=ctx.function_evals,
            jvp_count=ctx.jacobian.jvp_count,
            vjp_count=ctx.jacobian.vjp_count,
            linear_iterations=int(snes.getLinearSolveIterations()),
            residual_norms=[float(r) for r in norms],
            time=elapsed,
            nonfinite_evals=ctx.nonfinite_evals,
            first_nonfinite_eval=ctx.first_nonfinite_eval,
            **samples,
        )

    def _raise_if_failed(self, stats: SolveStats):
        nonfinite_norm = any(not math.isfinite(r) for r in stats.residual_norms)
        if not stats.converged and (stats.nonfinite_evals or nonfinite_norm
                                    or stats.reason_name == "DIVERGED_FUNCTION_NANORINF"):
            where = (f"first at f evaluation {stats.first_nonfinite_eval} of "
                     f"{stats.function_evals}" if stats.first_nonfinite_eval else
                     "in the residual norm")
            raise DEQNonFiniteError.of(
                f"the fixed-point solve produced NaN/Inf ({where}); SNES reason "
                f"{stats.reason_name} after {stats.iterations} iterations. The cell f(z, x) "
                f"returned non-finite values: check its inputs and weights, or use a more "
                f"damped solver (e.g. -snes_anderson_beta 0.5)", stats)
        if solve_accepted(stats.converged, stats.reason_name, self.accept_max_it,
                          math.isfinite(stats.final_residual)):
            return
        detail = ""
        if stats.reason_name == "DIVERGED_LINEAR_SOLVE":
            ksp_reason = int(self.snes.getKSP().getConvergedReason())
            detail = f" (inner KSP: {ksp_reason_name(ksp_reason)})"
        hint = {
            "DIVERGED_MAX_IT": "raise -snes_max_it, loosen -snes_rtol, or try a faster "
                               "method (-snes_type anderson, newtonls)",
            "DIVERGED_DTOL": "the iteration grows: the cell may not be contractive "
                             "(estimate the spectral radius of J_f)",
            "DIVERGED_LINE_SEARCH": "try -snes_linesearch_type basic or a damped Anderson",
        }.get(stats.reason_name, "see -snes_monitor and -snes_converged_reason")
        if _never_moved(stats):
            hint = ("the iterate never moved (||F|| the same at every iteration): the steps "
                    "are zero; check -snes_anderson_beta or the line search's damping "
                    "(-snes_linesearch_damping)")
        raise DEQConvergenceError.of(
            f"fixed-point solve did not converge: {stats.reason_name}{detail} after "
            f"{stats.iterations} iterations ({stats.function_evals} f evals), ||F|| "
            f"{stats.initial_residual:.3e} -> {stats.final_residual:.3e}; {hint}", stats)

    # -- lifetime -------------------------------------------------------------------
    def _destroy_vectors(self):
        for obj in (self._F, self._J):
            if obj is not None:
                obj.destroy()
        self._F = self._J = None

    def destroy(self):
        """Free the PETSc objects: the SNES (with its KSP, preconditioner and line
        search), the residual ``Vec`` and the Jacobian ``Mat``.

        Collective over ``comm``: every rank calls it (PETSc frees parallel objects
        together). Call it explicitly, or use the solver as a context manager: the GC
        would free them at a time of its choosing, on each rank apart. Calling it again
        does nothing; a solve after it is a :class:`~deq_petsc.core.errors.DEQError` saying
        so (a new ``DEQSolver`` is cheap: PETSc objects are set up at the first solve).
        The statistics (``last_stats``) stay readable.
        """
        self._destroy_vectors()
        if self.snes is not None:
            self.snes.destroy()
            self.snes = None
        self._layout = None

    @property
    def destroyed(self) -> bool:
        return self.snes is None

    def require_alive(self, owner: str = "this DEQSolver"):
        """A clear error instead of PETSc's on a freed object."""
        if self.snes is None:
            raise DEQError(f"{owner} (prefix {self.prefix or 'none'}) was used after "
                           f"destroy(), which freed its PETSc objects; create a new one")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.destroy()

    def view(self, viewer=None):
        self.require_alive()
        self.snes.view(viewer)


def _never_moved(stats: SolveStats) -> bool:
    """A failed solve whose residual norm did not change over its iterations: its steps
    were zero (``-snes_anderson_beta 0``, a damping of 0), so no faster method or higher
    ``-snes_max_it`` would help."""
    norms = stats.residual_norms
    return stats.iterations > 0 and len(norms) > 1 and math.isfinite(norms[0]) and \
        max(norms) - min(norms) <= 1e-12 * max(norms)
