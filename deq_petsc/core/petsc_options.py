"""Converged-reason names and the options-database helpers.

PETSc options are this package's configuration language. Program defaults go
into the database only where the user gave no value, just before
``setFromOptions()``, and are taken out again afterwards, so the command line
always wins and the database does not grow with every solver created.
"""

from __future__ import annotations

from contextlib import contextmanager

from petsc4py import PETSc

from .errors import DEQOptionsError


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


#: Words of options that only show or report (monitors, viewers, converged reasons,
#: Jacobian tests): they change no number, so a resume does not bring them back and a
#: cache key leaves them out.
OUTPUT_WORDS = ("monitor", "view", "reason", "test")


def changes_no_number(name: str) -> bool:
    """Whether the option ``name`` (no dash) only shows or reports (:data:`OUTPUT_WORDS`)."""
    return any(word in name.split("_") for word in OUTPUT_WORDS)


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


@contextmanager
def options_checked(obj, what: str):
    """``setFromOptions()`` (and friends) of ``obj``, with PETSc's rejection as one line.

    PETSc raises an error code and its own traceback when an option value is
    wrong (an unknown ``-snes_type``, ``-snes_rtol abc``, ``-snes_anderson_m -1``);
    this names the object and its prefix and keeps PETSc's own last word, e.g.
    ``the options of the forward SNES (prefix anderson_) were rejected by PETSc:
    Unable to find requested SNES type foo``.
    """
    try:
        yield
    except PETSc.Error as err:
        prefix = obj.getOptionsPrefix() or ""
        message = petsc_message(err)
        error = DEQOptionsError(
            f"the options of {what} ({f'prefix {prefix}' if prefix else 'no prefix'}) were "
            f"rejected by PETSc: {message}")
        error.petsc_message = message
        raise error from None


def petsc_message(err) -> str:
    """The last line of PETSc's error stack: what was wrong, in PETSc's words; or, for an
    error raised in Python inside PETSc (a python type: ``-snes_python_type x.Y`` that
    does not import), that Python exception, which petsc4py chains as the cause."""
    cause = getattr(err, "__cause__", None)
    if cause is not None:
        first = str(cause).splitlines()[0] if str(cause) else ""
        return f"{type(cause).__name__}: {first}".rstrip(": ")
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        text = line.split("]", 1)[1].strip() if line.startswith("[") else line
        if text and "()" not in text and not text.startswith(("See https", "error code")) \
                and "petsc.org" not in text:
            return text
    return f"PETSc error code {getattr(err, 'ierr', '?')}"


#: Integer options PETSc takes without checking that they are positive (a negative
#: Anderson depth reaches the allocator as 2**64 bytes and "Out of memory").
POSITIVE_INTS = ("snes_anderson_m", "snes_ngmres_m", "ksp_gmres_restart", "snes_max_it",
                 "ksp_max_it")


def check_positive_ints(prefix: str, names=POSITIVE_INTS) -> None:
    """Refuse ``-<prefix>name k`` with ``k < 1`` (or not an integer) in one line."""
    opts = PETSc.Options(prefix)
    for name in names:
        if not opts.hasName(name):
            continue
        value = opts.getString(name)
        try:
            number = int(value)
        except (TypeError, ValueError):
            raise DEQOptionsError(f"-{prefix}{name} {value}: not an integer") from None
        if number < 1:
            raise DEQOptionsError(f"-{prefix}{name} {value}: must be at least 1")


def check_accepted(kind: str, prefix: str, defaults: dict, what: str) -> None:
    """Let a throwaway PETSc ``kind`` (``"snes"``, ``"ksp"`` or ``"tao"``) read the options
    under ``prefix``, ``defaults`` beneath the command line, and destroy it.

    A run's own solvers read their options only at their first solve, once the size of
    a batch is known; this makes an option PETSc rejects (``-snes_type foo``,
    ``-snes_anderson_m 0``, ``-tao_type foo``) end the command in one line before the
    run touches its folder. Skipped under ``-help``, which would list the options twice.
    """
    if PETSc.Options().hasName("help"):
        return
    obj = {"snes": PETSc.SNES, "ksp": PETSc.KSP, "tao": PETSc.TAO}[kind]().create(
        comm=PETSc.COMM_SELF)
    try:
        obj.setOptionsPrefix(prefix)
        with inserted_defaults(prefix, defaults), options_checked(obj, what):
            check_positive_ints(prefix)
            if kind == "tao":
                obj.setType(PETSc.Options(prefix).getString("tao_type", defaults["tao_type"]))
            else:            # as the run's own: a python Mat has no entries to precondition
                (obj.getKSP() if kind == "snes" else obj).getPC().setType(PETSc.PC.Type.NONE)
            obj.setFromOptions()
    finally:
        obj.destroy()
