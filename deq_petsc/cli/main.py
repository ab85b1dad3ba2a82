"""``deq-petsc``: the command-line tool.

Our own flags are GNU-style (``--epochs 4``); every single-dash argument
(``-snes_type anderson``, ``-log_view``, ``-options_file FILE``, ``-help``) is
handed to PETSc's options database untouched. PETSc is initialised here,
before anything imports ``petsc4py.PETSc``, which is why the commands
(:mod:`deq_petsc.cli.commands`) are imported only after that.
"""

from __future__ import annotations

import argparse
import errno
import os
import signal
import sys


def image_tasks() -> list[str]:
    """The graph-image tasks, read from their registry when the parser is built (a task
    registered by a plug-in is a choice of every command)."""
    from deq_petsc.science.data.tasks import TASKS     # numpy, no torch or PETSc
    return TASKS.names()


def field_tasks() -> list[str]:
    """The PDE surrogate tasks (data, train and evaluate take them), from their registry."""
    from deq_petsc.science.data.pde import FIELD_TASKS
    return FIELD_TASKS.names()


def _command(sub, name, help, description):
    p = sub.add_parser(name, allow_abbrev=False, add_help=False, help=help,
                       description=description)
    p.add_argument("--help", action="help", help="show this help message and exit")
    p.set_defaults(command_name=name, parser=p)
    return p


def _settings(p, cls, names, required=(), how=None, **defaults):
    """The flags of ``cls``'s declared settings ``names`` (:mod:`deq_petsc.science.config`),
    with this command's defaults and, in ``how``, what this command says otherwise of a
    setting (``{"limit": {"help": ...}}``: any field of its Setting). Each flag's dest is
    the field's name; the parser keeps which dests are settings (``from_args`` reads them)
    and their range checks (``invalid_argument``)."""
    from dataclasses import MISSING
    from dataclasses import replace as changed

    from deq_petsc.science.config import declared, flag_of, typed_flag, value_type
    table = declared(cls)
    checks = dict(p.get_default("checks") or {})
    settings = list(p.get_default("settings") or [])
    for name in names:
        f, s = table[name]
        s = changed(s, **(how or {}).get(name, {}))
        flag, default = flag_of(cls, name), defaults.get(name, f.default)
        settings.append(name)
        if value_type(f) is bool:
            if s.negative:
                p.add_argument(typed_flag(cls, name), dest=name, action="store_false",
                               default=default, help=s.help)
            else:
                p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction,
                               default=default, help=s.help + " (default: %(default)s)")
            continue
        if isinstance(default, tuple):
            default = ",".join(default)          # argparse parses a text default
        unset = default is None or default is MISSING
        shown = (f" (default: {s.unset})" if unset and s.unset else
                 "" if unset else " (default: %(default)s)")
        p.add_argument(flag, dest=name, type=s.parse or value_type(f),
                       choices=s.choices or None, required=name in required,
                       metavar=None if s.choices else flag[2:].upper().replace("-", "_"),
                       help=s.help + shown,
                       default=None if default is MISSING else default)
        if s.check:
            checks[name] = (s.check, s.must_be, flag)
    p.set_defaults(checks=checks, settings=settings)


def _data_arguments(p, required_task=True, tasks=None, how=None, **defaults):
    """Which data: the task, its subset, seed, split and source (declared in TrainConfig),
    and where its images are built and kept."""
    from deq_petsc.science.config import TrainConfig
    tasks = tasks or image_tasks() + field_tasks()
    how = {"task": {"choices": tuple(tasks)}, **(how or {})}
    if not set(tasks) & set(field_tasks()):    # the PDE tasks' note on --limit: not theirs
        how.setdefault("limit", {"help": "random subset of the source, 0 for all of it"})
    _settings(p, TrainConfig, ["task", "limit", "seed", "split_by", "csv"],
              required=["task"] if required_task else [], how=how,
              **{"task": None, "seed": 0 if required_task else None, "limit": None,
                 "split_by": None, **defaults})
    p.add_argument("--cache-dir", help="default: $DEQ_PETSC_CACHE or ~/.cache/deq_petsc")
    p.add_argument("--jobs", type=int, default=None, help="image-building processes (2)")


#: the settings of a training run that train, compare --train and the demo take as flags
TRAINING = ["epochs", "batch_size", "lr", "lr_schedule", "weight_decay", "width", "cell",
            "gamma", "sums", "elements", "jac_reg", "spectral_reg", "spectral_target",
            "spectral_steps", "device"]


def _training_arguments(p, cls=None, progress_flag=True, **defaults):
    """The training settings' flags (with this command's defaults), and --no-progress
    unless ``progress_flag`` is off (the demo declares its own ``progress``)."""
    from deq_petsc.science.config import TrainConfig
    _settings(p, cls or TrainConfig, TRAINING, **defaults)
    if progress_flag:
        p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deq-petsc", allow_abbrev=False, add_help=False,
        description="Deep Equilibrium Models solved by PETSc. Single-dash options go to "
                    "PETSc (-snes_type, -snes_monitor, -adjoint_ksp_type, -log_view, -help).")
    parser.add_argument("--help", action="help", help="show this help message and exit")
    parser.add_argument("--version", action="store_true", help="print versions and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for add in (_demo_command, _train_command, _evaluate_command, _predict_command,
                _data_command, _baseline_command, _compare_command, _solve_command):
        add(sub)
    return parser


def _demo_command(sub):
    from deq_petsc.studies.demo import DemoConfig   # PETSc-free: its declarations are the flags
    from deq_petsc.core.solver_sets import SOLVER_SETS   # PETSc-free: help lists the sets
    p = _command(sub, "demo", "the main job: train the polarity scientist once per solver set "
                 "and compare them",
                 "Train the DEQ polarity classifier on a QM9 subset once per named solver set "
                 f"({', '.join(SOLVER_SETS)}; each under the "
                 "options prefix <name>_ with '+' and '-' as '_', e.g. -anderson_snes_anderson_m "
                 "3) at the paper's training tolerances, and report side by side: time to a "
                 "target validation accuracy, test accuracy, converged fractions, iterations, "
                 "spectral radius of J_f, inference cost to rtol 1e-4; writes summary.json, "
                 "comparison.png and residuals.png.")
    from deq_petsc.science.data.tasks import TASKS
    _settings(p, DemoConfig, ["task", "limit", "seed", "out", "solvers", "train_rtol",
                              "train_max_it", "target_accuracy", "inference_max_it",
                              "time_budget", "baseline", "cache_dir", "progress"],
              how={"task": {"choices": tuple(image_tasks()),
                            "help": "the science task (the others: the same protocol on "
                                    "another task's images)"},
                   "limit": {"help": "samples of the task's source, 0 for all"}})
    p.add_argument("--seeds", metavar="S1,S2,...",
                   help="run the demo once per seed (its own subset, split and weights) into "
                        "OUT/seed-<k> and report every number as mean and spread over them "
                        "(OUT/seeds.json): what the README's numbers come from")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier demo in OUT (its summary and checkpoints)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny run (100 molecules, 1 epoch, width 4) that checks everything works")
    _training_arguments(p, DemoConfig, progress_flag=False, how={"epochs": {
        "unset": ", ".join(f"{name} {task.demo_epochs}"
                           for name, task in TASKS.registered().items())}})


def _train_command(sub):
    p = _command(sub, "train", "train a DEQ (or its explicit twin) on a science task",
                 "Train a graph-image model to classify a task's labels or regress its DFT "
                 "target, with a torch optimizer (Adam, the default) or a PETSc TAO solver "
                 "(--trainer tao -tao_type lmvm|nls|ntr|bntr|brgn ..., -train_hessian "
                 "gauss-newton|exact). The DEQ's forward solve takes -snes_* options, its "
                 "backward -adjoint_* options. Writes checkpoint.pt (every epoch, atomically), "
                 "metrics.csv/json, curves.png, and at the end report.json and confusion.png "
                 "(classification) or parity.png (regression).")
    _data_arguments(p, limit=2000)
    # the pair cell: best on the solids, level on polarity (docs/training.md, "At width 16");
    # compare --task keeps the convolutional cell, whose solves give solvers more to do.
    # None: the task's and trainer's default (TrainConfig.for_task)
    _training_arguments(p, cell="pair", width=None)
    # and every other declared setting with a flag: a new one is a field of TrainConfig
    from deq_petsc.science.config import TrainConfig, declared, flag_of
    given = {a.dest for a in p._actions}
    _settings(p, TrainConfig, [n for n in declared(TrainConfig)
                               if flag_of(TrainConfig, n) and n not in given],
              objective=None, dtype=None, depth=None)
    p.add_argument("--trainer", choices=["adam", "tao"], default="adam",
                   help="torch Adam over mini-batches, or a PETSc TAO solve per epoch on "
                        "--tao-batch samples, chosen by -tao_type (default: adam)")
    p.add_argument("--out", help="run folder (default: runs/<task>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--overwrite", action="store_true",
                   help="start over in an OUT that already holds a run (or other outputs); "
                        "the old run is replaced once the new one has its first checkpoint")


def _evaluate_command(sub):
    p = _command(sub, "evaluate", "test a trained model, with the solver the options choose",
                 "Accuracy, per-class report, forward iterations and time per sample of a "
                 "checkpoint on a split of its task; the forward solver is chosen by options, "
                 "so Picard vs Anderson inference is one flag apart.")
    p.add_argument("--checkpoint", required=True)
    _data_arguments(p, required_task=False)
    p.add_argument("--split", choices=["train", "val", "test"], default="test")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--out", dest="out_file", metavar="FILE", type=_json_file,
                   help="also write the report as JSON, with the PETSc options used, the "
                        "forward solver read back and the run record (versions, machine)")
    from deq_petsc.science.config import TrainConfig
    _settings(p, TrainConfig, ["device"])


def _predict_command(sub):
    p = _command(sub, "predict", "ask a trained model about new molecules or structures",
                 "Polarity and gap models take --smiles; mof-pore and crystals models take "
                 "--cif. --task uses the model that ships for the task, --checkpoint your "
                 "own. "
                 "--input asks about many at once: a CSV with a 'smiles' column (and "
                 "optionally 'name' or 'id'), a file with one SMILES per line, a folder of "
                 "CIFs or a file listing CIF paths; --output gets one CSV row per input (the "
                 "label, each class's probability, or the reason the input could not be "
                 "read: a bad row never stops the batch).")
    from deq_petsc.science.shipped import shipped_tasks     # a folder listing: no torch
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--checkpoint", help="a trained model (deq-petsc train's checkpoint.pt)")
    model.add_argument("--task", choices=shipped_tasks(),
                       help="the small model that ships with deq_petsc for this task "
                            "(deq_petsc/science/shipped, its run record and test report "
                            "beside it; made by make models)")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--smiles")
    what.add_argument("--cif", help="a CIF file")
    what.add_argument("--input", help="many inputs (see above)")
    p.add_argument("--output", default="predictions.csv",
                   help="with --input: the CSV to write (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=256, help="(default: %(default)s)")
    p.add_argument("--jobs", type=int, default=None, help="image-building processes (2)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _data_command(sub):
    p = _command(sub, "data", "build (or load from the cache) a task's graph images",
                 "Build the graph-image data set of a science task from its DFT source, print "
                 "its class balance per split and what was skipped, and optionally write a "
                 "few images as PNGs.")
    _data_arguments(p)
    p.add_argument("--rebuild", action="store_true", help="ignore an existing cache entry")
    p.add_argument("--png", metavar="DIR", help="write the first few images here as PNGs")
    p.add_argument("--png-count", type=int, default=3)


def _baseline_command(sub):
    p = _command(sub, "baseline", "the reference a DEQ must beat: gradient boosting on "
                 "descriptors, same split",
                 "Fit scikit-learn's HistGradientBoostingClassifier (Regressor with "
                 "--objective regress) on the train split of a "
                 "task's build (the same --task/--limit/--seed as train, so the same test "
                 "molecules and materials), choose its rounds on the validation split and "
                 "report the test split. --features descriptors: RDKit 2D descriptors and "
                 "Morgan counts (molecules), composition statistics and density, volume per "
                 "atom, packing, space group (crystals, MOFs); --features images: the DEQ's "
                 "own graph images, flattened. Writes OUT/baseline.json.")
    _data_arguments(p, limit=2000, tasks=image_tasks())
    p.add_argument("--features", choices=["descriptors", "images"], default="descriptors",
                   help="(default: %(default)s)")
    p.add_argument("--objective", choices=["classify", "regress"], default="classify",
                   help="classify the task's labels, or regress the DFT number they come "
                        "from (MAE in its units, as train --objective regress reports)")
    p.add_argument("--max-iter", type=int, default=500,
                   help="boosting rounds at most (default: %(default)s)")
    p.add_argument("--out", help="folder for baseline.json (default: runs/baseline-<task>, "
                   "runs/baseline-<task>-regress)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _compare_command(sub):
    from deq_petsc.core.solver_sets import compare_defaults   # PETSc-free: help lists the sets
    from deq_petsc.science.config import TrainConfig
    p = _command(sub, "compare", "run named PETSc option sets on one DEQ problem: table, CSV, plots",
                 "Solve the same fixed point with every option set, each under its own options "
                 "prefix, from z = 0 to the same tolerance, and write a Markdown table "
                 "(iterations, f evaluations, time, final residual, converged reason), a CSV "
                 "and residual-vs-iteration / residual-vs-time plots. Sets come from --set "
                 "'name: -snes_type ...' (repeatable) and --sets-file (one per line); default: "
                 f"{', '.join(compare_defaults())}. The problem is the conv cell "
                 "of 'solve', or with --task a batch of test images through a model "
                 "(--checkpoint for a trained one). An invalid set is reported in its row.")
    p.add_argument("--set", action="append", metavar="'NAME: OPTIONS'",
                   help="an option set, e.g. 'anderson3: -snes_type anderson -snes_anderson_m 3'")
    p.add_argument("--sets-file", help="option sets, one 'name: options' per line")
    p.add_argument("--rtol", type=float, default=1e-6, help="(default: %(default)s)")
    p.add_argument("--max-it", type=int, default=200, help="(default: %(default)s)")
    p.add_argument("--out", default="runs/compare", help="(default: %(default)s)")
    p.add_argument("--repeat", type=int, default=1, help="run the sets in turn this many "
                   "times and keep each one's fastest run (default: %(default)s)")
    _settings(p, TrainConfig, ["task"], task=None, how={"task": {
        "choices": tuple(image_tasks()),
        "help": "a science task's test images instead of the random conv-cell problem"}})
    p.add_argument("--checkpoint", help="with --task: the trained model to take the cell from")
    _settings(p, TrainConfig, ["limit"], limit=500,
              how={"limit": {"help": "with --task: samples of the task's source"}})
    p.add_argument("--cache-dir")
    p.add_argument("--train", action="store_true",
                   help="with --task: train once per option set (the sets' -snes_* options "
                        "drive the DEQ's solves, -tao_* the TAO trainer) and compare accuracy "
                        "and training time; plots loss and validation metric against time")
    p.add_argument("--trainer", choices=["adam", "tao"], default="adam")
    _settings(p, TrainConfig, ["objective"], how={"objective": {
        "choices": ("classify", "regress"), "help": "with --train: classify the task's labels, "
        "or regress the DFT number they come from"}})
    _training_arguments(p, epochs=2)
    _cell_arguments(p, batch=32, device=False)


def _solve_command(sub):
    p = _command(sub, "solve", "solve one small convolutional DEQ cell and print the stats",
                 "Solve z = tanh(conv(z) + x) for a random batch with a PETSc SNES. Solver, "
                 "tolerances and monitors come from PETSc options; -snes_monitor and "
                 "-snes_converged_reason are on unless you set them.")
    _cell_arguments(p)


def _json_file(text: str) -> str:
    """An ``--out FILE`` that can be written, checked before any work (argparse's one line)."""
    from pathlib import Path

    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder, not a file")
    if problem := _unwritable(path.parent):
        raise argparse.ArgumentTypeError(problem)
    return text


def _cell_arguments(p, batch=8, device=True):
    """The random conv-cell problem of solve and compare (its seed and device as a run's)."""
    from deq_petsc.science.config import TrainConfig
    p.add_argument("--batch", type=int, default=batch, help="batch size (default: %(default)s)")
    p.add_argument("--channels", type=int, default=8, help="channels (default: %(default)s)")
    p.add_argument("--size", type=int, default=16, help="image side (default: %(default)s)")
    p.add_argument("--contraction", type=float, default=0.95,
                   help="Lipschitz constant of the cell, < 1 (default: %(default)s)")
    p.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    _settings(p, TrainConfig, ["seed"] + (["device"] if device else []),
              how={"seed": {"help": "seed of the random problem (and of compare --train's "
                                    "runs)"}})


def split_petsc_args(parser: argparse.ArgumentParser, argv: list[str]):
    """Our arguments vs. PETSc's: whatever argparse does not know goes to PETSc.

    Before PETSc sees them, three mistakes are caught in one line each: a stray
    word, one of our flags typed with one dash (``-epochs 2`` would go to PETSc,
    unused, and the run would train with the default), and a PETSc option typed
    with two (``--snes_type``)."""
    args, rest = parser.parse_known_args(argv)
    command = getattr(args, "parser", parser)
    stray = [a for i, a in enumerate(rest)
             if not a.startswith("-") and (i == 0 or not rest[i - 1].startswith("-"))]
    if stray:
        command.error(f"unrecognised arguments: {' '.join(stray)} (PETSc options take a "
                      f"single dash, e.g. -snes_type anderson)")
    bad = [a for a in rest if a.startswith("--")]
    if bad:
        command.error(f"unrecognised arguments: {' '.join(bad)}" + _double_dash_hint(bad))
    ours = [(a, flag) for a in rest if (flag := _our_flag(command, a))]
    if ours:
        typed, flag = ours[0]
        command.error(f"{typed}: did you mean {flag}? Our flags take two dashes; "
                      f"single-dash arguments go to PETSc, which would not use it")
    if problem := options_file_problem(rest):
        command.error(problem)
    return args, rest


#: PETSc's own single-dash options that share a name with one of our flags
PETSC_NAMES = {"-help", "-version"}


def _our_flag(parser: argparse.ArgumentParser, arg: str) -> str | None:
    """``--epochs`` when ``arg`` is ``-epochs`` (or ``-epochs=2``, ``-batch_size``, or a
    prefix of one flag only, ``-batch`` for ``--batch-size``) and the command has that
    flag; None for PETSc's options (theirs have underscores, ours hyphens)."""
    if not arg.startswith("-") or arg.startswith("--") or len(arg) < 3 or arg in PETSC_NAMES:
        return None
    typed = "--" + arg[1:].split("=", 1)[0].replace("_", "-")
    flags = {o for action in parser._actions for o in action.option_strings}
    if typed in flags:
        return typed
    near = [f for f in flags if f.startswith(typed)]        # -batch for --batch-size
    return near[0] if len(near) == 1 else None


def _double_dash_hint(bad: list[str]) -> str:
    """Why a ``--snes_type`` was not understood: PETSc's options take one dash."""
    petsc_like = [a for a in bad if "_" in a.split("=", 1)[0]]
    if not petsc_like:
        return ""
    first = petsc_like[0].split("=", 1)[0]
    return f" (PETSc options take one dash: {first[1:]})"


def options_file_problem(petsc_args: list[str]) -> str | None:
    """Why an ``-options_file FILE`` on the command line cannot be read, as one line
    (None when every one can). PETSc reads these files while it initialises, where
    a missing or malformed file ends in its 25-line error and a traceback; checked
    here, it is one line before any work. The format is PETSc's: ``-name [value]``
    per line, ``alias -new -old``, ``#`` comments (``PetscOptionsInsertFile``); a
    ``.yml``/``.yaml`` file is PETSc's YAML and only its existence is checked here, and a
    path with ``$`` is left to PETSc's substitution."""
    from pathlib import Path

    for i, arg in enumerate(petsc_args):
        if arg != "-options_file":
            continue
        if i + 1 >= len(petsc_args) or petsc_args[i + 1].startswith("-"):
            return "-options_file: give the file to read (-options_file FILE)"
        if "$" in petsc_args[i + 1]:
            continue                   # ${PETSC_DIR}/...: PETSc substitutes, then reads
        path = Path(petsc_args[i + 1])
        try:
            text = _options_text(path, "-options_file")
        except ValueError as err:
            return str(err)
        if path.suffix.lower() in (".yml", ".yaml"):
            continue                   # PETSc reads these as YAML (snes_type: anderson)
        for number, line in enumerate(text.splitlines(), 1):
            words = line.split("#", 1)[0].split()
            if words and not (words[0].startswith("-") or words[0] == "alias"):
                return (f"-options_file {path}, line {number}: {line.strip()!r} is not an "
                        f"option (each line: -name [value], e.g. -snes_type anderson)")
    return None


def _options_text(path, flag: str) -> str:
    """The text of a small file of options the user named (``-options_file``,
    ``--sets-file``), or a one-line ValueError: missing, a folder or FIFO, unreadable,
    binary or over 1 MiB (read whole, a 3 GB file or a FIFO would stall the run)."""
    if not path.exists():
        raise ValueError(f"{flag} {path}: no such file")
    if not path.is_file():
        raise ValueError(f"{flag} {path}: not a regular file")
    try:
        with path.open("rb") as fh:
            text = fh.read((1 << 20) + 1)
    except OSError as err:
        raise ValueError(f"{flag} {path}: cannot read it ({err.strerror or err})") from None
    if len(text) > 1 << 20 or b"\0" in text:
        raise ValueError(f"{flag} {path}: not an options file (binary, or over 1 MiB)")
    return text.decode("utf-8", "replace")


def option_set_lines(args) -> list[str]:
    """``compare``'s option sets as lines: every ``--set``, then the ``--sets-file``'s."""
    from pathlib import Path

    lines = list(getattr(args, "set", None) or [])
    if getattr(args, "sets_file", None):
        lines += _options_text(Path(args.sets_file), "--sets-file").splitlines()
    return lines


#: Our flags' valid ranges, checked before any work starts (a typo must not build all of
#: QM9 or train an epoch before it is found). flag -> (test, what it must be).
_RANGES = {                  # the run settings' own ranges are declared with them
    "rtol": (lambda v: 0 < v < 1, "in (0, 1)"),
    "max_it": (lambda v: v >= 1, "at least 1"),
    "batch_size": (lambda v: v >= 1, "at least 1"),
    "jobs": (lambda v: v >= 1, "at least 1"),
    "repeat": (lambda v: v >= 1, "at least 1"),
    "max_iter": (lambda v: v >= 1, "at least 1"),
    "batch": (lambda v: v >= 1, "at least 1"),
    "channels": (lambda v: v >= 1, "at least 1"),
    "size": (lambda v: v >= 1, "at least 1"),
    "contraction": (lambda v: 0 < v < 1, "in (0, 1)"),
    "png_count": (lambda v: v >= 0, "non-negative"),
}


def explicit_flags(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The destinations of the flags the user typed (``--lr 1e-3``, ``--lr=1e-3``), as
    opposed to those left at their defaults: what a resumed run may change."""
    typed = {a.split("=", 1)[0] for a in argv if a.startswith("--")}
    return {action.dest for action in parser._actions
            if any(o in typed for o in action.option_strings)}


def invalid_argument(args) -> str | None:
    """The first of our flags outside its range, or of flags whose work cannot be done
    (a size that cannot fit, a malformed option set), as one line; None when all are fine."""
    import math
    from pathlib import Path

    declared = getattr(args, "checks", {})
    ranges = {**{n: (ok, what, f"--{n.replace('_', '-')}") for n, (ok, what) in _RANGES.items()
                 if n not in declared}, **declared}
    for name, (ok, what, flag) in ranges.items():
        value = getattr(args, name, None)
        if value is None:
            continue
        if isinstance(value, float) and math.isnan(value) or not ok(value):
            return f"{flag} {value}: must be {what}"
    for flag in ("out", "png"):                   # folders written into: --out, data --png
        folder = getattr(args, flag, None)
        if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
            return f"--{flag} {folder}: is a file, not a folder"
        if folder is not None and (problem := _unwritable(Path(folder))):
            return f"--{flag} {folder}: {problem}"
    # a resumed run takes its cell from its checkpoint unless --cell is typed (resumed_config)
    cell_from_checkpoint = getattr(args, "resume", False) and \
        "cell" not in getattr(args, "explicit", set())
    if getattr(args, "cell", None) == "pair" and getattr(args, "elements", True) is False \
            and not cell_from_checkpoint:
        return ("--cell pair needs --elements: the pair cell reads its nodes off the "
                "element channel (--cell contractive trains without element embeddings)")
    if getattr(args, "resume", False) and getattr(args, "overwrite", False):
        return "--resume and --overwrite: continue the run, or start it over, not both"
    output = getattr(args, "output", None)
    if getattr(args, "input", None) is not None:
        if Path(output).is_dir():
            return f"--output {output}: is a folder, not a file"
        if problem := _unwritable(Path(output).parent):
            return f"--output {output}: {problem}"
        if problem := _output_over_input(Path(args.input), Path(output)):
            return f"--output {output}: {problem}"
    elif "output" in getattr(args, "explicit", set()):
        return (f"--output {output}: only --input writes a CSV; --smiles and --cif answer on "
                f"the screen (drop --output, or give the inputs with --input)")
    return next(filter(None, (check(args) for check in _WORK_CHECKS)), None)


def _csv_problem(args) -> str | None:
    """``--csv`` is the crystals task's source; another task would fail inside its
    constructor (``PolarityTask`` takes no ``csv``) after the command started."""
    task = getattr(args, "task", None)
    if getattr(args, "csv", None) is not None and task not in (None, "crystals"):
        return (f"--csv: only --task crystals reads a CSV (material_id, band_gap, cif); "
                f"{task} builds from its packaged source")
    return None


def _cache_dir_problem(args) -> str | None:
    """A ``--cache-dir`` that is a file fails deep inside the first build that writes a
    source there (mof-pore unpacks its archive into it)."""
    from pathlib import Path

    cache = getattr(args, "cache_dir", None)
    if cache is not None and Path(cache).exists() and not Path(cache).is_dir():
        return f"--cache-dir {cache}: is a file, not a folder"
    return None


def _solvers_problem(args) -> str | None:
    """``demo --solvers``: every name a set of the registry, each once, found before the
    demo builds its 2,000 molecules."""
    from deq_petsc.core.solver_sets import SOLVER_SETS

    names = getattr(args, "solvers", None)       # parsed by its declaration: a tuple
    if names is None:
        return None
    text = ",".join(names)
    bad = next((n for n in names if n not in SOLVER_SETS), None)
    if bad is not None:
        return (f"--solvers {text}: {'an empty name' if not bad else repr(bad)} is not a "
                f"solver set; known: {', '.join(SOLVER_SETS)}")
    twice = next((n for k, n in enumerate(names) if n in names[:k]), None)
    if twice is not None:
        return f"--solvers {text}: {twice} is named twice"
    return None


def _compare_problem(args) -> str | None:
    """``compare``: what it cannot honour (a checkpoint or training without a task) and
    malformed option sets, before the problem is built."""
    from deq_petsc.core.solver_sets import read_option_sets

    if getattr(args, "command_name", None) != "compare":
        return None
    if args.task is None and args.checkpoint:
        return (f"--checkpoint {args.checkpoint} needs --task (the task it was trained on): "
                f"without one compare solves the random conv-cell problem")
    if args.task is None and args.train:
        return "--train needs --task: the task to train on once per option set"
    try:
        read_option_sets(option_set_lines(args))
    except ValueError as err:
        return str(err)
    return None


def _state_size_problem(args) -> str | None:
    """``solve`` / ``compare`` without --task: a conv-cell state that cannot fit in this
    machine's memory, refused before torch tries to allocate it. Four copies of the state
    (x, z, f(z), F) are a lower bound of what a solve holds, so only clearly impossible
    sizes are refused."""
    from deq_petsc.core.devices import memory_problem

    if getattr(args, "size", None) is None or getattr(args, "task", None) is not None:
        return None
    shape = f"{args.batch}x{args.channels}x{args.size}x{args.size}"
    state = args.batch * args.channels * args.size ** 2 * (8 if args.dtype == "float64" else 4)
    return memory_problem(4 * state, f"--size {args.size}: the {shape} {args.dtype} state "
                                     f"(4 copies: x, z, f(z), F)")


def _objective_problem(args) -> str | None:
    """``train --objective``: a PDE task regresses its field, a science task never does."""
    from deq_petsc.science.config import TrainConfig, typed_flag

    objective, task = getattr(args, "objective", None), getattr(args, "task", None)
    fields = field_tasks()
    if getattr(args, "command_name", None) == "train" and task in fields:
        images_only = {"cell", "sums", "elements", "split_by"} & getattr(args, "explicit",
                                                                          set())
        if images_only:
            name = sorted(images_only)[0]
            flag = typed_flag(TrainConfig, name)
            return (f"{flag}: a flag of the graph-image tasks; {task}'s surrogate is set by "
                    f"--model, --width, --depth and --gamma, its draws split at random")
    if objective is None or task is None:
        return None
    if task in fields and objective != "field":
        return (f"--objective {objective}: {task}'s targets are solution fields, not labels "
                f"or one DFT number: its objective is field (the default for it)")
    if task not in fields and objective == "field":
        return (f"--objective field: {task} has no solution field; field is the objective "
                f"of {', '.join(fields)} (use classify or regress)")
    return None


#: checks of flags that fit together only in some ways, or whose work cannot be done
_WORK_CHECKS = (_objective_problem, _csv_problem, _cache_dir_problem, _solvers_problem,
                _compare_problem, _state_size_problem)


def _output_over_input(inputs, output) -> str | None:
    """Why writing ``output`` would destroy what ``inputs`` reads (None if it would not):
    the input file itself, or a CIF of an input folder."""
    import os

    if output.resolve() == inputs.resolve() or (
            output.exists() and inputs.exists() and os.path.samefile(output, inputs)):
        return (f"is the --input file: writing the predictions would replace the inputs; "
                f"choose another --output")
    if inputs.is_dir() and output.resolve().parent == inputs.resolve() and \
            output.suffix.lower() == ".cif":
        return (f"is a CIF in the --input folder {inputs}: choose another --output (a .csv "
                f"outside it)")
    return None


def _unwritable(folder) -> str | None:
    """Why ``folder`` could not be created or written to (None if it can), found before
    any work: its nearest existing ancestor must be a folder this user can write."""
    import os

    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"cannot write in {existing} (permission denied)"
    return None


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _pin_kernels()                  # before torch, NumPy or PETSc loads a kernel library
    parser = build_parser()
    args, petsc_args = split_petsc_args(parser, argv)
    args.explicit = explicit_flags(getattr(args, "parser", parser), argv)
    problem = invalid_argument(args)
    if problem:
        getattr(args, "parser", parser).error(problem)

    from deq_petsc import init
    init([parser.prog] + petsc_args)
    from petsc4py import PETSc

    from . import commands
    from deq_petsc.core.errors import DEQError
    from deq_petsc.core.devices import resolve_device
    from deq_petsc.science.parallel import abort_on_error, threads_per_rank

    if "-help" in petsc_args and PETSc.COMM_WORLD.getRank() == 0:
        getattr(args, "parser", parser).print_help()
    if args.version:
        PETSc.Sys.Print(commands.versions())
        return 0
    if args.command is None:
        if "-help" not in petsc_args:
            parser.print_help()
        return 0 if "-help" in petsc_args else 2
    if PETSc.COMM_WORLD.getSize() > 1 and "OMP_NUM_THREADS" not in os.environ:
        import torch
        torch.set_num_threads(threads_per_rank())       # one rank per core by default
    what = f"deq-petsc {args.command_name}"
    import warnings
    from deq_petsc.core.errors import DEQCappedSolveWarning
    # every command reports capped solves in its own words (a WARNING line, a CSV column)
    warnings.simplefilter("ignore", DEQCappedSolveWarning)
    interrupted = _watch_interrupts()
    with abort_on_error(PETSc.COMM_WORLD, what):
        try:
            if getattr(args, "device", None) is not None:   # checked once, before any work
                args.device = str(resolve_device(args.device))
            return commands.COMMANDS[args.command_name](args)
        except (DEQError, FileNotFoundError, ImportError, KeyboardInterrupt,
                PETSc.Error) as err:
            if PETSc.COMM_WORLD.getSize() > 1:
                raise                      # the others may be inside a collective: abort
            if interrupted or isinstance(err, KeyboardInterrupt):
                # Ctrl-C or kill, wherever it landed: in our code, or in a PETSc callback,
                # where PETSc turned it into an error code that reached us as another error
                out = getattr(args, "out", None)
                kept = (f"; checkpoints written so far are intact in {out}" if out and
                        args.command_name in ("train", "demo", "compare") else "")
                signum = interrupted[0] if interrupted else signal.SIGINT
                by = "" if signum == signal.SIGINT else f" by {signal.Signals(signum).name}"
                print(f"{what}: interrupted{by}{kept}", file=sys.stderr, flush=True)
                return 128 + signum               # the shell's status for that signal
            if isinstance(err, PETSc.Error):
                raise
            PETSc.Sys.syncPrint(f"{what}: error: {err}", flush=True)
            return exit_status(err)
        except OSError as err:
            if err.errno is None or PETSc.COMM_WORLD.getSize() > 1:
                raise              # not the system's answer (a bug), or the others must abort
            PETSc.Sys.syncPrint(f"{what}: error: {os_error_line(err)}", flush=True)
            return 1


def exit_status(err: Exception) -> int:
    """2 for input the command cannot use (an invalid SMILES or CIF, an option PETSc or we
    reject: what argparse's own errors return), 1 for a run that failed (a solve that did
    not converge, training that diverged, a file the system would not write)."""
    from deq_petsc.core.errors import DEQInputError, DEQOptionsError
    return 2 if isinstance(err, (DEQInputError, DEQOptionsError)) else 1


def os_error_line(err: OSError) -> str:
    """The system's refusal (a full disk, a permission, a read-only file system) as one
    line naming the file, with what is known to be kept (an atomic write's notes)."""
    line = (err.strerror or str(err)).lower()
    if err.filename:
        line += f" writing {err.filename}" if err.errno in _WRITE_ERRORS else f": {err.filename}"
    return "; ".join([line, *getattr(err, "__notes__", [])])


#: errno values only a write can give
_WRITE_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG}


def _pin_kernels() -> None:
    """The same numbers from the same seed on any x86 machine (:mod:`deq_petsc.process.kernels`),
    unless ``DEQ_PETSC_KERNELS=native``; a bad value is one line before any work."""
    from deq_petsc.process.kernels import pin

    try:
        pin()
    except ValueError as err:
        print(f"deq-petsc: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None


#: signals that end a command as Ctrl-C does: SIGTERM is what kill, timeout and batch
#: schedulers send, SIGHUP a closed terminal
STOP_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP")


def _watch_interrupts() -> list:
    """A list that gets the signal's number when one of :data:`STOP_SIGNALS` arrives, then
    KeyboardInterrupt, as Ctrl-C gives: the run unwinds (run folder's lock removed, last
    checkpoint kept) and ends in one line. PETSc installed its own handlers for these at
    initialisation, which answer with a "Caught signal ... crash" banner and MPI_Abort;
    Python's handler replaces PETSc's (both are sigaction)."""
    seen: list = []

    def on_signal(signum, frame):
        seen.append(signum)
        raise KeyboardInterrupt

    for name in STOP_SIGNALS:
        signal.signal(getattr(signal, name), on_signal)
    # a reader that closes the pipe (deq-petsc predict ... | head -1) ends the command
    # quietly, as it ends any Unix tool, not in PETSc's "Caught signal 13" crash banner
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    return seen


if __name__ == "__main__":
    sys.exit(main())
