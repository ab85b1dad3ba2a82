"""The one specification of this package's own PETSc options (``-deq_*``, ``-train_*``,
and the PDE task's ``-pde_*``).

Each option is declared once, here: its type, default, allowed values and the
sentence that explains it. The same declaration reads the option from the
database (:meth:`OptionGroup.read`, with one-line errors for bad values),
prints it under ``-help`` in PETSc's format (:meth:`OptionGroup.print_help`),
and generates the reference in ``docs/options.md`` (``python -m
deq_petsc.core.options_spec``), so code, ``-help`` and docs cannot disagree. A test
checks that every option the package reads is declared here.

Importing this module does not start PETSc.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class OwnOption:
    name: str
    kind: str                      # "bool", "int", "real" or "string"
    default: object
    text: str
    choices: tuple = ()
    minimum: float | None = None   # inclusive
    maximum: float | None = None   # inclusive

    def within_range(self, value) -> bool:
        """``value`` inside [minimum, maximum]; a NaN is inside no range (every comparison
        with it is false, so a plain ``value < minimum`` test would let it through)."""
        if self.minimum is None and self.maximum is None:
            return True
        return (self.minimum is None or value >= self.minimum) and \
            (self.maximum is None or value <= self.maximum)

    def shown_default(self, value=None) -> str:
        value = self.default if value is None else value
        return str(value).lower() if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class OptionGroup:
    title: str          # the -help heading
    owner: str          # the class that reads them (the "manual page" of -help)
    prefix_rule: str    # where the group's prefix comes from (docs)
    options: tuple

    def __getitem__(self, name: str) -> OwnOption:
        for option in self.options:
            if option.name == name:
                return option
        raise KeyError(name)

    def read(self, prefix: str, **defaults) -> dict:
        """Every option of the group under ``prefix``: ``{name: value}``.

        ``defaults`` replace the declared defaults (a constructor argument, say);
        a value of the wrong type or outside its range is a one-line
        :class:`DEQOptionsError` naming the option.
        """
        from petsc4py import PETSc

        from .errors import DEQOptionsError
        opts = PETSc.Options(prefix)
        values = {}
        for o in self.options:
            default = defaults.get(o.name, o.default)
            try:
                value = {"bool": opts.getBool, "int": opts.getInt, "real": opts.getReal,
                         "string": opts.getString}[o.kind](o.name, default)
            except PETSc.Error:
                raise DEQOptionsError(f"-{prefix}{o.name} {opts.getString(o.name, '')}: not "
                                      f"a{'n' if o.kind == 'int' else ''} {o.kind}") from None
            if o.choices and value not in o.choices:
                raise DEQOptionsError(f"-{prefix}{o.name} {value}: must be one of "
                                      f"{', '.join(o.choices)}")
            if not o.within_range(value):
                raise DEQOptionsError(f"-{prefix}{o.name} {value}: must be in "
                                      f"[{o.minimum}, {o.maximum if o.maximum is not None else 'inf'}]")
            values[o.name] = value
        return values

    def split(self, options: dict | None, where: str, passed_on=()) -> tuple[dict, dict]:
        """``options`` (a constructor's program defaults, keys without the prefix) parted
        into ``(this group's, the rest)``; the rest is PETSc's and that of the groups in
        ``passed_on`` (read by another object under the same prefix).

        The caller puts its part into the database beneath the command line
        (``inserted_defaults``) around :meth:`read`, so ``{"deq_method": "phantom"}``
        means exactly what ``-<prefix>deq_method phantom`` would, and a bad value is the
        same one-line error. A key in our own namespaces that no group here declares
        would be ignored in silence (PETSc never reads it): it is refused, named, with
        the options that exist; so is a key written with its leading dash.
        """
        from .errors import DEQOptionsError
        mine, rest = {}, {}
        known = {o.name for group in (self, *passed_on) for o in group.options}
        for key, value in (options or {}).items():
            if key.startswith("-"):
                raise DEQOptionsError(f"{where}: option {key!r}: give names without the "
                                      f"leading dash ({key.lstrip('-')!r})")
            if key.startswith(OWN_NAMESPACES) and key not in known:
                raise DEQOptionsError(
                    f"{where}: {key!r} is not an option of ours here; the ones read under "
                    f"this prefix are {', '.join(sorted(known))}")
            (mine if any(o.name == key for o in self.options) else rest)[key] = value
        return mine, rest

    def print_help(self, prefix: str, comm=None, **defaults) -> None:
        """The group under ``-help``, once per title and prefix in a process."""
        from .petsc_options import OptionsHelp
        helper = OptionsHelp(self.title, prefix, comm)
        for o in self.options:
            helper.add(o.name, o.shown_default(defaults.get(o.name)), _help_text(o), self.owner)
        helper.print_if_requested()


#: The prefixes of our own option names (after the object's prefix): PETSc reads none.
OWN_NAMESPACES = ("deq_", "train_")


def _help_text(o: OwnOption) -> str:
    return o.text + (f" ({'|'.join(o.choices)})" if o.choices else "")


ACCEPT_MAX_IT = ("Use the last iterate when the solve reaches its iteration limit (counted "
                 "in the stats as not converged) instead of raising; NaN and other "
                 "divergence still raise")

SOLVER = OptionGroup("DEQ solver (deq_petsc)", "DEQSolver",
                     "the solver's prefix: none by default, the model's in training, "
                     "`<set>_` in the demo", (
    OwnOption("deq_check_finite", "bool", True,
              "Test every f(z, x) for NaN/Inf and report the first bad evaluation"),
    OwnOption("deq_jvp", "string", "reverse",
              "Jacobian-vector products: reverse (double backward through one graph per "
              "Newton step) or forward (dual numbers, no graph kept)",
              choices=("reverse", "forward")),
    OwnOption("deq_stats_view", "bool", False, "Print the statistics of every solve"),
    OwnOption("deq_accept_max_it", "bool", False, ACCEPT_MAX_IT),
))

ADJOINT = OptionGroup("DEQ adjoint (deq_petsc)", "AdjointSolver",
                      "the solver's prefix followed by `adjoint_`", (
    OwnOption("deq_method", "string", "ksp",
              "Backward solve; an -snes_type under the same prefix implies snes",
              choices=("ksp", "snes", "jfb", "phantom")),
    OwnOption("deq_phantom_steps", "int", 5, "Unrolled steps of the phantom gradient",
              minimum=1),
    OwnOption("deq_phantom_damping", "real", 1.0, "Damping lam of the phantom gradient",
              minimum=1e-12, maximum=1.0),
    OwnOption("deq_accept_max_it", "bool", False, ACCEPT_MAX_IT + " (an inexact gradient)"),
))

LAYER = OptionGroup("DEQ layer (deq_petsc)", "DEQ", "the solver's prefix", (
    OwnOption("deq_warm_start", "bool", False,
              "Start each forward solve from the previous z* when the shapes match"),
))

TAO_TRAINER = OptionGroup("TAO trainer (deq_petsc)", "TaoTrainer",
                          "the run's prefix (none from the CLI)", (
    OwnOption("train_hessian", "string", "gauss-newton",
              "Hessian of Newton-type TAO methods: gauss-newton (J^T H_out J, PSD) or exact "
              "(double backward; explicit models)", choices=("gauss-newton", "exact")),
    OwnOption("train_accept_failure", "bool", False,
              "Keep an epoch's iterate when TAO stops with a negative reason other than "
              "DIVERGED_MAXITS, instead of raising"),
))

LEAN = OptionGroup("Lean SNES types (deq_petsc)", "deq_petsc.core.lean",
                   "the SNES's prefix (`-snes_type python -snes_python_type "
                   "deq_petsc.core.lean.Anderson`)", (
    OwnOption("deq_sample_stop", "string", "each",
              "When the solve stops: batch (PETSc's test on the whole batch's norm, "
              "mixing over the batch), worst (every sample to rtol/atol of its own, the "
              "batch iterated until the last one) or each (the same rule, a sample "
              "leaving the batch once it meets it)", choices=("batch", "worst", "each")),
))

PDE = OptionGroup("Bratu data (deq_petsc)", "deq_petsc.science.data.pde",
                  "none (the data SNES of every draw answers to `-pde_snes_*`, "
                  "`-pde_ksp_*`, `-pde_pc_*`)", (
    OwnOption("pde_grid", "int", 17, "Nodes per side of the DMDA, boundary included (the "
              "surrogate predicts the (grid-2)^2 interior values)", minimum=5, maximum=257),
    OwnOption("pde_lambda_max", "real", 5.0, "Draws take lambda uniformly in [0, "
              "lambda_max] (the lower branch folds near 6.8 without a source)", minimum=0.0),
    OwnOption("pde_modes", "int", 3, "Sine modes per direction in the source (the draws "
              "have 1 + modes^2 parameters)", minimum=1, maximum=16),
    OwnOption("pde_source", "real", 10.0, "Scale S of the source; its coefficients are "
              "drawn uniformly in [-1, 1]", minimum=0.0),
))

GROUPS = (SOLVER, ADJOINT, LAYER, TAO_TRAINER, LEAN, PDE)


def markdown() -> str:
    """``docs/options.md``: the reference, generated from :data:`GROUPS`."""
    lines = ["# Options reference (generated)", "",
             "This package's own PETSc options, generated from `deq_petsc/core/options_spec.py` by",
             "`python -m deq_petsc.core.options_spec > docs/options.md` (a test checks the file is",
             "current). Every PETSc option of the objects (`-snes_*`, `-ksp_*`, `-tao_*`, ...)",
             "applies as well, under the same prefixes; `-help` lists both.", ""]
    for group in GROUPS:
        lines += [f"## {group.title.split(' (')[0]} (`{group.owner}`)", "",
                  f"Prefix: {group.prefix_rule}.", "",
                  "| option | type | default | meaning |", "|---|---|---|---|"]
        for o in group.options:
            lines.append(f"| `-{o.name}` | {o.kind} | `{o.shown_default()}` | "
                         f"{_help_text(o)} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown(), end="")
