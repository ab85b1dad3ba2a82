"""A training run's settings, declared once: what ``deq-petsc train`` and the trainers take.

Each field of :class:`TrainConfig` carries, beside its type and default, what the
command line says of it (help, choices, flag name), the range it must lie in and
whether a resumed run may change it (:class:`Setting`). The command line's flags and
their checks, ``--resume``'s rules and ``docs/settings.md`` are generated from these
declarations (``python -m deq_petsc.cli.settings_doc``), so a new training setting is
one field here. The demo's own settings extend this class
(:class:`deq_petsc.studies.demo.DemoConfig`).

Its model fields (``width``, ``kind``, ``depth``, ``cell``, ``gamma``, ``dtype``,
``device``, ``seed``) are also what :func:`deq_petsc.science.inference.build_model` builds
from, so it sits below both training and inference and imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import MISSING, Field, dataclass, field, fields, replace
from typing import Any, Callable

#: ``Setting.before_the_field`` of a field whose absence from an old checkpoint says nothing
#: of how it trained: a resumed run keeps this command line's value
KEEP_MINE = object()
#: what a field's type annotation (a string, under ``from __future__ import annotations``)
#: reads from the command line
_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


@dataclass(frozen=True)
class Setting:
    """What the command line and ``--resume`` need to know of one field."""
    help: str
    choices: tuple = ()
    #: the value's range, and what it must be in the one-line error (``--lr -1: must be ...``)
    check: Callable[[Any], bool] | None = None
    must_be: str = ""
    #: the flag's name where it is not the field's (``kind`` is ``--model``); None: no flag
    flag: str | None = ""
    #: what the default None stands for, shown in the help (``16; bratu: 64 units``)
    unset: str = ""
    #: a boolean typed as ``--no-<flag>`` (on by default), not ``--flag/--no-flag``
    negative: bool = False
    #: a resumed run keeps the checkpoint's value (its data and model); typing another
    #: is refused rather than noted
    fixed_on_resume: bool = False
    #: what a checkpoint written before the field existed trained with
    before_the_field: Any = KEEP_MINE
    #: how the flag's text becomes the value, where the type alone does not say
    parse: Callable[[str], Any] | None = None


def setting(default, help: str, **how) -> Any:
    """A dataclass field with its :class:`Setting` (``default`` may be a factory's result:
    tuples and other immutable values only)."""
    return field(default=default, metadata={"setting": Setting(help, **how)})


def again(cls, name: str, default, **how) -> Any:
    """``name``'s declaration in ``cls`` with another default (a subclass's own), and
    ``how`` changed in its :class:`Setting`."""
    return field(default=default,
                 metadata={"setting": replace(declared(cls)[name][1], **how)})


def declared(cls) -> dict[str, tuple[Field, Setting]]:
    """The fields of a settings class that carry a :class:`Setting`, by name."""
    return {f.name: (f, f.metadata["setting"]) for f in fields(cls) if "setting" in f.metadata}


def flag_of(cls, name: str) -> str | None:
    """``--batch-size`` for ``batch_size``; None for a setting without a flag."""
    s = declared(cls)[name][1]
    if s.flag is None:
        return None
    return "--" + (s.flag or name).replace("_", "-")


def typed_flag(cls, name: str) -> str | None:
    """The flag a user types to set ``name``: ``--no-sums`` for a negative boolean (on by
    default), otherwise :func:`flag_of`'s."""
    flag, s = flag_of(cls, name), declared(cls)[name][1]
    return "--no-" + flag[2:] if flag and s.negative else flag


def value_type(f: Field):
    """The type the command line converts a field's text to (``int | None``: int); a
    field of another type must say how in its ``Setting.parse``."""
    if isinstance(f.type, type):
        return f.type
    kind = _TYPES.get(str(f.type).split("|")[0].strip())
    if kind is None and f.metadata["setting"].parse is None:
        raise TypeError(f"setting {f.name}: of type {f.type}, give Setting.parse")
    return kind


def _positive(v):
    return 0 < v < float("inf")


@dataclass
class TrainConfig:
    """A training run's settings: what ``deq-petsc train`` and the trainers take."""
    task: str = setting(MISSING, "the science task", fixed_on_resume=True)
    epochs: int = setting(10, "epochs of training", check=lambda v: v >= 1,
                          must_be="at least 1")
    batch_size: int = setting(64, "mini-batch size", check=lambda v: v >= 1,
                              must_be="at least 1")
    lr: float = setting(3e-3, "Adam's step size", check=_positive, must_be="a positive number")
    weight_decay: float = setting(
        0.0, "Adam's L2 weight decay", check=lambda v: 0 <= v <= 1,
        # above 1 Adam's L2 term outweighs any loss: the weights shrink to 0
        must_be="non-negative and at most 1 (above, the decay outweighs the loss and every "
                "weight shrinks to 0; 1e-5 to 1e-2 is usual)")
    lr_schedule: str = setting(
        "constant", "cosine: each epoch's step size lr (1 + cos(pi e / epochs)) / 2, from lr "
        "in the first epoch towards 0", choices=("constant", "cosine"))
    seed: int = setting(
        0, "subset, split and initialisation seed", fixed_on_resume=True,
        # numpy's legacy and scikit-learn's generators (the baseline) take seeds below 2**32
        check=lambda v: 0 <= v < 2**32, must_be="a non-negative integer below 2**32")
    width: int = setting(16, "channels of the state", fixed_on_resume=True,
                         check=lambda v: v >= 4 and v % 4 == 0,
                         must_be="a positive multiple of 4 (4 GroupNorm groups)",
                         unset="16; bratu: 64 units")
    kind: str = setting("deq", "DEQ, or the same cell applied --depth times (bratu: an MLP of "
                        "--depth tanh layers)", choices=("deq", "explicit"), flag="model",
                        fixed_on_resume=True)
    depth: int = setting(8, "explicit model's depth", fixed_on_resume=True,
                         check=lambda v: v >= 1, must_be="at least 1", unset="8; bratu: 3")
    limit: int | None = setting(
        None, "random subset of the source, 0 for all of it (bratu: parameter draws solved, "
        "0: 4000)", fixed_on_resume=True, check=lambda v: v >= 0,
        must_be="0 (all of the source) or a positive number of records")
    split_by: str = setting(
        "random", "train/val/test 80/10/10 at random, or (molecules) by Bemis-Murcko "
        "scaffold: test molecules with ring systems training never saw",
        choices=("random", "scaffold"), fixed_on_resume=True,
        unset="random; evaluate: the checkpoint's")
    eval_batch_size: int = setting(256, "batch size of validation and test", flag=None,
                                   check=lambda v: v >= 1, must_be="at least 1")
    jac_reg: float = setting(0.0, "weight of a Jacobian-norm penalty, for cells that are not "
                             "contractive by construction", check=lambda v: v >= 0,
                             must_be="non-negative")
    spectral_reg: float = setting(
        0.0, "weight of a penalty on the spectral radius of J_f at z* above --spectral-target "
        "(per-sample power iteration)", check=lambda v: v >= 0, must_be="non-negative")
    spectral_target: float = setting(0.9, "the radius the spectral penalty holds the cell "
                                     "below", check=lambda v: v > 0, must_be="positive")
    spectral_steps: int = setting(4, "power-iteration steps of the penalty's radius estimate "
                                  "per batch; fewer underestimate the radius",
                                  check=lambda v: v >= 1, must_be="at least 1")
    cell: str = setting(
        "contractive", "contractive: tanh(gamma W2 relu(W1 z) + x), Lip <= gamma by "
        "construction; resnet: the implicit-layers tutorial cell; pair: every node pair with "
        "its two elements through shared weights, message passing along rows and columns, "
        "Lip <= gamma, blind to the nodes' order (docs/training.md)",
        choices=("contractive", "resnet", "pair"), fixed_on_resume=True)
    gamma: float = setting(0.9, "Lipschitz bound of the contractive and pair cells",
                           check=lambda v: 0 < v < 1, must_be="in (0, 1)",
                           fixed_on_resume=True)
    sums: bool = setting(True, "inject the image alone, without its graph sums (per-channel "
                         "sums of atoms and of pairs: total charge, the dipole, ...) as a bias",
                         negative=True, fixed_on_resume=True, before_the_field=False)
    elements: bool = setting(True, "learn a vector per element (atom embedding) and add, at "
                             "every entry of the image, those of the two nodes it joins",
                             fixed_on_resume=True, before_the_field=False)
    objective: str = setting(
        "classify", "classify the task's labels, or regress the DFT number they come from "
        "(dipole, LCD, band gap) with an MSE loss; field: bratu's solution field (its only "
        "objective)", choices=("classify", "regress", "field"), fixed_on_resume=True,
        unset="classify; bratu: field")
    dtype: str = setting("float32", "the model's precision", choices=("float32", "float64"),
                         fixed_on_resume=True,
                         unset="float32 for adam, float64 for tao, whose line searches need an "
                               "accurate objective, and for bratu")
    tao_batch: int = setting(0, "TAO only: samples per epoch's objective (a fresh seeded draw "
                             "each epoch); 0 for the whole training split",
                             check=lambda v: v >= 0,
                             must_be="0 (all) or a positive number of samples")
    device: str = setting("cpu", "torch device of the model: cpu or cuda[:N]; with a CPU-only "
                          "PETSc the state crosses to the host once per evaluation")
    csv: str | None = setting(None, "crystals only: a CSV with material_id, band_gap, cif "
                              "(recorded as an absolute path)", fixed_on_resume=True)

    def for_task(self, trainer: str = "adam") -> "TrainConfig":
        """This config with the settings left unset (None) made the task's and trainer's
        defaults: a PDE surrogate's 64 units, 3 layers, field objective and float64;
        float64 for TAO, whose line searches need an accurate objective; otherwise the
        declared ones. A PDE surrogate's cell is always the dense one."""
        from .data.pde import FIELD_TASKS

        field_task = self.task in FIELD_TASKS
        unset = {f.name: f.default for f in fields(self) if getattr(self, f.name) is None
                 and f.default is not None and f.default is not MISSING}
        if field_task:
            unset.update({name: value for name, value in
                          (("width", 64), ("depth", 3), ("objective", "field"))
                          if getattr(self, name) is None})
            unset["cell"] = "dense"
        if self.dtype is None and (trainer == "tao" or field_task):
            unset["dtype"] = "float64"
        return replace(self, **unset)


def from_args(cls, args, **given):
    """``cls`` from the parsed command line: every declared field the command has a flag
    for (its dest is the field's name; ``args.settings`` lists them), then ``given``; the
    rest keep their defaults. Another flag of the same name (compare's conv-cell
    ``--dtype``) is not a setting of the run."""
    flagged = getattr(args, "settings", ())
    found = {name: getattr(args, name) for name in declared(cls) if name in flagged}
    return cls(**{**found, **given})


def markdown(sections) -> str:
    """The settings tables of ``docs/settings.md``: ``sections`` is ``(cls, command,
    defaults, resume)`` each, ``defaults`` the command's default of each flag as text
    (what ``deq-petsc COMMAND --help`` says), ``resume`` whether the command resumes."""
    lines = ["# Run settings", "",
             "Generated from the declarations in `deq_petsc/science/config.py` and "
             "`deq_petsc/studies/demo.py` by",
             "`python -m deq_petsc.cli.settings_doc > docs/settings.md` (a test checks the "
             "file is current).",
             "*Fixed*: a resumed training run (`train --resume`) keeps the checkpoint's value "
             "and refuses another one; the others may change on resume and are noted. A "
             "`--no-` flag's text says what typing it does."]
    shown = {}
    for cls, command, defaults, resume in sections:
        first = " ".join((cls.__doc__ or "").strip().split("\n\n")[0].split()).replace("``", "`")
        base = [c.__name__ for c in cls.__mro__[1:] if c.__name__ in shown]
        lines += ["", f"## {cls.__name__}", "", first + (
            f" Every {base[0]} setting above, with these added or with another default:"
            if base else ""), "",
            f"| setting | flag | type | default of `{command}` |"
            + (" resume |" if resume else "") + " what |",
            "|---|---|---|---|" + ("---|" if resume else "") + "---|"]
        for name, (f, s) in declared(cls).items():
            if any(name in shown[b] and shown[b][name] == f.default for b in base):
                continue                          # inherited as it is: listed above
            lines.append(_markdown_row(cls, name, f, s, defaults, resume))
        shown[cls.__name__] = {name: f.default for name, (f, _) in declared(cls).items()}
    return "\n".join(lines) + "\n"


def _markdown_row(cls, name: str, f: Field, s: Setting, defaults: dict, resume: bool) -> str:
    flag = typed_flag(cls, name)
    if name in defaults:
        default = defaults[name]
    else:                                 # no flag on the command: the declaration's
        default = "(required)" if f.default is MISSING else f"`{f.default!r}`"
    choices = f" ({', '.join(s.choices)})" if s.choices else ""
    what = s.help + choices + (f"; must be {s.must_be}" if s.must_be else "")
    what = what.replace("|", "\\|")
    fixed = (" fixed |" if s.fixed_on_resume else " may change |") if resume else ""
    return (f"| `{name}` | {f'`{flag}`' if flag else '-'} | {str(f.type).replace('|', 'or')} "
            f"| {default} |{fixed} {what} |")
