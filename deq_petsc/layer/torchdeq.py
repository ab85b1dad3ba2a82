"""PETSc solvers for TorchDEQ users: one line registers them in TorchDEQ's solver registry.

    from deq_petsc.layer import torchdeq as petsc_torchdeq
    petsc_torchdeq.register("petsc")                 # options prefix "petsc_"
    deq = torchdeq.get_deq(f_solver="petsc", b_solver="petsc", ift=True, ...)

Then ``-petsc_snes_type anderson -petsc_snes_anderson_m 5 -petsc_snes_monitor``
(or ``newtonls``, ``ngmres``, ...) choose the method for the forward fixed point
and for the backward one (TorchDEQ's implicit-differentiation fixed point
``u = J^T u + g``). The solver has TorchDEQ's signature and semantics:
``max_iter``, ``tol`` and ``stop_mode`` (``abs``: ``||f(z_b) - z_b||``, ``rel``:
the same over ``||f(z_b)|| + 1e-9``, every sample ``b`` below ``tol``) become a
SNES convergence test (:class:`~deq_petsc.core.convergence.PerSampleTest`); the
returned ``info`` is TorchDEQ's ``SolverStat`` (``abs_lowest``, ``rel_lowest``,
``abs_trace``, ``rel_trace``, ``nstep``, per sample), so TorchDEQ's logging and
corrections keep working.

Newton-type methods work in both directions. TorchDEQ's backward hands the solver
``u -> J^T u + g`` computed by ``autograd.grad`` without ``create_graph``: a map
autograd cannot differentiate again. It is affine, so its Jacobian-vector products
come from differences (:meth:`~deq_petsc.core.problem.Linearization.has_graph`), exact up
to rounding, and Newton converges on it as with exact products. What no
difference gives is a transpose product (its transpose is ``J`` itself, whose
graph TorchDEQ keeps to itself): a method that asks for one (``newtontr``, whose
trust region needs the gradient ``J^T F`` of ``||F||^2``) is refused in one line,
naming the type, at its first such product. Reaching ``max_iter`` returns the last iterate, as
TorchDEQ's solvers return their best one; NaN/Inf and PETSc divergence raise
named errors; options PETSc rejects raise :class:`~deq_petsc.core.errors.DEQOptionsError`.

TorchDEQ is an optional extra (``pip install deq_petsc[torchdeq]``); the core
package never imports it.
"""

from __future__ import annotations

import torch
from petsc4py import PETSc

from deq_petsc.core.convergence import PerSampleTest
from deq_petsc.core.errors import DEQConvergenceError, DEQNonFiniteError, DEQOptionsError
from deq_petsc.core.problem import FixedPointProblem, NoGraphError
from deq_petsc.core.solver import DEQSolver

#: The SNES may run as long as TorchDEQ's ``max_iter`` asks; the per-sample test stops it.
#: PETSc's own Anderson: TorchDEQ's per-sample test reads the SNES's vectors at every
#: iteration, which the lean types (deq_petsc.core.lean) fill only at the end.
_UNBOUNDED = {"snes_max_it": 1_000_000, "snes_stol": 0.0, "snes_type": "anderson"}


class TorchDEQSolver:
    """A callable with TorchDEQ's solver signature, solving with a PETSc SNES.

    One :class:`DEQSolver` (options prefix ``prefix``) serves every call; it is
    set up again only when the state's shape, dtype or device changes.
    """

    def __init__(self, prefix: str = "petsc_", comm=None, options: dict | None = None):
        self.prefix = prefix
        self.comm = comm
        self.options = {**_UNBOUNDED, **(options or {})}
        self._solver: DEQSolver | None = None
        self.last_stats = None
        self.calls = 0

    def _get_solver(self) -> DEQSolver:
        if self._solver is None:
            self._solver = DEQSolver(prefix=self.prefix, comm=self.comm, options=self.options,
                                     check_convergence=False)
        return self._solver

    def __call__(self, func, x0, max_iter=50, tol=1e-3, stop_mode="abs", indexing=None,
                 **kwargs):
        from torchdeq.solver.stat import SolverStat

        self.calls += 1
        batch = x0.shape[0] if x0.dim() >= 2 else x0.numel()      # TorchDEQ's batch rule
        keep = sorted(set(indexing or []))
        test = PerSampleTest(batch, tol, stop_mode, max_it=max_iter, keep_steps=keep)
        problem = FixedPointProblem(lambda z, _: func(z), None, z0=x0.detach())
        solver = self._get_solver()
        try:
            solver.snes.setConvergenceTest(test)
            z, stats = solver.solve(problem, x0.detach())
        except PETSc.Error as err:
            raise DEQOptionsError(
                f"PETSc could not run the TorchDEQ solver with the options under prefix "
                f"{self.prefix!r} (PETSc error {err.ierr}; e.g. an unknown -{self.prefix}snes_type)"
            ) from None
        except NoGraphError:
            raise DEQOptionsError(
                f"-{self.prefix}snes_type {solver.snes.getType()} needs transpose products "
                f"J^T v, which TorchDEQ's backward map u -> J^T u + g cannot give (it is "
                f"computed by autograd.grad without a graph); for b_solver use a type that "
                f"needs none: newtonls, anderson, ngmres, nrichardson") from None
        self.last_stats = stats
        if stats.nonfinite_evals:
            raise DEQNonFiniteError.of(
                f"TorchDEQ solve ({stats.snes_type}): f(z) produced NaN/Inf at evaluation "
                f"{stats.first_nonfinite_eval}", stats)
        if not stats.converged and stats.reason_name != "DIVERGED_MAX_IT":
            raise DEQConvergenceError.of(
                f"TorchDEQ solve ({stats.snes_type}) diverged: {stats.reason_name} after "
                f"{stats.iterations} iterations", stats)
        info = SolverStat.from_solver_info(stop_mode, *_torchdeq_traces(test, max_iter, x0))
        trajectory = [test.kept[s].view(x0.shape).to(device=x0.device, dtype=x0.dtype)
                      for s in keep if s in test.kept]
        if keep and not trajectory:
            trajectory = [z]
        return z.view_as(x0), trajectory, info

    def destroy(self):
        if self._solver is not None:
            self._solver.destroy()
            self._solver = None


def _torchdeq_traces(test: PerSampleTest, max_iter: int, x0):
    """TorchDEQ's (lowest_dict, trace_dict, lowest_step_dict) from the per-sample history.

    TorchDEQ counts f evaluations from 1 and starts its traces with a 1e8
    placeholder; SNES iterate ``k`` is TorchDEQ step ``k + 1``. Traces are padded
    to ``max_iter + 1`` with the lowest values, as TorchDEQ pads them.
    """
    batch = test.batch
    device = x0.device
    init = torch.full((batch,), 1e8, dtype=torch.float32, device=device)
    trace = {"abs": [init.clone()], "rel": [init.clone()]}
    lowest = {"abs": init.clone(), "rel": init.clone()}
    step = {"abs": torch.zeros(batch, device=device), "rel": torch.zeros(batch, device=device)}
    for k, res in enumerate(test.history):
        for mode in ("abs", "rel"):
            r = res[mode].to(device=device, dtype=torch.float32)
            trace[mode].append(r)
            better = r < lowest[mode]
            lowest[mode] = torch.where(better, r, lowest[mode])
            step[mode] = torch.where(better, torch.full_like(step[mode], k + 1), step[mode])
    for mode in ("abs", "rel"):      # padded with one shared tensor, as TorchDEQ pads them
        trace[mode].extend([lowest[mode]] * max(max_iter + 1 - len(trace[mode]), 0))
    return lowest, trace, step


_REGISTERED: dict[str, TorchDEQSolver] = {}


def register(name: str = "petsc", prefix: str | None = None, comm=None,
             options: dict | None = None) -> TorchDEQSolver:
    """Register a PETSc solver in TorchDEQ as ``name`` (options prefix ``name + "_"``)."""
    from torchdeq.solver import register_solver

    solver = TorchDEQSolver(prefix=f"{name}_" if prefix is None else prefix, comm=comm,
                            options=options)
    register_solver(name, solver)
    if name in _REGISTERED:
        _REGISTERED[name].destroy()
    _REGISTERED[name] = solver
    return solver
