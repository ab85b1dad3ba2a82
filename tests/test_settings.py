"""A run's settings, declared once (deq_petsc.science.config): the command line's flags, their
checks, --resume's rules and docs/settings.md all come from the declarations."""

import argparse
from dataclasses import fields

import pytest

from deq_petsc.cli.main import build_parser, invalid_argument
from deq_petsc.cli.settings_doc import settings_markdown
from deq_petsc.science.config import TrainConfig, declared, flag_of, from_args
from deq_petsc.studies.demo import DemoConfig
from deq_petsc.science.train.run_folder import RunFolderRefused, resumed_config
from helpers import ROOT


def _subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return parser, sub.choices[name]


def test_every_field_of_a_run_is_declared():
    for cls in (TrainConfig, DemoConfig):
        assert set(declared(cls)) == {f.name for f in fields(cls)}, cls


def test_the_settings_reference_is_generated_from_the_declarations():
    assert (ROOT / "docs" / "settings.md").read_text() == settings_markdown(), \
        "docs/settings.md is stale: python -m deq_petsc.cli.settings_doc > docs/settings.md"


@pytest.mark.parametrize("command, cls", [("train", TrainConfig), ("demo", DemoConfig)])
def test_each_flag_of_a_run_is_its_declared_setting(command, cls):
    """The flag, its dest (the field's name) and its choices come from the declaration;
    a flag typed reaches the config unchanged."""
    _, p = _subparser(command)
    dests = {a.dest: a for a in p._actions}
    for name, (_, s) in declared(cls).items():
        flag = flag_of(cls, name)
        if command == "train" and flag:          # a new setting needs no line of the CLI
            assert name in dests, f"train has no flag for the declared setting {name}"
        if flag is None or name not in dests:
            continue
        action = dests[name]
        assert (flag if not s.negative else "--no-" + flag[2:]) in action.option_strings
        if s.choices and name not in ("task", "objective"):     # commands narrow these two
            assert tuple(action.choices) == s.choices
    parser, _ = _subparser(command)
    args = parser.parse_args([command, "--task", "polarity", "--lr", "0.01", "--no-sums",
                              "--weight-decay", "1e-4", "--lr-schedule", "cosine"])
    cfg = from_args(cls, args)
    assert (cfg.lr, cfg.sums, cfg.weight_decay, cfg.lr_schedule) == (0.01, False, 1e-4, "cosine")


def test_train_leaves_the_task_defaults_to_the_task():
    parser, _ = _subparser("train")
    image = from_args(TrainConfig, parser.parse_args(["train", "--task", "polarity"])).for_task()
    assert (image.width, image.depth, image.cell, image.dtype, image.objective) == \
        (16, 8, "pair", "float32", "classify")
    tao = from_args(TrainConfig, parser.parse_args(["train", "--task", "gap"])).for_task("tao")
    assert tao.dtype == "float64"
    field = from_args(TrainConfig, parser.parse_args(["train", "--task", "bratu"])).for_task()
    assert (field.width, field.depth, field.cell, field.dtype, field.objective) == \
        (64, 3, "dense", "float64", "field")


def test_the_demos_flags_build_the_demos_config():
    parser, _ = _subparser("demo")
    cfg = from_args(DemoConfig, parser.parse_args(["demo", "--solvers", "picard,anderson",
                                                   "--rtol", "0.05", "--time-budget", "0",
                                                   "--no-baseline", "--task", "crystals"]))
    assert cfg.solvers == ("picard", "anderson") and cfg.train_rtol == 0.05
    assert cfg.time_budget is None and not cfg.baseline and cfg.epochs == 12
    assert cfg.training() == TrainConfig(**{f.name: getattr(cfg, f.name)
                                            for f in fields(TrainConfig)})
    default = from_args(DemoConfig, parser.parse_args(["demo"]))
    assert default == DemoConfig()


@pytest.mark.parametrize("argv, line", [
    (["train", "--task", "polarity", "--width", "6"], "--width 6: must be a positive multiple"),
    (["demo", "--rtol", "2"], "--rtol 2.0: must be in (0, 1)"),
    (["demo", "--max-it", "0"], "--max-it 0: must be at least 1"),
    (["compare", "--rtol", "0"], "--rtol 0.0: must be in (0, 1)"),
    (["evaluate", "--checkpoint", "x", "--seed", "-1"], "--seed -1: must be a non-negative"),
])
def test_a_declared_range_is_checked_under_the_flags_name(argv, line):
    parser = build_parser()
    assert invalid_argument(parser.parse_args(argv)).startswith(line)


def test_resume_rules_come_from_the_declarations():
    saved = {f.name: getattr(TrainConfig(task="polarity"), f.name) for f in fields(TrainConfig)}
    fixed = [n for n, (_, s) in declared(TrainConfig).items() if s.fixed_on_resume]
    assert {"task", "seed", "width", "cell", "kind", "dtype"} <= set(fixed)
    with pytest.raises(RunFolderRefused, match="--model explicit differs"):
        resumed_config(TrainConfig(task="polarity", kind="explicit"), saved, {"kind"}, "D")
    cfg, notes = resumed_config(TrainConfig(task="polarity", lr=0.1), saved, {"lr"}, "D")
    assert cfg.lr == 0.1 and notes == ["--lr 0.1 (the checkpoint's run had 0.003)"]
