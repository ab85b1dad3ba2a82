"""The one guard around every method PETSc calls back (SNES functions, python ``Mat``
products, TAO objectives).

PETSc reports a Python exception raised inside a callback only as an error code,
and may even go on (a line search treats a failed evaluation as a bad step), so
the exception itself would be lost. The guard keeps the *first* exception on the
owning object's ``error`` attribute, for the solver that called PETSc to re-raise
after the solve (a bug in the cell, a failure on one MPI rank, Ctrl-C), and wraps
the call in its ``-log_view`` event.
"""

from __future__ import annotations

import functools


def petsc_callback(event=None, owner: str | None = None):
    """Decorate a callback method.

    ``event``: a ``PETSc.Log.Event`` to begin and end around the call. ``owner``: the
    attribute of ``self`` that holds ``error`` (default ``self``; ``"problem"`` for the
    helper objects of a TAO problem, falling back to ``self``).
    """
    def decorate(method):
        @functools.wraps(method)
        def guarded(self, *args):
            if event is not None:
                event.begin()
            try:
                return method(self, *args)
            except BaseException as err:
                holder = getattr(self, owner, self) if owner else self
                holder.error = holder.error or err
                raise
            finally:
                if event is not None:
                    event.end()
        return guarded
    return decorate
