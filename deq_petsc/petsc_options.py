"""Converged-reason names and the options-database helpers.

PETSc options are this package's configuration language. Program defaults go
into the database only where the user gave no value, just before
``setFromOptions()``, and are taken out again afterwards, so the command line
always wins and the database does not grow with every solver created.
"""

from __future__ import annotations

from contextlib import contextmanager

from petsc4py import PETSc


def _reason_names(enum_class):
    names = {}
    for name in dir(enum_class):
        if name.startswith(("CONVERGED_", "DIVERGED_")):
            names.setdefault(getattr(enum_class, name), name)
    names.setdefault(0, "CONVERGED_ITERATING")
    return names


SNES_REASONS = _reason_names(PETSc.SNES.ConvergedReason)
KSP_REASONS = _reason_names(PETSc.KSP.ConvergedReason)
TAO_REASONS = _reason_names(PETSc.TAO.ConvergedReason)


def snes_reason_name(reason: int) -> str:
    return SNES_REASONS.get(int(reason), f"UNKNOWN_REASON_{int(reason)}")


def ksp_reason_name(reason: int) -> str:
    return KSP_REASONS.get(int(reason), f"UNKNOWN_REASON_{int(reason)}")


def tao_reason_name(reason: int) -> str:
    return TAO_REASONS.get(int(reason), f"UNKNOWN_REASON_{int(reason)}")


def _option_string(value) -> str | None:
    if value is None or value is True:
        return None  # a flag: "-name" with no value
    if value is False:
        return "0"
    return str(value)


@contextmanager
def inserted_defaults(prefix: str, defaults: dict):
    """Put ``defaults`` under ``prefix`` where the database has no value yet.

    Yields the names inserted; they are removed on exit (a user's own values
    are never touched).
    """
    opts = PETSc.Options()
    inserted = []
    for key, value in (defaults or {}).items():
        name = f"{prefix}{key}"
        if not opts.hasName(name):
            opts.setValue(name, _option_string(value))
            inserted.append(name)
    try:
        yield inserted
    finally:
        for name in inserted:
            opts.delValue(name)


class OptionsHelp:
    """Print this package's options in PETSc's ``-help`` format.

    petsc4py has no binding for ``PetscOptionsBegin``; without this, ``-help``
    would list PETSc's options but not ours.
    """

    _printed: set = set()

    def __init__(self, title: str, prefix: str, comm=None):
        self.title = title
        self.prefix = prefix
        self.comm = comm if comm is not None else PETSc.COMM_WORLD
        self.entries = []

    def add(self, name: str, default, text: str, manpage: str = "DEQSolver"):
        self.entries.append((name, default, text, manpage))
        return self

    def print_if_requested(self):
        opts = PETSc.Options()
        if not opts.hasName("help"):
            return
        key = (self.title, self.prefix)
        if key in OptionsHelp._printed:
            return
        OptionsHelp._printed.add(key)
        lines = [f"{self.title} options -------------------------------------------------"]
        for name, default, text, manpage in self.entries:
            lines.append(f"  -{self.prefix}{name} <{default}>: {text} ({manpage})")
        PETSc.Sys.Print("\n".join(lines), comm=self.comm)
