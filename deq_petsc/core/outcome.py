"""``SolveOutcome``: what every PETSc solve in the package reports, whatever solved it.

A forward SNES solve (:class:`~deq_petsc.core.solver.SolveStats`), a backward solve
(:class:`~deq_petsc.core.adjoint.AdjointStats`), a tangent or adjoint KSP
(:class:`~deq_petsc.core.adjoint.KSPStats`) and a TAO training solve
(:class:`~deq_petsc.science.train.tao.TaoResult`) all end the same way: a method, a
converged reason, a number of iterations, a residual-norm history and a wall
time. They are one family (TorchDEQ's single ``SolverStat``) so that code which
reports, logs or checks a solve reads one set of names, and each member adds
only its own counts. It is a module of its own, not part of
:mod:`~deq_petsc.core.convergence`, because it records a solve and needs neither
PETSc nor torch: the stopping rules and the acceptance policy decide one.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar


@dataclass
class SolveOutcome:
    """How one solve ended and what it cost.

    ``reason`` is PETSc's converged reason of the solver that ran (positive:
    converged, negative: diverged); ``reason_name`` its name. ``residual_norms``
    is the monitored norm per iteration (``||F||`` of a SNES, ``||r||`` of a KSP,
    ``||g||`` of TAO), ``time`` wall seconds. Whether a solve that did not converge
    is still used is the caller's policy (:func:`~deq_petsc.core.convergence.solve_accepted`).
    """

    method: str
    reason: int
    reason_name: str
    iterations: int
    residual_norms: list[float] = field(default_factory=list)
    time: float = 0.0

    #: what ``summary()`` calls the residual, and what it puts before the method
    RESIDUAL: ClassVar[str] = "||r||"
    KIND: ClassVar[str] = ""
    #: properties that ``as_dict()`` adds to the fields
    DERIVED: ClassVar[tuple[str, ...]] = ("converged", "initial_residual", "final_residual",
                                          "relative_residual")

    @classmethod
    def from_outcome(cls, outcome: SolveOutcome, **own):
        """A ``cls`` with ``outcome``'s common fields; ``own`` gives (or overrides) the rest."""
        common = {f.name: getattr(outcome, f.name) for f in fields(SolveOutcome)}
        return cls(**{**common, **own})

    @property
    def converged(self) -> bool:
        return self.reason > 0

    @property
    def initial_residual(self) -> float:
        return self.residual_norms[0] if self.residual_norms else math.nan

    @property
    def final_residual(self) -> float:
        return self.residual_norms[-1] if self.residual_norms else math.nan

    @property
    def relative_residual(self) -> float:
        r0 = self.initial_residual
        return self.final_residual / r0 if r0 and math.isfinite(r0) else math.nan

    def as_dict(self) -> dict:
        """The fields and the derived values, as plain data: standard JSON, so a value
        that is not a finite number (no residual recorded, a NaN norm) is ``None``."""
        d = asdict(self)
        d.update({name: getattr(self, name) for name in self.DERIVED})
        return _plain(d)

    def _cost_summary(self) -> str:
        """The member's own counts, as ``summary()`` shows them (``", 20 f evals"``)."""
        return ""

    def summary(self) -> str:
        residual = (f"; {self.RESIDUAL} {self.initial_residual:.3e} -> "
                    f"{self.final_residual:.3e} (rel {self.relative_residual:.2e})"
                    if self.residual_norms else "")
        return (f"{self.KIND}{self.method}: {self.reason_name} after {self.iterations} its"
                f"{self._cost_summary()}{residual} in {self.time:.4f} s")


def _plain(value):
    """``value`` with every non-finite float (NaN, +-inf) replaced by ``None``, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
