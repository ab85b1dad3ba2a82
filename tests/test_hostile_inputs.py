"""Hostile inputs that reached a run (issue 35, item 11; rows of shared/HOSTILE-INPUTS.md):
every class ends in one named line, exit 2 for an input refused before PETSc starts and 1
for a run that fails, never a traceback; and a property test of the argument parsing.

In-process (``helpers.cli_in_process``) on tiny synthetic data (``helpers.synthetic_build``),
so every case takes a second or two.
"""

import contextlib
import errno
import io
import os
import pickle
from argparse import Namespace
from pathlib import Path

import pytest
import torch

from deq_petsc.science.checkpoint import FORMAT, save_checkpoint
from deq_petsc.cli.main import build_parser, explicit_flags, invalid_argument, split_petsc_args
from deq_petsc.core.errors import DEQConvergenceError, DEQInputError, DEQOptionsError
from helpers import cli_in_process, final_line, synthetic_build

#: a tiny DEQ on helpers.synthetic_build's 40 samples (contractive cell: no element channel)
SYNTH = ("--task", "polarity", "--cell", "contractive", "--width", "4", "--batch-size", "16",
         "--no-progress")


def _files(tmp_path):
    """The crafted inputs the tables name: a folder, a binary file, a plain file."""
    (tmp_path / "binary.opts").write_bytes(b"\xc4\x00\x01garbage")
    (tmp_path / "file").write_text("not a folder")
    return {"tmp": tmp_path}


# -- refused before PETSc starts: exit 2, one line ------------------------------------------
@pytest.mark.parametrize("row, argv, message", [
    (68, ["train", "--task", "polarity", "--seed", "99999999999999999999"],
     "--seed 99999999999999999999: must be a non-negative integer below 2**32"),
    (69, ["solve", "--seed", "99999999999999999999"], "--seed 99999999999999999999: must be"),
    (76, ["solve", "--size", "100000"], "--size 100000: the 8x8x100000x100000 float64 state "
                                        "(4 copies: x, z, f(z), F) needs at least "),
    (76, ["compare", "--channels", "100000", "--size", "1000"], "--size 1000: the "
                                                                "32x100000x1000x1000"),
    (81, ["train", "--task", "polarity", "--weight-decay", "1e30"],
     "--weight-decay 1e+30: must be non-negative and at most 1"),
    (85, ["demo", "--no-baseline", "--solvers", "nosuchset"],
     "--solvers nosuchset: 'nosuchset' is not a solver set; known: picard, anderson"),
    (85, ["demo", "--no-baseline", "--solvers", ","], "--solvers ,: an empty name is not a "
                                                      "solver set"),
    (85, ["demo", "--solvers", "picard,anderson,picard"], "picard is named twice"),
    (108, ["train", "--task", "polarity", "--csv", "{tmp}/file"],
     "--csv: only --task crystals reads a CSV"),
    (108, ["baseline", "--task", "mof-pore", "--csv", "x.csv"], "--csv: only --task crystals"),
    (109, ["compare", "--checkpoint", "C", "--set", "a: -snes_type anderson"],
     "--checkpoint C needs --task (the task it was trained on)"),
    (109, ["compare", "--train"], "--train needs --task"),
    (110, ["compare", "--set", "nocolon -snes_type anderson"],
     "option set 'nocolon -snes_type anderson': no 'name:' before its options"),
    (111, ["compare", "--set", "x: -snes_type \"anderson"], "option set 'x': No closing "
                                                            "quotation"),
    (112, ["compare", "--set", "a: -snes_type anderson", "--set", "a: -snes_type ngmres"],
     "option sets need distinct names: 'a' is given twice"),
    (113, ["compare", "--set", ": -snes_type anderson"], "the name before ':' is empty"),
    (115, ["compare", "--sets-file", "{tmp}/missing"], "--sets-file {tmp}/missing: no such "
                                                       "file"),
    (116, ["compare", "--sets-file", "{tmp}"], "--sets-file {tmp}: not a regular file"),
    (116, ["compare", "--sets-file", "{tmp}/binary.opts"], "not an options file (binary"),
    (153, ["data", "--task", "mof-pore", "--cache-dir", "{tmp}/file"],
     "--cache-dir {tmp}/file: is a file, not a folder"),
])
def test_refused_before_any_work(tmp_path, capfd, row, argv, message):
    names = _files(tmp_path)
    code, text = cli_in_process(capfd, *[a.format(**names) for a in argv])
    assert code == 2 and "Traceback" not in text, (row, text)
    assert final_line(text).startswith(f"deq-petsc {argv[0]}: error: "), (row, text)
    assert message.format(**names) in final_line(text), (row, text)


def test_a_colon_in_a_set_name_and_sets_that_parse(tmp_path):
    """Row 111: a set's name ends at the first colon before an option, so names with
    colons of their own (a URL) can be written; good sets and files pass."""
    from deq_petsc.core.solver_sets import read_option_sets
    sets = read_option_sets(['=HYPERLINK("http://x"): -snes_type anderson', "b:-snes_type "
                             "ngmres", "-snes_type nrichardson", "# comment", "default:"])
    assert [(s.name, s.options) for s in sets] == [
        ('=HYPERLINK("http://x")', {"snes_type": "anderson"}), ("b", {"snes_type": "ngmres"}),
        ("-snes_type nrichardson", {"snes_type": "nrichardson"}), ("default", {})]
    good = tmp_path / "sets.txt"
    good.write_text("# sets\na: -snes_type anderson\n\nb: -snes_type ngmres\n")
    args, _ = split_petsc_args(build_parser(), ["compare", "--sets-file", str(good), "--set",
                                                "c: -snes_type nrichardson"])
    assert invalid_argument(args) is None


# -- runs that fail: exit 1, one line, nothing lost -------------------------------------------
@pytest.fixture
def synthetic_data(monkeypatch):
    monkeypatch.setattr("deq_petsc.cli.commands._load_data", synthetic_build)


@pytest.mark.parametrize("row, flags, message", [
    (71, ("--limit", "1"), "this polarity build is too small to train on: 1 training, 0 "
                           "validation and 0 test samples of 1 (--limit 1)"),
    (72, ("--limit", "5"), "4 training, 0 validation and 1 test samples of 5 (--limit 5); "
                           "training needs 2 training samples and one each to validate and "
                           "test: raise --limit"),
    (72, ("--limit", "6"), "5 training, 1 validation and 0 test samples"),
    (77, ("--width", "64"), "--width 64: a batch of 16 64x6x6 float32 states needs at least "
                            "0.000824 GiB; the address-space limit (ulimit -v) is 9.31e-05 GiB "
                            "(lower --width or --batch-size)"),
])
def test_train_refuses_a_build_it_cannot_train_on(tmp_path, capfd, monkeypatch, synthetic_data,
                                                  row, flags, message):
    """Rows 71, 72, 77: refused right after the data is loaded, before any training; the
    run folder gets nothing."""
    monkeypatch.setattr("deq_petsc.core.devices.available_memory",
                        lambda: (100_000, "the address-space limit (ulimit -v)"))
    out = tmp_path / "run"
    code, text = cli_in_process(capfd, "train", *SYNTH, "--epochs", "1", "--out", out, *flags)
    assert code == 2 and "Traceback" not in text, text
    assert final_line(text).startswith("deq-petsc train: error: ") and \
        message in final_line(text), text
    assert "epoch   1" not in text and not (out / "checkpoint.pt").exists()


def test_a_learning_rate_that_blows_the_weights_up_is_named(tmp_path, capfd, synthetic_data):
    """Row 80: --lr 1e30 makes the cell Inf at the next batch's first evaluation; the error
    names the step size, not the solver."""
    code, text = cli_in_process(capfd, "train", *SYNTH, "--epochs", "1", "--lr", "1e30",
                                "--out", tmp_path / "run")
    assert code == 1 and "Traceback" not in text, text
    assert final_line(text).startswith(
        "deq-petsc train: error: training diverged: in epoch 1 Adam's steps blew the weights "
        "up (largest |weight| "), text
    assert final_line(text).endswith("no checkpoint was written; lower --lr (now 1e+30)")


def test_an_unknown_device_is_one_line(capfd):
    """Row 73."""
    code, text = cli_in_process(capfd, "solve", "--device", "foo")
    assert code == 2 and "Traceback" not in text, text
    assert final_line(text) == ("deq-petsc solve: error: --device foo: not a device; use cpu, "
                                "cuda or cuda:N")


def _evil_checkpoint(path, marker, raw=False):
    """A file whose unpickling runs ``touch marker``: inside a valid checkpoint (torch.save)
    or as a plain pickle."""
    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)
    if raw:
        path.write_bytes(pickle.dumps(Evil(), protocol=4))
    else:
        torch.save({"format": FORMAT, "model": {}, "x": Evil()}, path)
    return path


@pytest.mark.parametrize("row, make, message", [
    (121, lambda p, m: _evil_checkpoint(p, m), "refusing to load {path}: it holds a Python "
                                               "object (posix.system), where deq_petsc "
                                               "checkpoints hold only tensors and plain data"),
    (122, lambda p, m: _evil_checkpoint(p, m, raw=True),
     "refusing to load {path}: it is a plain Python pickle (Python objects), not a torch "
     "checkpoint"),
    (123, lambda p, m: save_checkpoint({}, p),
     "checkpoint {path} has no 'model' (a deq_petsc checkpoint holds model, model_config, "
     "train_config, task)"),
])
def test_checkpoints_that_hold_code_or_lack_keys(tmp_path, capfd, row, make, message):
    marker = tmp_path / "PWNED"
    path = make(tmp_path / "c.pt", marker)
    for command in (("predict", "--checkpoint", path, "--smiles", "CCO"),
                    ("evaluate", "--checkpoint", path)):
        code, text = cli_in_process(capfd, *command)
        assert code == 1 and "Traceback" not in text, text
        assert message.format(path=path) in final_line(text), text
        assert "corrupt" not in text and not marker.exists()


def test_compare_refuses_a_checkpoint_of_another_task(tmp_path, capfd):
    """Row 117: found from the checkpoint, before the data is built."""
    path = save_checkpoint({"model": {}, "model_config": {}, "task": {},
                            "train_config": {"task": "crystals"}}, tmp_path / "cry.pt")
    code, text = cli_in_process(capfd, "compare", "--task", "polarity", "--checkpoint", path)
    assert code == 2 and "graph images" not in text, text
    assert final_line(text) == (f"deq-petsc compare: error: {path} was trained on 'crystals', "
                                f"not 'polarity': give --task crystals")


class _Ranks:
    """A communicator of ``size`` ranks, seen from ``rank`` (what _task_problem asks)."""

    def __init__(self, size, rank=0):
        self.size, self.rank = size, rank

    def getSize(self):
        return self.size

    def getRank(self):
        return self.rank


@pytest.mark.parametrize("batch, limit, message", [
    (1, 40, "--batch 1 is smaller than the 2 MPI ranks: every rank needs a sample"),
    (8, 10, "the test split of this polarity build (1 images; --limit 10) is smaller than "
            "the 2 MPI ranks"),
])
def test_compare_task_leaves_no_rank_empty(synthetic_data, batch, limit, message):
    """Row 164 (mpiexec -n 2 compare --task ... --batch 1): refused, as _cell_problem does."""
    from deq_petsc.cli.commands import _task_problem
    args = Namespace(task="polarity", limit=limit, seed=0, cache_dir=None, checkpoint=None,
                     width=4, batch=batch, device="cpu")
    with pytest.raises(DEQInputError, match=message.replace("(", r"\(").replace(")", r"\)")):
        _task_problem(args, _Ranks(2, rank=1))


def _full_disk(monkeypatch, where: str, after: int = 0):
    """The atomic writes that ``where`` imports fail with ENOSPC after ``after`` succeed,
    as on a full disk (the write inside atomic_write raises)."""
    from deq_petsc.process.atomic import atomic_write
    calls = []

    @contextlib.contextmanager
    def writer(path, mode="w"):
        calls.append(path)
        with atomic_write(path, mode) as fh:
            if len(calls) > after:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            yield fh
    monkeypatch.setattr(f"{where}.atomic_write", writer)


def test_a_full_disk_while_saving_a_checkpoint(tmp_path, capfd, monkeypatch, synthetic_data):
    """Row 166: epoch 2's checkpoint cannot be written; epoch 1's stays, one line, exit 1."""
    from deq_petsc.science.checkpoint import load_checkpoint
    _full_disk(monkeypatch, "deq_petsc.science.checkpoint", after=1)
    out = tmp_path / "run"
    code, text = cli_in_process(capfd, "train", *SYNTH, "--epochs", "2", "--out", out)
    assert code == 1 and "Traceback" not in text, text
    assert final_line(text) == (
        f"deq-petsc train: error: no space left on device writing {out}/checkpoint.pt; the "
        f"previous checkpoint.pt is intact (replaced only when the new one is written whole)")
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1


def test_a_full_disk_while_writing_a_csv(tmp_path, capfd, monkeypatch):
    """Row 167's class: a CSV of results (write_csv) on a full disk: one line naming it."""
    _full_disk(monkeypatch, "deq_petsc.process.atomic")
    out = tmp_path / "cmp"
    code, text = cli_in_process(capfd, "compare", "--size", "4", "--channels", "2", "--batch",
                                "2", "--set", "a: -snes_type anderson", "--out", out)
    assert code == 1 and "Traceback" not in text, text
    assert final_line(text) == (f"deq-petsc compare: error: no space left on device writing "
                                f"{out}/results.csv; no partial results.csv was left")


def test_an_os_error_without_errno_is_not_hidden(monkeypatch):
    """The OSError branch names the system's refusals; one raised by code (no errno) is a
    bug and keeps its traceback."""
    import deq_petsc.cli.commands as app
    from deq_petsc.cli.main import main

    def broken(args):
        raise OSError("a bug, not the disk")
    monkeypatch.setitem(app.COMMANDS, "solve", broken)
    with pytest.raises(OSError, match="a bug"):
        main(["solve"])


# -- solver and option messages ---------------------------------------------------------------
def test_an_iterate_that_never_moves_is_named(petsc_options):
    """Row 93: -snes_anderson_beta 0 takes zero steps; the hint says so instead of 'try a
    faster method'."""
    from deq_petsc import DEQSolver, FixedPointProblem
    from deq_petsc.science.models import TanhCell
    petsc_options({"stk_snes_type": "anderson", "stk_snes_anderson_beta": "0",
                   "stk_snes_max_it": "5"})
    with DEQSolver(prefix="stk_") as solver:
        with pytest.raises(DEQConvergenceError, match="the iterate never moved") as err:
            solver.solve(FixedPointProblem(TanhCell(4, contraction=0.5),
                                           torch.ones(2, 4, dtype=torch.float64)))
    assert "try a faster method" not in str(err.value)


@pytest.mark.parametrize("value", ["nan", "inf", "0", "-1"])
def test_phantom_damping_outside_its_range(petsc_options, value):
    """Row 100: NaN passed every comparison of the range check."""
    from deq_petsc.core.adjoint import AdjointSolver
    petsc_options({"phd_deq_method": "phantom", "phd_deq_phantom_damping": value})
    with pytest.raises(DEQOptionsError, match="-phd_deq_phantom_damping .*: must be in"):
        AdjointSolver(prefix="phd_")


def test_a_cache_entry_without_one_of_its_arrays_is_rebuilt(tmp_path, capsys):
    """Row 151: meta.json without the digest of 'images' is a stale entry, rebuilt (one
    line on stderr), not a KeyError on every load until --rebuild."""
    import json

    from deq_petsc.science.data.tasks import load_task
    first = load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False)
    meta_file = tmp_path / "polarity" / Path(first.cache_path).name / "meta.json"
    meta = json.loads(meta_file.read_text())
    del meta["digests"]["images"]
    meta_file.write_text(json.dumps(meta))
    again = load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False)
    assert not again.from_cache and torch.equal(again.images, first.images)
    assert f"{meta_file} records no 'images' array; rebuilding" in capsys.readouterr().err
    assert load_task("polarity", limit=20, seed=3, cache_dir=tmp_path, progress=False).from_cache


# -- property: any combination of our flags parses or is one line with exit 2 ----------------
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_PARSER = build_parser()
_COMMANDS = {name: sub for action in _PARSER._actions if hasattr(action, "choices")
             and isinstance(action.choices, dict) for name, sub in action.choices.items()}
_ODD = st.sampled_from(["", "-1", "0", "nan", "inf", "-inf", "1e400", "99999999999999999999",
                        ",", "a:b", "x y", "--", "-", "/", ".", "..", "=1+2"])
#: what a command line can hold: any text but NUL (argv entries are C strings)
_TEXT = st.text(st.characters(blacklist_characters="\0"), max_size=8)


def _value(action):
    """Text a user could type after ``action``'s flag: its own kind of value, or anything."""
    if action.choices:
        kind = st.sampled_from([str(c) for c in action.choices])
    elif action.type is int:
        kind = st.integers(-10**25, 10**25).map(str)
    elif action.type is float:
        kind = st.floats().map(repr)
    else:
        kind = _TEXT
    return kind | _ODD


@st.composite
def _command_lines(draw):
    """A command, its required flags (one of a required group) most of the time, and up
    to 6 more of its flags, each with a value of its kind or an odd one."""
    name = draw(st.sampled_from(sorted(_COMMANDS)))
    command = _COMMANDS[name]
    actions = [a for a in command._actions if a.option_strings and a.dest != "help"]
    chosen = [a for a in actions if a.required] + [
        draw(st.sampled_from(g._group_actions))
        for g in command._mutually_exclusive_groups if g.required]
    if draw(st.integers(0, 9)) == 0:
        chosen = []                              # sometimes without what is required
    argv = [name]
    for action in chosen + draw(st.lists(st.sampled_from(actions), max_size=6)):
        argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs != 0:
            argv.append(draw(_value(action)))
    return argv


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(_command_lines())
def test_any_flags_parse_or_end_in_one_line(argv):
    """split_petsc_args + invalid_argument, as main runs them: a namespace, or SystemExit(2)
    whose message is one line; never another exception."""
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            args, _ = split_petsc_args(_PARSER, argv)
            args.explicit = explicit_flags(args.parser, argv)
            problem = invalid_argument(args)
            if problem is None:
                return
            args.parser.error(problem)
        except SystemExit as exit_:
            assert exit_.code == 2, (argv, err.getvalue())
    last = err.getvalue().strip().splitlines()[-1]
    assert last.startswith(f"deq-petsc {argv[0]}: error: "), (argv, err.getvalue())
