"""Named exceptions for solves PETSc did not converge.

PETSc does not throw when a SNES or KSP fails; it sets a converged reason.
Every solver object in this package checks that reason and raises one of these,
so a failed solve can never be mistaken for an answer.
"""

from __future__ import annotations


class DEQError(RuntimeError):
    """Base class of this package's errors."""


class DEQConvergenceError(DEQError):
    """A PETSc solve ended with a negative (diverged) converged reason.

    Carries the reason (number and name), the iteration count and the residual
    norm history, so the caller can tell a slow solve from a blow-up.
    """

    def __init__(self, message, *, reason=None, reason_name=None, iterations=None,
                 history=None, stats=None):
        super().__init__(message)
        self.reason = reason
        self.reason_name = reason_name
        self.iterations = iterations
        self.history = list(history) if history is not None else []
        self.stats = stats

    @classmethod
    def of(cls, message, outcome, history=None):
        """The error for a failed solve's statistics (a
        :class:`~deq_petsc.core.outcome.SolveOutcome`): its reason, iterations and residual
        history (or ``history``) ride along."""
        return cls(message, reason=outcome.reason, reason_name=outcome.reason_name,
                   iterations=outcome.iterations,
                   history=outcome.residual_norms if history is None else history,
                   stats=outcome)


class DEQNonFiniteError(DEQConvergenceError):
    """The cell produced NaN or Inf: a bug or an overflow, not slow convergence."""


class DEQOptionsError(DEQError, ValueError):
    """Options PETSc rejected (an unknown type, a value out of range, not a number), or
    accepted but this package cannot honour. ``petsc_message``: PETSc's own words, when
    PETSc rejected them."""

    petsc_message: str | None = None


class DEQInputError(DEQError, ValueError):
    """An input the science tasks cannot use: invalid SMILES or CIF, too large, ..."""


class DEQTrainingError(DEQError):
    """Training that blew up (a non-finite or exploding loss): the last good checkpoint
    is kept, the run ends with an error instead of saving the blown-up model."""


class DEQCacheError(DEQError):
    """A cache entry that is corrupt or stale (it is rebuilt, never used)."""


class DEQCappedSolveWarning(UserWarning):
    """A forward solve stopped at its iteration limit and its last iterate was used
    (``-deq_accept_max_it``, a loaded model's default): the answer is not the model's
    equilibrium. The command line reports these in its own words and silences this."""
