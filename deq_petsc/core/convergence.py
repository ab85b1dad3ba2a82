"""Per-sample stopping rules for a batched SNES, in TorchDEQ's definitions.

PETSc's default test is global: ``||F(z)|| <= rtol ||F(z0)||`` over the whole
batch. DEQ libraries stop when *every sample* is solved:

* ``abs``: ``max_b ||f(z_b) - z_b|| < tol``
* ``rel``: ``max_b ||f(z_b) - z_b|| / (||f(z_b)|| + 1e-9) < tol``

(TorchDEQ's ``stop_mode``). :class:`PerSampleTest` is that rule as a SNES
convergence test, so PETSc solvers and TorchDEQ's solvers can be raced to the
same tolerance, and TorchDEQ users get the rule they know.
"""

from __future__ import annotations

import torch
from petsc4py import PETSc

from .interop import vec_local_view

STOP_MODES = ("abs", "rel")

#: How SNES, KSP (DIVERGED_MAX_IT) and TAO (DIVERGED_MAXITS) say "stopped at the cap".
ITERATION_CAP = ("DIVERGED_MAX_IT", "DIVERGED_MAXITS")


def solve_accepted(converged: bool, reason_name: str, accept_cap: bool, finite: bool) -> bool:
    """The one acceptance policy of every solve in the package (forward SNES, adjoint
    and tangent KSP/SNES, TAO epoch): a converged solve is used; a solve stopped at its
    iteration cap is used only where the caller accepts the cap (``-deq_accept_max_it``,
    a TAO epoch's budget) *and* its result is finite (the solve goes on from its last
    iterate and is counted as not converged); anything else raises."""
    return converged or (accept_cap and reason_name in ITERATION_CAP and finite)


class PerSampleTest:
    """``snes.setConvergenceTest(PerSampleTest(...))``: stop when every sample meets ``tol``.

    ``batch`` is this rank's number of samples (the state's leading dimension);
    the maximum is taken over all ranks. ``history`` keeps, per iteration, the
    per-sample residuals of ``stop_mode`` (TorchDEQ's trace).
    """

    def __init__(self, batch: int, tol: float, stop_mode: str = "rel", max_it: int | None = None,
                 comm=None, keep_steps=()):
        if stop_mode not in STOP_MODES:
            raise ValueError(f"stop_mode must be one of {STOP_MODES}, got {stop_mode!r}")
        self.batch, self.tol, self.stop_mode, self.max_it = batch, tol, stop_mode, max_it
        self.comm = comm
        self.history: list[dict[str, torch.Tensor]] = []
        self.keep_steps = set(keep_steps)          # TorchDEQ's indexing: steps to keep
        self.kept: dict[int, torch.Tensor] = {}

    def residuals(self, snes) -> dict[str, torch.Tensor]:
        """Per-sample ``abs`` and ``rel`` residuals at the current iterate (this rank's)."""
        F = vec_local_view(snes.getFunction()[0], "r").view(self.batch, -1)
        z = vec_local_view(snes.getSolution(), "r").view(self.batch, -1)
        abs_diff = F.norm(dim=1)
        fz_norm = (z - F).norm(dim=1)                 # f(z) = z - F(z)
        return {"abs": abs_diff, "rel": abs_diff / (fz_norm + 1e-9)}

    def __call__(self, snes, its, norms) -> int:
        res = self.residuals(snes)
        self.history.append(res)
        if its + 1 in self.keep_steps:             # TorchDEQ numbers f evaluations from 1
            self.kept[its + 1] = vec_local_view(snes.getSolution(), "r").clone()
        worst = float(res[self.stop_mode].max()) if self.batch else 0.0
        comm = self.comm if self.comm is not None else snes.getComm()
        if comm.getSize() > 1:
            from mpi4py import MPI
            worst = comm.tompi4py().allreduce(worst, op=MPI.MAX)
        fnorm = norms[2] if isinstance(norms, (tuple, list)) else norms
        if fnorm != fnorm:                             # NaN
            return PETSc.SNES.ConvergedReason.DIVERGED_FNORM_NAN
        if worst < self.tol:
            return PETSc.SNES.ConvergedReason.CONVERGED_FNORM_ABS if self.stop_mode == "abs" \
                else PETSc.SNES.ConvergedReason.CONVERGED_FNORM_RELATIVE
        max_it = self.max_it if self.max_it is not None else snes.getTolerances()[3]
        if its >= max_it:
            return PETSc.SNES.ConvergedReason.DIVERGED_MAX_IT
        return PETSc.SNES.ConvergedReason.ITERATING
