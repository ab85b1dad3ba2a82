"""Named solver configurations: PETSc options for a DEQ's forward and backward solves.

One registry serves the demo, ``deq-petsc compare`` and the docs. A set's
options are written without a prefix, as a user would type them for an
unprefixed layer; whoever runs it puts them under its own prefix (the demo:
``<name>_``), as *defaults*, so the command line still wins
(``-anderson_snes_anderson_m 3``).

The forward options drive the SNES; the backward ones the adjoint solve under
``adjoint_`` (GMRES by default: :mod:`deq_petsc.core.adjoint`). The paper's
comparison uses the same method both ways: forward iteration is Picard forward
and the fixed-point iteration ``u = J^T u + g`` backward; Anderson is Anderson
both ways.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass

from .registry import Registry


@dataclass(frozen=True)
class SolverSet:
    name: str
    forward: str                   # options of the forward SNES
    backward: str = ""             # options of the adjoint solve, without "adjoint_"
    about: str = ""
    new_forward: bool = True       # False: the forward solver of another set

    def options(self) -> dict:
        """Forward and backward options as one dict of database names (no prefix, no dash)."""
        opts = parse_options(self.forward)
        opts.update({f"adjoint_{k}": v for k, v in parse_options(self.backward).items()})
        return opts

    @property
    def text(self) -> str:
        back = " ".join(f"-adjoint_{t[1:]}" if t.startswith("-") else t
                        for t in shlex.split(self.backward))
        return f"{self.forward} {back}".strip()


def parse_options(text: str) -> dict:
    """``"-snes_type anderson -snes_monitor"`` -> ``{"snes_type": "anderson",
    "snes_monitor": None}``."""
    tokens = shlex.split(text)
    options, i = {}, 0
    while i < len(tokens):
        key = tokens[i]
        if not key.startswith("-") or key.startswith("--"):
            raise ValueError(f"expected -option, got {key!r} in {text!r}")
        value = None
        if i + 1 < len(tokens) and not is_option(tokens[i + 1]):
            value = tokens[i + 1]
            i += 1
        options[key[1:]] = value
        i += 1
    return options


@dataclass
class OptionSet:
    """A user's named option set (``compare --set``, ``--sets-file``): parsed here, without
    PETSc, so the command line refuses a malformed one before any work."""

    name: str
    options: dict            # option name (no dash) -> value (None for a flag)
    text: str

    @classmethod
    def parse(cls, line: str) -> "OptionSet":
        """``"name: -opt value -flag ..."``; a bare option list gets its text as name. The
        name ends at the first colon before an option (or the end), so a name may hold
        colons of its own (``http://x``); a one-line ValueError says what is wrong."""
        text = line.strip()
        name, rest = text, text
        if not text.startswith("-"):
            end = _NAME_END.search(text)
            start = end.start() if end else text.find(":")
            if start < 0:
                raise ValueError(f"option set {text!r}: no 'name:' before its options "
                                 f"(write 'name: -snes_type anderson')")
            name, rest = text[:start].strip(), text[start + 1:]
            if not name:
                raise ValueError(f"option set {text!r}: the name before ':' is empty")
        try:
            options = parse_options(rest)
        except ValueError as err:
            raise ValueError(f"option set {name!r}: {err}") from None
        return cls(name, options, rest.strip())


#: where a set's name ends: the first colon followed by an option or by nothing
_NAME_END = re.compile(r":(?=\s*(?:-|$))")


def read_option_sets(lines) -> list[OptionSet]:
    """Option sets from lines (a file's: blank lines and ``#`` comments skipped); each
    name once, since it names the set's row and its options prefix."""
    sets = [OptionSet.parse(line) for line in lines
            if line.strip() and not line.lstrip().startswith("#")]
    names = [s.name for s in sets]
    twice = [n for k, n in enumerate(names) if n in names[:k]]
    if twice:
        raise ValueError(f"option sets need distinct names: {twice[0]!r} is given twice (a "
                         f"name labels the set's row and its options prefix)")
    return sets


def is_option(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:
        float(token)                   # -1e-3 is a value, not an option
        return False
    except ValueError:
        return True


#: The lean types (deq_petsc.core.lean): PETSc's Picard and Anderson run on the model's own
#: tensors, PETSc's options, monitors and reasons kept; each sample stops at its own
#: tolerance (-deq_sample_stop each) where the cell allows it.
_PICARD = "-snes_type python -snes_python_type deq_petsc.core.lean.Picard"
_ANDERSON = "-snes_type python -snes_python_type deq_petsc.core.lean.Anderson -snes_anderson_m 5"
#: PETSc's own implementations of the same methods, for comparison.
_PETSC_PICARD = "-snes_type nrichardson -snes_linesearch_type basic"
_PETSC_ANDERSON = "-snes_type anderson -snes_anderson_m 5"
#: The paper's fixed-point solvers run to their tolerance or their iteration cap, with
#: no divergence test: where the cell is not contractive the iterate grows, the
#: solve ends at the cap (counted as not converged) and training goes on with it.
#: PETSc's own word for "no test" (PETSC_UNLIMITED); a huge number would not fit a
#: single-precision build's PetscReal.
_NO_DTOL = "-snes_divergence_tolerance unlimited"
#: The adjoint fixed point u = J^T u + g couples the samples (one VJP through the whole
#: batch's graph): its stopping test is PETSc's, on the whole batch, as before.
_BATCH_STOP = "-deq_sample_stop batch"

#: The registry, in the order tables show it; an installed package adds sets through the
#: entry-point group ``deq_petsc.solver_sets`` (a SolverSet each).
def _is_a_set(name: str, entry) -> None:
    if not isinstance(entry, SolverSet):
        raise TypeError(f"solver set {name!r}: register a SolverSet")


SOLVER_SETS: Registry[SolverSet] = Registry("solver set", check=_is_a_set,
                                            group="deq_petsc.solver_sets")
for _set in (
    SolverSet("picard", f"{_PICARD} {_NO_DTOL}",
              f"-deq_method snes {_PICARD} {_BATCH_STOP} {_NO_DTOL}",
              "forward iteration both ways: the paper's baseline"),
    SolverSet("anderson", f"{_ANDERSON} {_NO_DTOL}",
              f"-deq_method snes {_ANDERSON} {_BATCH_STOP} {_NO_DTOL}",
              "Anderson (m = 5) both ways: the paper's solver"),
    SolverSet("anderson-gmres", _ANDERSON, "-deq_method ksp -ksp_type gmres",
              "Anderson (m = 5) forward, a GMRES adjoint (Krylov needs no contraction)",
              new_forward=False),
    SolverSet("anderson20-gmres", _ANDERSON.replace("_m 5", "_m 20"),
              "-deq_method ksp -ksp_type gmres",
              "Anderson with a 20-deep window forward (nearer GMRES on hard equilibria), "
              "GMRES adjoint: the demo's best"),
    SolverSet("petsc-picard", f"{_PETSC_PICARD} {_NO_DTOL}",
              f"-deq_method snes {_PETSC_PICARD} {_NO_DTOL}",
              "PETSc's own Picard (nrichardson) both ways: what the lean type replaces"),
    SolverSet("petsc-anderson", f"{_PETSC_ANDERSON} {_NO_DTOL}",
              f"-deq_method snes {_PETSC_ANDERSON} {_NO_DTOL}",
              "PETSc's own Anderson both ways: what the lean type replaces"),
    SolverSet("ngmres", "-snes_type ngmres", "-deq_method ksp -ksp_type gmres",
              "nonlinear GMRES forward, GMRES adjoint"),
    SolverSet("jfnk", "-snes_type newtonls -snes_linesearch_type basic -ksp_type gmres "
              "-ksp_rtol 1e-2 -ksp_max_it 30 "
              "-snes_max_linear_solve_fail 1000", "-deq_method ksp -ksp_type gmres",
              "Newton-Krylov on exact JVPs (inexact Newton), GMRES adjoint"),
    SolverSet("anderson+npc", f"{_PETSC_ANDERSON} -npc_snes_type nrichardson "
              "-npc_snes_linesearch_type basic -npc_snes_max_it 1",
              "-deq_method ksp -ksp_type gmres",
              "PETSc's Anderson with a Picard step as nonlinear preconditioner, GMRES "
              "adjoint"),
):
    SOLVER_SETS.register(_set)
del _set


def forward_solvers() -> dict:
    """``name -> forward options`` of the sets that compare forward solvers (what
    ``deq-petsc compare`` and ``bench_regime.py`` run; a set that differs from another
    only in its backward solve says ``new_forward=False``)."""
    return {s.name: s.forward for s in SOLVER_SETS.values() if s.new_forward}


def compare_defaults() -> dict:
    """``name -> forward options`` that ``deq-petsc compare`` runs when given no set: the
    forward solvers, Anderson named by its window (``anderson5``) beside others' windows.
    Its help text is generated from this, so it cannot list other sets than it runs."""
    return {"anderson5" if name == "anderson" else name: forward
            for name, forward in forward_solvers().items()}


def get(name: str) -> SolverSet:
    """The set ``name``; an unknown name is a KeyError (and ValueError) listing the known."""
    return SOLVER_SETS[name]
