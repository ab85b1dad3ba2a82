"""Named solver configurations: PETSc options for a DEQ's forward and backward solves.

One registry serves the demo, ``deq-petsc compare`` and the docs. A set's
options are written without a prefix, as a user would type them for an
unprefixed layer; whoever runs it puts them under its own prefix (the demo:
``<name>_``), as *defaults*, so the command line still wins
(``-anderson_snes_anderson_m 3``).

The forward options drive the SNES; the backward ones the adjoint solve under
``adjoint_`` (GMRES by default: :mod:`deq_petsc.adjoint`). The paper's
comparison uses the same method both ways: forward iteration is Picard forward
and the fixed-point iteration ``u = J^T u + g`` backward; Anderson is Anderson
both ways.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass


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


def is_option(token: str) -> bool:
    if not token.startswith("-"):
        return False
    try:
        float(token)                   # -1e-3 is a value, not an option
        return False
    except ValueError:
        return True


_PICARD = "-snes_type nrichardson -snes_linesearch_type basic"
_ANDERSON = "-snes_type anderson -snes_anderson_m 5"
#: The paper's fixed-point solvers run to their tolerance or their iteration cap, with
#: no divergence test: where the cell is not contractive the iterate grows, the
#: solve ends at the cap (counted as not converged) and training goes on with it.
#: PETSc's own word for "no test" (PETSC_UNLIMITED); a huge number would not fit a
#: single-precision build's PetscReal.
_NO_DTOL = "-snes_divergence_tolerance unlimited"

#: The registry, in the order tables show it.
SOLVER_SETS = {s.name: s for s in (
    SolverSet("picard", f"{_PICARD} {_NO_DTOL}", f"-deq_method snes {_PICARD} {_NO_DTOL}",
              "forward iteration both ways: the paper's baseline"),
    SolverSet("anderson", f"{_ANDERSON} {_NO_DTOL}", f"-deq_method snes {_ANDERSON} {_NO_DTOL}",
              "Anderson (m = 5) both ways: the paper's solver"),
    SolverSet("anderson-gmres", _ANDERSON, "-deq_method ksp -ksp_type gmres",
              "Anderson (m = 5) forward, a GMRES adjoint (Krylov needs no contraction)",
              new_forward=False),
    SolverSet("anderson20-gmres", "-snes_type anderson -snes_anderson_m 20",
              "-deq_method ksp -ksp_type gmres",
              "Anderson with a 20-deep window forward (nearer GMRES on hard equilibria), "
              "GMRES adjoint: the demo's best"),
    SolverSet("ngmres", "-snes_type ngmres", "-deq_method ksp -ksp_type gmres",
              "nonlinear GMRES forward, GMRES adjoint"),
    SolverSet("jfnk", "-snes_type newtonls -snes_linesearch_type basic -ksp_type gmres "
              "-ksp_rtol 1e-2 -ksp_max_it 30 "
              "-snes_max_linear_solve_fail 1000", "-deq_method ksp -ksp_type gmres",
              "Newton-Krylov on exact JVPs (inexact Newton), GMRES adjoint"),
    SolverSet("anderson+npc", f"{_ANDERSON} -npc_snes_type nrichardson "
              "-npc_snes_linesearch_type basic -npc_snes_max_it 1",
              "-deq_method ksp -ksp_type gmres",
              "Anderson with a Picard step as nonlinear preconditioner, GMRES adjoint"),
)}


def forward_solvers() -> dict:
    """``name -> forward options`` of the sets that compare forward solvers (what
    ``deq-petsc compare`` and ``bench_regime.py`` run; a set that differs from another
    only in its backward solve says ``new_forward=False``)."""
    return {s.name: s.forward for s in SOLVER_SETS.values() if s.new_forward}


def get(name: str) -> SolverSet:
    try:
        return SOLVER_SETS[name]
    except KeyError:
        raise KeyError(f"no solver set {name!r}; known: {', '.join(SOLVER_SETS)}") from None
