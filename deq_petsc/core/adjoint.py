"""The backward pass of a DEQ: solve ``(I - J_f(z*))^T u = g`` for the implicit gradient.

Implicit differentiation turns ``dL/dz*`` (``g``) into ``u``; the layer then
backpropagates ``u`` through one application of ``f``, so training costs the
same memory at any number of forward iterations. The solve is pluggable
(jaxopt's ``root_vjp`` idea) and chosen with options under the adjoint prefix
(default ``adjoint_``)::

    -adjoint_deq_method ksp        PETSc KSP on (I - J_f)^T, matrix-free by VJPs (default)
                                   -adjoint_ksp_type gmres -adjoint_ksp_rtol 1e-8
                                   -adjoint_ksp_monitor -adjoint_ksp_converged_reason
    -adjoint_deq_method snes       the adjoint fixed point u = J_f^T u + g with a SNES
                                   (-adjoint_snes_type anderson); implied by giving
                                   -adjoint_snes_type
    -adjoint_deq_method jfb        Jacobian-free backprop: u = g (Fung et al. 2022)
    -adjoint_deq_method phantom    k damped steps u <- lam (J^T u + g) + (1 - lam) u from 0,
                                   the gradient of k unrolled damped steps at z*
                                   (phantom gradient, Geng et al. 2021):
                                   -adjoint_deq_phantom_steps 5 -adjoint_deq_phantom_damping 1

or, as jaxopt's ``solve`` argument, by a callable of your own:
``AdjointSolver(linear_solve=fn)`` (``DEQ(..., adjoint_solve=fn)``) with
``fn(matvec, g) -> u`` solving ``matvec(u) = g``, ``matvec(u) = u - J_f^T u`` (one VJP
each). It replaces the options' method; the residual of its answer is measured (one more
VJP) and reported in the statistics, and a non-finite answer is a named error, as every
method's.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from petsc4py import PETSc

from .convergence import solve_accepted
from .errors import DEQConvergenceError, DEQError
from .interop import TensorLayout, layout_changed
from .operators import ResidualJacobian, create_residual_jacobian
from .options_spec import ADJOINT as ADJOINT_OPTIONS
from .options_spec import OWN_NAMESPACES, SOLVER as SOLVER_OPTIONS
from .outcome import SolveOutcome
from .petsc_options import (check_positive_ints, inserted_defaults, ksp_reason_name,
                            options_checked)
from .problem import FixedPointProblem, Linearization

ADJOINT_METHODS = ADJOINT_OPTIONS["deq_method"].choices

_ADJOINT_EVENT = PETSc.Log.Event("DEQAdjoint")

#: Program defaults of the adjoint KSP (the options database overrides them). GMRES(10)
#: took 38 iterations where GMRES(30) took 37 on the backward benchmark, with 60 MB
#: less peak memory (Krylov vectors are state-sized).
DEFAULT_KSP_OPTIONS = {"ksp_type": "gmres", "ksp_gmres_restart": 10, "ksp_rtol": 1e-8,
                       "ksp_max_it": 200}

#: The reason of a backward with a fixed number of steps and no test (JFB, phantom
#: gradient): what KSPPREONLY and KSPConvergedSkip report, so ``converged`` holds.
FIXED_STEPS = int(PETSc.KSP.ConvergedReason.CONVERGED_ITS)


@dataclass
class KSPStats(SolveOutcome):
    """How one :class:`ImplicitKSP` solve ended (``method`` ``ksp/<type>``) and the
    Jacobian products it cost: VJPs for an adjoint, JVPs for a tangent."""

    jvp_count: int = 0
    vjp_count: int = 0

    def _cost_summary(self) -> str:
        return f", {self.jvp_count} JVPs, {self.vjp_count} VJPs"


class ImplicitKSP:
    """A KSP on ``I - J_f(z*)`` (tangents) or on its transpose (adjoints), matrix-free.

    Tangents ``dz = (I - J_f)^{-1} r`` are forward-mode implicit differentiation
    (Gauss-Newton products, Jacobians of DEQ outputs); adjoints
    ``u = (I - J_f)^{-T} g`` are the backward pass. Both start from the right-hand
    side (the Jacobian-free guess), which is right when ``J_f`` is small. The
    operators are rebuilt only when the state's layout changes.
    """

    def __init__(self, prefix: str, comm, defaults: dict, transpose: bool):
        self.prefix, self.comm, self.transpose = prefix, comm, transpose
        self.defaults = defaults
        self.ksp = PETSc.KSP().create(comm=comm)
        self.ksp.setOptionsPrefix(prefix)
        self._layout: TensorLayout | None = None
        self._ctx: ResidualJacobian | None = None
        self._mats: list[PETSc.Mat] = []

    def _setup(self, layout: TensorLayout, problem: FixedPointProblem):
        if not layout_changed(self.comm, layout, self._layout):
            return
        if self._layout is not None:
            self.ksp.reset()          # a KSP cannot take operators of another size without it
        self._destroy_operators()
        self._ctx = ResidualJacobian(problem, layout)
        J = create_residual_jacobian(self._ctx, comm=self.comm)
        self._mats = [J]
        if self.transpose:
            self._mats.append(PETSc.Mat().createTranspose(J))  # MatMult -> our multTranspose
        self.ksp.setOperators(self._mats[-1])
        self.ksp.getPC().setType(PETSc.PC.Type.NONE)     # a python Mat has no entries
        self.ksp.setInitialGuessNonzero(True)            # start from the right-hand side
        with inserted_defaults(self.prefix, self.defaults), \
                options_checked(self.ksp, "the adjoint KSP" if self.transpose
                                else "the tangent KSP"):
            check_positive_ints(self.prefix)
            self.ksp.setFromOptions()
        self.ksp.setConvergenceHistory(length=int(self.ksp.getTolerances()[3]) + 1)
        self._layout = layout

    def solve(self, problem: FixedPointProblem, z_star: torch.Tensor,
              rhs: torch.Tensor) -> tuple[torch.Tensor, KSPStats]:
        """``(solution, stats)``; the caller decides whether an unconverged solve is used."""
        layout = TensorLayout.like(rhs)
        self._setup(layout, problem)
        ctx = self._ctx
        ctx.problem = problem
        ctx.set_point(z_star)
        ctx.vjp_count = ctx.jvp_count = 0
        ctx.error = None
        sol = rhs.detach().clone(memory_format=torch.contiguous_format)
        b = layout.create_vec(rhs.detach().contiguous(), comm=self.comm)
        x = layout.create_vec(sol, comm=self.comm)   # zero-copy: the KSP writes into sol
        start = time.perf_counter()
        try:
            try:
                self.ksp.solve(b, x)
            except PETSc.Error:
                if ctx.error is not None:        # the exception of the product itself
                    raise ctx.error from None
                raise
            if not layout.zero_copy:
                sol = layout.read(x).clone()
        finally:
            b.destroy()
            x.destroy()
        elapsed = time.perf_counter() - start
        reason = int(self.ksp.getConvergedReason())
        return sol, KSPStats(f"ksp/{self.ksp.getType()}", reason, ksp_reason_name(reason),
                             int(self.ksp.getIterationNumber()),
                             [float(r) for r in self.ksp.getConvergenceHistory()], elapsed,
                             jvp_count=ctx.jvp_count, vjp_count=ctx.vjp_count)

    def _destroy_operators(self):
        for mat in reversed(self._mats):
            mat.destroy()
        self._mats = []
        self._layout = None

    def destroy(self):
        self._destroy_operators()
        self.ksp.destroy()


@dataclass
class AdjointStats(SolveOutcome):
    """What one backward solve cost and how it ended. ``method``: ``ksp/<type>``,
    ``snes/<type>`` (``reason`` is that KSP's or SNES's), ``jfb`` or ``phantom``
    (``reason`` :data:`FIXED_STEPS`, ``reason_name`` says which)."""

    vjp_count: int = 0

    KIND = "adjoint "

    def _cost_summary(self) -> str:
        return f", {self.vjp_count} VJPs"


class AdjointSolver:
    """Solves ``(I - J_f(z*))^T u = g``; owns the adjoint KSP (or SNES) and its prefix."""

    def __init__(self, prefix: str = "adjoint_", comm=None, method: str | None = None,
                 ksp_options: dict | None = None, snes_options: dict | None = None,
                 linear_solve=None):
        self.prefix = prefix
        #: ``fn(matvec, g) -> u`` of your own (jaxopt's ``solve``), which then replaces
        #: the options' method
        self.linear_solve = linear_solve
        self.comm = PETSc.COMM_SELF if comm is None else comm
        self._method_arg = method
        # Our own keys (deq_method, deq_phantom_steps, ...) are read like the command
        # line's; the rest reaches the KSP, or the SNES (which reads the forward
        # solver's own options under this prefix too) when that is the method.
        self.own_defaults, self.user_defaults = ADJOINT_OPTIONS.split(
            ksp_options, f"the adjoint options (prefix {prefix!r})", passed_on=(SOLVER_OPTIONS,))
        petsc_defaults = {k: v for k, v in self.user_defaults.items()
                          if not k.startswith(OWN_NAMESPACES)}
        self.ksp_defaults = {**DEFAULT_KSP_OPTIONS, **petsc_defaults}
        self.snes_options = {**(snes_options or {}), **self.user_defaults}
        self._ksp: ImplicitKSP | None = None
        self._snes_solver = None
        self.last_stats: AdjointStats | None = None
        self.destroyed = False
        self.method = self._read_method() if linear_solve is None else "callable"
        if linear_solve is not None:
            self.accept_max_it = False

    # -- options --------------------------------------------------------------------
    def _read_method(self) -> str:
        """Our options, those given to the constructor beneath the command line's; an
        ``snes_type`` from either implies ``deq_method snes`` unless one is given."""
        with inserted_defaults(self.prefix, {**self.user_defaults, **self.own_defaults}):
            opts = PETSc.Options(self.prefix)
            default = self._method_arg or ("snes" if opts.hasName("snes_type") else "ksp")
            own = ADJOINT_OPTIONS.read(self.prefix, deq_method=default)
        self.accept_max_it = own["deq_accept_max_it"]
        self.phantom_steps = own["deq_phantom_steps"]
        self.phantom_damping = own["deq_phantom_damping"]
        ADJOINT_OPTIONS.print_help(self.prefix, self.comm, deq_method=default)
        return own["deq_method"]

    # -- solve ----------------------------------------------------------------------
    def solve(self, problem: FixedPointProblem, z_star: torch.Tensor, g: torch.Tensor):
        """``u`` with ``(I - J_f(z*))^T u = g`` (or its approximation by the chosen method)."""
        if self.destroyed:
            raise DEQError(f"the adjoint solver (prefix {self.prefix}) was used after "
                           f"destroy(), which freed its PETSc objects; create a new one")
        _ADJOINT_EVENT.begin()
        start = time.perf_counter()
        try:
            if self.method == "jfb":
                u, stats = g.clone(), AdjointStats("jfb", FIXED_STEPS, "JACOBIAN_FREE", 0)
            elif self.method == "ksp":      # the Mat context holds its own linearization
                u, stats = self._ksp_solve(problem, z_star, g)
            elif self.method == "phantom":
                u, stats = self._phantom(problem.linearize(z_star), g)
            elif self.method == "callable":
                u, stats = self._callable(problem.linearize(z_star), g)
            else:
                u, stats = self._snes(problem.linearize(z_star), g)
        finally:
            _ADJOINT_EVENT.end()
        stats.time = time.perf_counter() - start
        self.last_stats = stats
        if not solve_accepted(stats.converged, stats.reason_name, self.accept_max_it,
                              bool(torch.isfinite(u).all())):
            hint = (f"raise -{self.prefix}ksp_max_it or -{self.prefix}ksp_gmres_restart, or "
                    f"loosen -{self.prefix}ksp_rtol" if self.method == "ksp" else
                    f"use -{self.prefix}deq_method ksp (GMRES needs no contraction), or raise "
                    f"-{self.prefix}snes_max_it")
            raise DEQConvergenceError.of(
                f"adjoint solve ({stats.method}) did not converge: {stats.reason_name} after "
                f"{stats.iterations} iterations"
                + (f", ||r|| {stats.initial_residual:.3e} -> {stats.final_residual:.3e}"
                   if stats.residual_norms else "")
                + f"; the gradient would be wrong. {hint}. If it persists, estimate the "
                f"spectral radius of J_f at z* (DEQ.spectral_radius()): near or above 1 the "
                f"adjoint system is (nearly) singular", stats)
        return u, stats

    def _phantom(self, lin: Linearization, g: torch.Tensor):
        lam = self.phantom_damping
        u = torch.zeros_like(g)
        for _ in range(self.phantom_steps):
            u = lam * (lin.vjp(u) + g) + (1 - lam) * u
        return u, AdjointStats("phantom", FIXED_STEPS, f"UNROLLED_{self.phantom_steps}",
                               self.phantom_steps, vjp_count=lin.vjp_count)

    def _callable(self, lin: Linearization, g: torch.Tensor):
        """Your ``linear_solve(matvec, g)``, its answer's relative residual measured."""
        def matvec(u: torch.Tensor) -> torch.Tensor:
            return u - lin.vjp(u)

        u = self.linear_solve(matvec, g)
        if not isinstance(u, torch.Tensor) or u.shape != g.shape:
            raise DEQError(f"the adjoint's linear_solve returned "
                           f"{getattr(u, 'shape', type(u).__name__)}, not a tensor shaped "
                           f"like g {tuple(g.shape)}")
        u = u.to(g.dtype)
        rnorm, gnorm = float(torch.linalg.vector_norm(g - matvec(u))), \
            float(torch.linalg.vector_norm(g))
        name = getattr(self.linear_solve, "__name__", type(self.linear_solve).__name__)
        stats = AdjointStats(f"callable/{name}", FIXED_STEPS, "CALLABLE", 1,
                             vjp_count=lin.vjp_count)
        stats.residual_norms = [gnorm, rnorm]
        return u, stats

    def _snes(self, lin: Linearization, g: torch.Tensor):
        from .solver import DEQSolver  # the adjoint fixed point is itself a (linear) DEQ

        if self._snes_solver is None:
            self._snes_solver = DEQSolver(prefix=self.prefix, comm=self.comm,
                                          options=self.snes_options, check_convergence=False)
        fixed_point = FixedPointProblem(lambda u, rhs: lin.vjp(u) + rhs, g, z0=g)
        u, s = self._snes_solver.solve(fixed_point)
        return u, AdjointStats.from_outcome(s, method=f"snes/{s.method}",
                                            vjp_count=lin.vjp_count)

    def _ksp_solve(self, problem: FixedPointProblem, z_star: torch.Tensor, g: torch.Tensor):
        if self._ksp is None:
            self._ksp = ImplicitKSP(self.prefix, self.comm, self.ksp_defaults, transpose=True)
        u, stats = self._ksp.solve(problem, z_star, g)
        return u, AdjointStats.from_outcome(stats, vjp_count=stats.vjp_count)

    # -- lifetime -------------------------------------------------------------------
    def destroy(self):
        """Free the adjoint KSP (and its operators) or SNES. Collective over ``comm``;
        again does nothing; a backward after it is a :class:`DEQError` (the KSP is not
        silently made again, so a freed layer stays freed)."""
        self.destroyed = True
        if self._ksp is not None:
            self._ksp.destroy()
            self._ksp = None
        if self._snes_solver is not None:
            self._snes_solver.destroy()
            self._snes_solver = None

