"""``DEQ``: a ``torch.nn.Module`` whose output is the equilibrium of a cell.

Forward: a PETSc SNES finds ``z* = f(z*, x)`` with no autograd graph kept
through the iterations. The output is ``f(z*, x)`` computed once more with a
graph (equal to ``z*`` up to the solver tolerance); a hook on it swaps the
incoming gradient ``g = dL/dz*`` for the implicit one ``u = (I - J_f)^{-T} g``
(:mod:`deq_petsc.core.adjoint`), and autograd carries ``u`` through that single
application of ``f`` to the parameters and to ``x``:

    dL/dtheta = (df/dtheta)^T u,   (I - J_f(z*))^T u = dL/dz*.

So backward costs one ``f`` graph plus the adjoint solve, whatever the number
of forward iterations.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch import nn

from deq_petsc.core.adjoint import AdjointSolver, AdjointStats, ImplicitKSP, KSPStats
from deq_petsc.core.convergence import solve_accepted
from deq_petsc.core.diagnostics import sample_radii, spectral_radius
from deq_petsc.core.errors import DEQConvergenceError
from deq_petsc.core.options_spec import LAYER as LAYER_OPTIONS, LEAN as LEAN_OPTIONS, SOLVER as SOLVER_OPTIONS
from deq_petsc.core.petsc_options import inserted_defaults
from deq_petsc.core.problem import FixedPointProblem
from deq_petsc.core.solver import DEQSolver, SolveStats


@dataclass
class LayerStats:
    """Statistics of the layer's last forward solve, of the backward that followed it and
    of its last tangent solve (:meth:`DEQ.tangent`, Gauss-Newton products): members of
    the :class:`~deq_petsc.core.outcome.SolveOutcome` family."""

    forward: SolveStats | None = None
    backward: AdjointStats | None = None
    tangent: KSPStats | None = None

    def summary(self) -> str:
        parts = [self.forward.summary() if self.forward else "no forward solve yet"]
        parts += [s.summary() for s in (self.backward, self.tangent) if s is not None]
        return "\n".join(parts)


class DEQ(nn.Module):
    """Deep equilibrium layer around ``cell(z, x)``.

    Parameters
    ----------
    cell:
        ``f(z, x)`` returning a tensor shaped like ``z``; an ``nn.Module`` (its
        parameters become the layer's) or any callable.
    prefix:
        Options prefix of the forward SNES (default none: ``-snes_type``).
    adjoint_prefix:
        Options prefix of the backward solve (default ``prefix + "adjoint_"``).
    comm:
        Communicator of the state (default: each process its own batch).
    options, adjoint_options:
        Program defaults under the forward prefix and under the adjoint prefix, keys
        without prefix or dash: PETSc's (``{"snes_type": "ngmres"}``,
        ``{"ksp_rtol": 1e-6}``) and ours (``{"deq_method": "phantom",
        "deq_phantom_steps": 5}``, ``{"deq_warm_start": True}``), each meaning what
        the same option on the command line means, which still wins. A ``deq_*`` key
        that is not one of ours, or a bad value of one, is a ``DEQOptionsError``.
    warm_start:
        Start each forward solve from the previous ``z*`` when the shapes
        match (a known DEQ speed-up when consecutive inputs are alike; off by
        default because it makes a batch's result depend on the previous one).
        ``-<prefix>deq_warm_start`` overrides it.
    z_shape:
        Shape of the state, or a function of ``x`` giving it (default:
        ``x.shape``: the state is shaped like the injected input). Needed whenever
        the cell's state is not shaped like ``x``: ``TanhCell(8, 5)`` on inputs
        ``(batch, 5)`` takes ``z_shape=lambda x: (x.shape[0], 8)``. A cell whose
        output is not shaped like the state, or that fails on its first evaluation
        with a state shaped like ``x`` by default, is a ``DEQInputError`` naming
        the shapes and this argument.
    independent_samples:
        Whether the cell treats the samples (the state's first dimension) apart,
        its only batch coupling being ``x``'s per-sample tensors (default: true, as
        for convolutions, group norm and attention within a sample). Then a lean
        solver (:mod:`deq_petsc.core.lean`) stops each sample once it has converged and
        evaluates the cell on the others only. Pass ``False`` for a cell that mixes
        samples: the batch is then iterated whole. A cell with a batch norm in
        training mode is taken as coupled whatever this says.
    adjoint_solve:
        The backward's linear solve as a callable of your own, ``fn(matvec, g) -> u``
        with ``matvec(u) = u - J_f^T u`` (jaxopt's ``solve`` argument), instead of the
        adjoint options' method (:mod:`deq_petsc.core.adjoint`).
    """

    def __init__(self, cell: Callable[[torch.Tensor, Any], torch.Tensor], prefix: str = "",
                 adjoint_prefix: str | None = None, comm=None, options: dict | None = None,
                 adjoint_options: dict | None = None, warm_start: bool = False,
                 z_shape=None, independent_samples: bool = True, adjoint_solve=None):
        super().__init__()
        self.cell = cell
        self.independent_samples = independent_samples
        self.prefix = prefix
        self.z_shape = z_shape
        own, solver_options = LAYER_OPTIONS.split(options, "DEQ(options=...)",
                                                  passed_on=(SOLVER_OPTIONS, LEAN_OPTIONS))
        self.solver = DEQSolver(prefix=prefix, comm=comm, options=solver_options)
        self.adjoint = AdjointSolver(prefix=prefix + "adjoint_" if adjoint_prefix is None
                                     else adjoint_prefix, comm=comm, ksp_options=adjoint_options,
                                     linear_solve=adjoint_solve)
        with inserted_defaults(prefix, own):
            self.warm_start = LAYER_OPTIONS.read(prefix,
                                                 deq_warm_start=warm_start)["deq_warm_start"]
        LAYER_OPTIONS.print_help(prefix, self.solver.comm, deq_warm_start=warm_start)
        self.last_stats = LayerStats()
        self._last_z: torch.Tensor | None = None
        self._last_x = None
        self._last_problem: FixedPointProblem | None = None
        self._tangent: ImplicitKSP | None = None
        self.last_radius_estimate: float | None = None

    def state_shape(self, x) -> tuple[int, ...] | None:
        """The state's shape for input ``x`` (``None``: shaped like ``x``)."""
        if self.z_shape is None:
            return None
        return tuple(self.z_shape(x)) if callable(self.z_shape) else tuple(self.z_shape)

    def forward(self, x, z0: torch.Tensor | None = None) -> torch.Tensor:
        z_star, problem = self.solve_fixed_point(x, z0)
        if not torch.is_grad_enabled():
            return z_star
        return self.attach(z_star, x, problem)

    def fixed_point_problem(self, x) -> FixedPointProblem:
        """``z = cell(z, x)`` for input ``x`` (detached), the state shaped by
        :meth:`state_shape`: what :meth:`solve_fixed_point` solves, and what solver
        comparisons and spectra of a trained model take."""
        return FixedPointProblem(self.cell, _detach(x), z_shape=self.state_shape(x),
                                 independent_samples=self.independent_samples
                                 and not _couples_samples(self.cell))

    def solve_fixed_point(self, x, z0: torch.Tensor | None = None):
        """``(z*, problem)`` for input ``x``, solved by the SNES with no graph kept."""
        self.solver.require_alive("this DEQ layer")
        problem = self.fixed_point_problem(x)
        if z0 is None and self.warm_start and self._last_z is not None \
                and self._last_z.shape == problem.z0.shape:
            z0 = self._last_z
        with torch.no_grad():
            z_star, fstats = self.solver.solve(problem, z0)
        self.last_stats = LayerStats(forward=fstats)
        self._last_z = z_star.detach()
        self._last_problem = problem
        return z_star, problem

    def attach(self, z_star: torch.Tensor, x, problem: FixedPointProblem) -> torch.Tensor:
        """``f(z*, x)`` with a graph to the parameters and ``x`` whose gradient is implicit.

        Backpropagating ``g`` through it solves the adjoint system, so the result is
        ``d z*/d(theta, x)^T g`` although the graph holds one application of ``f``.
        Each backward through it (``retain_graph=True`` allows several, e.g. the
        Jacobian-transpose products of a Gauss-Newton matrix) is one adjoint solve.
        """
        # One application of f with a graph: to the parameters and to x, not to z*.
        # Autograd tells whether anything upstream wants a gradient.
        z = self.cell(z_star, x)
        if not z.requires_grad:
            return z_star
        self._last_x = x
        stats = self.last_stats

        def implicit_gradient(g):
            if g is None:                 # an undefined gradient stays undefined
                return None
            if torch.is_grad_enabled():
                raise NotImplementedError(
                    "double backward through a DEQ layer is not supported: the adjoint "
                    "solve keeps no graph, so backward(create_graph=True) would give wrong "
                    "second derivatives. Use a Gauss-Newton product or an explicit network.")
            u, bstats = self.adjoint.solve(problem, z_star, g)
            stats.backward = bstats
            return u

        z.register_hook(implicit_gradient)
        return z

    def tangent(self, z_star: torch.Tensor, problem: FixedPointProblem,
                rhs: torch.Tensor) -> torch.Tensor:
        """``(I - J_f(z*))^{-1} rhs``: forward-mode implicit differentiation.

        With ``rhs`` the tangent of ``f(z*, x)`` along a direction of the parameters
        and of ``x`` (``z*`` held fixed), the result is the tangent of ``z*`` itself.
        A PETSc KSP on the matrix-free ``I - J_f`` (options prefix
        ``<prefix>tangent_``, program defaults those of the adjoint KSP).
        """
        self.solver.require_alive("this DEQ layer")
        if self._tangent is None:
            self._tangent = ImplicitKSP(self.prefix + "tangent_", self.solver.comm,
                                        self.adjoint.ksp_defaults, transpose=False)
        dz, stats = self._tangent.solve(problem, z_star, rhs)
        self.last_stats.tangent = stats
        if not solve_accepted(stats.converged, stats.reason_name, self.adjoint.accept_max_it,
                              bool(torch.isfinite(dz).all())):
            raise DEQConvergenceError.of(
                f"tangent solve (I - J_f) dz = r did not converge: {stats.reason_name} "
                f"after {stats.iterations} iterations; raise -{self.prefix}tangent_ksp_max_it "
                f"or loosen -{self.prefix}tangent_ksp_rtol", stats)
        return dz

    def jacobian_penalty(self, samples: int = 1,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Hutchinson estimate of ``||J_f(z*)||_F^2 / dim`` at the last forward, differentiable.

        Added to the loss it penalises the Jacobian's size during training (Bai, Koltun
        and Kolter, "Stabilizing equilibrium models by Jacobian regularization", 2021).
        It bounds the Frobenius norm, not the spectral radius: on the polarity task it
        did not stop the implicit-layers tutorial cell's spectral radius from reaching
        0.99-1.19; a cell that is contractive by construction (``ContractiveCell``) is
        the reliable remedy. Costs one ``f`` evaluation
        and one double-backward VJP per sample, through a single application of ``f``.
        ``generator`` (a CPU generator) makes the random probes reproducible, e.g. so a
        resumed training run draws what an uninterrupted one would.
        """
        if self._last_x is None:
            raise RuntimeError("jacobian_penalty() needs a forward pass with gradients first")
        z = self._last_z.detach().requires_grad_(True)
        fz = self.cell(z, self._last_x)
        total = 0.0
        for _ in range(samples):
            v = torch.randn(fz.shape, generator=generator, dtype=fz.dtype).to(fz.device)
            (vjp,) = torch.autograd.grad(fz, z, v, create_graph=True)
            total = total + vjp.pow(2).sum() / max(v.numel(), 1)   # 0 on an empty shard
        return total / samples

    def spectral_penalty(self, target: float = 0.9, steps: int = 4,
                         generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean over samples of ``max(rho_i - target, 0)^2``, differentiable, where ``rho_i``
        estimates the spectral radius of sample ``i``'s ``J_f`` at the last ``z*``.

        The Frobenius penalty bounds the mean squared singular value, which left the
        tutorial cell's radius near (or above) 1; this targets the radius itself, by
        power iteration with JVPs per sample, then ``rho_i = ||J_f u_i||`` for the unit
        ``u_i`` with a graph to the parameters.

        The estimate is :func:`~deq_petsc.core.diagnostics.sample_radii`: power iteration
        from the forward solve's last residual (``generator``, a CPU generator, draws
        its small random part, so a resumed run draws what an uninterrupted one
        would). Costs one ``f``, one double-backward graph and ``steps + 1`` backward
        passes.
        """
        if self._last_x is None:
            raise RuntimeError("spectral_penalty() needs a forward pass with gradients first")
        z = self._last_z.detach().requires_grad_(True)
        fz = self.cell(z, self._last_x)
        if len(z) == 0:                               # an empty shard: nothing to penalise
            return fz.sum() * 0.0
        rho = sample_radii(fz, z, steps, generator)
        self.last_radius_estimate = float(rho.detach().max())
        return torch.relu(rho - target).pow(2).mean()

    @torch.no_grad()
    def spectral_radius(self, iters: int = 50) -> float:
        """Estimated spectral radius of ``J_f`` at the last ``z*`` (JVP power iteration)."""
        if self._last_problem is None:
            raise RuntimeError("call the layer once before estimating the spectral radius")
        return spectral_radius(self._last_problem, self._last_z, iters=iters)

    def destroy(self):
        """Free the layer's PETSc objects: the forward SNES with its vectors and Jacobian
        (:meth:`DEQSolver.destroy`), the adjoint KSP or SNES and the tangent KSP.

        Collective over the layer's communicator: every rank calls it. Do not leave it
        to the GC, which frees them when it likes, on each rank apart. The torch side
        stays: the cell and its parameters, ``last_stats``, the last ``z*``
        (:meth:`spectral_radius` works). Calling it again does nothing; a forward,
        backward or tangent solve after it is a :class:`~deq_petsc.core.errors.DEQError`
        saying so (build a new ``DEQ`` around the same cell to go on).
        """
        self.solver.destroy()
        self.adjoint.destroy()
        if self._tangent is not None:
            self._tangent.destroy()
            self._tangent = None

    def extra_repr(self) -> str:
        return (f"prefix={self.prefix!r}, adjoint_prefix={self.adjoint.prefix!r}, "
                f"adjoint={self.adjoint.method}, warm_start={self.warm_start}")


def _detach(x):
    if isinstance(x, torch.Tensor):
        return x.detach()
    if isinstance(x, (tuple, list)):
        return type(x)(_detach(t) for t in x)
    return x


def _couples_samples(cell) -> bool:
    """Whether ``cell`` visibly mixes the samples of a batch: a batch norm in training
    mode (its statistics are the batch's), which a shrinking batch would change."""
    if not isinstance(cell, nn.Module):
        return False
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training
               for m in cell.modules())
