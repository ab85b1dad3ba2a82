"""Our own PETSc options: one spec that the code reads, -help prints and the docs show."""

import re

import pytest

from deq_petsc.core import options_spec
from deq_petsc.core.errors import DEQOptionsError
from deq_petsc.core.problem import JVP_MODES
from helpers import ROOT, run_cli

PACKAGE = ROOT / "deq_petsc"


def test_the_options_reference_is_generated_from_the_spec():
    assert (ROOT / "docs" / "options.md").read_text() == options_spec.markdown(), \
        "docs/options.md is stale: python -m deq_petsc.core.options_spec > docs/options.md"


def test_no_own_option_is_read_around_the_spec():
    getter = re.compile(r"\.get(Bool|Int|Real|String|Scalar)\(\s*[\"'](deq|train)_")
    for path in PACKAGE.rglob("*.py"):
        if path.name != "options_spec.py":
            assert not getter.search(path.read_text()), f"{path}: read through options_spec"
    assert options_spec.SOLVER["deq_jvp"].choices == JVP_MODES


def test_every_own_option_is_listed_by_help(tmp_path):
    r = run_cli("train", "--task", "polarity", "--limit", "60", "--epochs", "1", "--width", "4",
                "--trainer", "tao", "--tao-batch", "16", "--no-progress", "--out", tmp_path,
                "-help")
    assert r.returncode == 0, r.stdout + r.stderr
    # the PDE task's own options are read (and listed) where its data are built
    data = run_cli("data", "--task", "bratu", "--limit", "20", "--cache-dir", tmp_path / "c",
                   "-pde_grid", "7", "-help")
    assert data.returncode == 0, data.stdout + data.stderr
    text = r.stdout + data.stdout
    prefixes = {"DEQSolver": "", "AdjointSolver": "adjoint_", "DEQ": "", "TaoTrainer": "",
                "deq_petsc.core.lean": "", "deq_petsc.science.data.pde": ""}
    for group in options_spec.GROUPS:
        assert f"{group.title} options" in text, group.title
        for o in group.options:
            line = next((x for x in text.splitlines()
                         if x.strip().startswith(f"-{prefixes[group.owner]}{o.name} <")), None)
            assert line is not None and f"({group.owner})" in line, o.name


@pytest.mark.parametrize("name, value, message", [
    ("deq_jvp", "sideways", "-deq_jvp sideways: must be one of reverse, forward"),
    ("deq_check_finite", "maybe", "-deq_check_finite maybe: not a bool"),
])
def test_a_bad_value_of_our_options_is_one_line(petsc_options, name, value, message):
    petsc_options({name: value})
    with pytest.raises(DEQOptionsError) as err:
        options_spec.SOLVER.read("")
    assert str(err.value) == message


def test_ranges_are_checked(petsc_options):
    petsc_options({"t_deq_phantom_steps": 0})
    with pytest.raises(DEQOptionsError, match=r"-t_deq_phantom_steps 0: must be in \[1, inf\]"):
        options_spec.ADJOINT.read("t_")
    assert options_spec.ADJOINT.read("u_")["deq_phantom_steps"] == 5

