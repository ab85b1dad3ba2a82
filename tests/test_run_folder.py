"""Run folders: resume on the checkpoint's terms, one writer, no leftovers, no blown-up model."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("rdkit")

from deq_petsc.science.checkpoint import DEQCheckpointError  # noqa: E402
from deq_petsc.science.train.run_folder import MARKER, OUTPUTS, RunFolder  # noqa: E402
from helpers import cli_in_process, final_line, run_cli, synthetic_build  # noqa: E402

TINY = ("--task", "polarity", "--width", "4", "--no-progress")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deq_cache")


def train(out, cache_dir, *args):
    return run_cli("train", *TINY, "--out", out, "--cache-dir", cache_dir, *args)


def last_line(r):
    return (r.stdout + r.stderr).strip().splitlines()[-1]


def saved(out):
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_resume_keeps_the_runs_settings_and_applies_typed_ones(cache_dir, tmp_path):
    out = tmp_path / "run"
    r = train(out, cache_dir, "--limit", "150", "--epochs", "1", "--lr", "1e-3")
    assert r.returncode == 0, r.stdout + r.stderr
    # untyped --limit/--lr come from the checkpoint (not the defaults 2000 / 3e-3)
    r = train(out, cache_dir, "--epochs", "2", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "task polarity: 150 graph images" in r.stdout
    assert "resuming" in r.stdout and "--epochs 2 (the checkpoint's run had 1)" in r.stdout
    state = saved(out)
    assert state["train_config"]["limit"] == 150 and state["train_config"]["lr"] == 1e-3
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-3
    # a typed --lr applies from the next epoch, and the checkpoint says so
    r = train(out, cache_dir, "--epochs", "3", "--lr", "1e-4", "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "--lr 0.0001 (the checkpoint's run had 0.001)" in r.stdout
    state = saved(out)
    assert state["train_config"]["lr"] == 1e-4
    assert state["optimizer"]["param_groups"][0]["lr"] == 1e-4
    assert len(state["history"]) == 3
    # what changes the data or the model is refused, in one line, before any work
    r = train(out, cache_dir, "--epochs", "4", "--limit", "300", "--resume")
    assert r.returncode == 2, r.stdout + r.stderr
    assert last_line(r).startswith(f"deq-petsc train: error: --resume: --limit 300 differs "
                                   f"from the run in {out} (--limit 150)")
    assert len(saved(out)["history"]) == 3


@pytest.mark.parametrize("field, flag, value", [
    ("seed", "seed", 3), ("split_by", "split-by", "scaffold"), ("width", "width", 8),
    ("cell", "cell", "resnet"), ("kind", "model", "explicit"), ("task", "task", "crystals")])
def test_resume_refuses_what_changes_the_data_or_the_model(field, flag, value):
    from dataclasses import asdict, replace

    from deq_petsc.science.train import TrainConfig
    from deq_petsc.science.train.run_folder import resumed_config
    run = TrainConfig(task="polarity", limit=150, width=4)
    mine = replace(run, **{field: value})
    with pytest.raises(DEQCheckpointError, match=f"--resume: --{flag} {value} differs from the "
                                                 f"run in D"):
        resumed_config(mine, asdict(run), {field}, "D")     # the flag's dest: the field
    # the same value left untyped is the checkpoint's, silently
    assert resumed_config(mine, asdict(run), set(), "D") == (run, [])


def test_resume_rewinds_metrics_written_ahead_of_the_checkpoint(cache_dir, tmp_path):
    out = tmp_path / "run"
    assert train(out, cache_dir, "--limit", "120", "--epochs", "1").returncode == 0
    # a kill between the metrics write and the checkpoint write of epoch 2
    rows = json.loads((out / "metrics.json").read_text())
    (out / "metrics.json").write_text(json.dumps(rows + [{**rows[0], "epoch": 2}]))
    (out / ".checkpoint.pt.k1ll3d").write_bytes(b"half a checkpoint")
    r = train(out, cache_dir, "--resume")
    assert r.returncode == 0, r.stdout + r.stderr
    assert [row["epoch"] for row in json.loads((out / "metrics.json").read_text())] == [1]
    assert not (out / ".checkpoint.pt.k1ll3d").exists()


def test_a_blown_up_training_ends_in_an_error_and_keeps_no_blown_up_model(cache_dir,
                                                                          tmp_path):
    out = tmp_path / "run"
    assert train(out, cache_dir, "--limit", "120", "--epochs", "1").returncode == 0
    before = (out / "checkpoint.pt").read_bytes()
    # --overwrite replaces the old run only once the new one has a checkpoint: a new run
    # that blows up in its first epoch leaves the old run as it was
    r = train(out, cache_dir, "--limit", "120", "--epochs", "2", "--lr", "1e4", "--overwrite")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert last_line(r).startswith("deq-petsc train: error: training diverged: epoch 1 ended "
                                   "with training loss")
    assert last_line(r).endswith("no checkpoint was written; lower --lr (now 10000)")
    assert (out / "checkpoint.pt").read_bytes() == before
    assert (out / "report.json").exists() and not list(out.glob(".replaced-*"))
    # resuming the good run with a huge step: the last good checkpoint stays as it was
    r = train(out, cache_dir, "--epochs", "3", "--lr", "1e4", "--resume")
    assert r.returncode == 1 and "the checkpoint of epoch 1" in last_line(r)
    assert (out / "checkpoint.pt").read_bytes() == before


def test_one_writer_per_run_folder(tmp_path):
    out = tmp_path / "run"
    with RunFolder(out):
        assert (out / ".lock").read_text() == f"{socket.gethostname()} {os.getpid()}"
        with pytest.raises(DEQCheckpointError, match=f"in use by another run \\(pid "
                                                      f"{os.getpid()}\\)"):
            RunFolder(out).__enter__()
    assert not (out / ".lock").exists()
    # a lock left by a process that is gone is taken over
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (out / ".lock").write_text(f"{socket.gethostname()} {gone}")
    with RunFolder(out):
        assert (out / ".lock").read_text().endswith(str(os.getpid()))


def test_resume_and_overwrite_together_is_refused(tmp_path):
    r = run_cli("train", "--task", "polarity", "--resume", "--overwrite", "--out", tmp_path)
    assert r.returncode == 2 and "--resume and --overwrite" in r.stderr


# -- nothing of an old run is lost (in-process, on a synthetic data set) ---------------------
SYNTH = ("--task", "polarity", "--cell", "contractive", "--width", "4", "--batch-size", "16",
         "--epochs", "1", "--no-progress")


@pytest.fixture
def fake_data(monkeypatch):
    monkeypatch.setattr("deq_petsc.cli.commands._load_data", synthetic_build)


def outputs_of(out):
    return {name: (out / name).read_bytes() for name in OUTPUTS if (out / name).exists()}


@pytest.fixture
def old_run(tmp_path, fake_data, capfd):
    out = tmp_path / "run"
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", out)
    assert code == 0, text
    return out, outputs_of(out)


def gone_pid() -> str:
    return subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("flags, options, message", [
    ((), {"snes_type": "foo"}, "Unable to find requested SNES type foo"),
    ((), {"snes_anderson_m": "0"}, "-snes_anderson_m 0: must be at least 1"),
    ((), {"adjoint_ksp_type": "nonexistent"}, "the adjoint KSP (prefix adjoint_) were rejected"),
    ((), {"deq_jvp": "sideways"}, "-deq_jvp sideways: must be one of"),
    (("--trainer", "tao"), {"tao_type": "foo"}, "Unable to find requested Tao type foo"),
    # fails after the old run was moved aside, before the new run's first checkpoint
    (("--lr", "1e5", "--epochs", "2"), {}, "training diverged: epoch 1"),
])
def test_overwrite_keeps_the_old_run_when_the_new_one_fails(old_run, petsc_options, capfd,
                                                            flags, options, message):
    out, before = old_run
    petsc_options(options)
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", out, "--overwrite", *flags)
    # an option refused is input (2); a run that fails is a run (1)
    assert code == (2 if options else 1) and "Traceback" not in text, text
    assert final_line(text).startswith("deq-petsc train: error: ") and message in text
    assert outputs_of(out) == before
    assert not list(out.glob(".replaced-*")) and (out / MARKER).exists()


def test_overwrite_replaces_the_old_run_once_the_new_one_has_a_checkpoint(old_run, capfd):
    out, before = old_run
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", out, "--overwrite",
                                "--seed", "1")
    assert code == 0, text
    after = outputs_of(out)
    assert set(after) == set(before) and after["checkpoint.pt"] != before["checkpoint.pt"]
    assert after["metrics.csv"] != before["metrics.csv"]        # seed 1's, not seed 0's
    assert not list(out.glob(".replaced-*"))
    assert json.loads((out / MARKER).read_text())["kind"] == "deq-petsc train run"


def test_a_killed_overwrite_is_settled_when_the_folder_is_next_opened(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    for name in ("checkpoint.pt", "metrics.csv", "report.json"):
        (out / name).write_text(f"old {name}")
    old = outputs_of(out)

    def killed_overwrite(new_checkpoint: bool):
        """An --overwrite run killed after moving the old run aside (no __exit__)."""
        RunFolder(out, overwrite=True).__enter__().start()
        (out / "metrics.csv").write_text("the new run's first epoch")
        if new_checkpoint:
            (out / "checkpoint.pt").write_text("the new run's checkpoint")
        (out / ".lock").write_text(f"{socket.gethostname()} {gone_pid()}")

    killed_overwrite(new_checkpoint=False)
    assert [p.name for p in out.glob(".replaced-*")] == [f".replaced-{os.getpid()}"]
    # the old run still counts: a new run without --resume/--overwrite is refused
    with pytest.raises(DEQCheckpointError, match="already holds a checkpoint"):
        RunFolder(out).check()
    with RunFolder(out, overwrite=False):
        pass
    assert outputs_of(out) == old and not list(out.glob(".replaced-*"))
    # once the new run had written a checkpoint, the old one goes
    killed_overwrite(new_checkpoint=True)
    with RunFolder(out):
        pass
    assert outputs_of(out) == {"checkpoint.pt": b"the new run's checkpoint",
                               "metrics.csv": b"the new run's first epoch"}
    assert not list(out.glob(".replaced-*"))


@pytest.mark.parametrize("present, overwrite, refused", [
    (("report.json", "metrics.csv"), False, "holds metrics.csv, report.json but is not a "
                                            "deq-petsc run folder"),
    (("curves.png",), False, "holds curves.png but"),
    (("report.json", "metrics.csv"), True, None),
    (("notes.txt",), False, None),                       # not a run's output: left alone
    ((MARKER, "metrics.csv"), False, None),            # a run killed before its checkpoint
    (("checkpoint.pt",), False, "already holds a checkpoint"),
])
def test_a_folder_that_is_not_a_run_is_refused_without_overwrite(tmp_path, present, overwrite,
                                                                 refused):
    for name in present:
        (tmp_path / name).write_text("x")
    folder = RunFolder(tmp_path, overwrite=overwrite)
    if refused is None:
        folder.check()
    else:
        with pytest.raises(DEQCheckpointError, match=refused):
            folder.check()


@pytest.mark.parametrize("flags, options, message", [
    ((), {"snes_type": "foo"}, "Unable to find requested SNES type foo"),
    ((), {"adjoint_ksp_type": "nonexistent"}, "the adjoint KSP (prefix adjoint_) were rejected"),
    ((), {"deq_jvp": "sideways"}, "-deq_jvp sideways: must be one of"),
    (("--trainer", "tao"), {"tao_type": "foo"}, "Unable to find requested Tao type foo"),
])
def test_options_petsc_rejects_end_the_run_before_its_data_is_built(
        tmp_path, petsc_options, capfd, monkeypatch, flags, options, message):
    """A source can take minutes to build: a typo in a PETSc option must not wait for it."""
    def build(*args, **kwargs):
        raise AssertionError("the data was built before the options were read")
    monkeypatch.setattr("deq_petsc.cli.commands._load_data", build)
    petsc_options(options)
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", tmp_path / "run", *flags)
    assert code == 2 and message in final_line(text), text
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("killed", [False, True])
def test_a_failed_overwrite_of_a_foreign_folder_leaves_it_foreign(tmp_path, killed):
    """--overwrite on someone's report.json, failing before its first checkpoint: the file
    comes back and the folder is not marked as a run (or a later plain train would write
    over it), whether the failure ends the process or kills it (settled at the next open)."""
    (tmp_path / "report.json").write_text("mine")
    folder = RunFolder(tmp_path, overwrite=True)
    if killed:
        folder.__enter__()
        folder.start()
        (tmp_path / "metrics.csv").write_text("the new run's first epoch")
        folder.lock.unlink()                     # the process died; a new one opens the folder
        with RunFolder(tmp_path):
            pass
    else:
        with pytest.raises(RuntimeError, match="failed before a checkpoint"):
            with folder:
                folder.start()
                raise RuntimeError("failed before a checkpoint")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]
    assert (tmp_path / "report.json").read_text() == "mine"
    with pytest.raises(DEQCheckpointError, match="is not a deq-petsc run folder"):
        RunFolder(tmp_path).check()


def test_train_into_a_folder_that_is_not_a_run_is_one_line_and_touches_nothing(
        tmp_path, fake_data, capfd):
    for name in ("report.json", "metrics.csv", "notes.txt"):
        (tmp_path / name).write_text(f"mine: {name}")
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", tmp_path)
    assert code == 2 and final_line(text) == (
        f"deq-petsc train: error: {tmp_path} holds metrics.csv, report.json but is not a "
        f"deq-petsc run folder (no {MARKER}): pass --overwrite to replace them, or choose "
        f"another --out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.csv", "notes.txt",
                                                          "report.json"]
    assert all((tmp_path / n).read_text() == f"mine: {n}" for n in ("report.json", "notes.txt"))


def test_a_refused_run_leaves_no_folder_behind(tmp_path, fake_data, petsc_options, capfd):
    petsc_options({"snes_type": "foo"})
    code, text = cli_in_process(capfd, "train", *SYNTH, "--out", tmp_path / "new")
    assert code == 2 and "Unable to find requested SNES type foo" in final_line(text)
    assert not (tmp_path / "new").exists()


@pytest.mark.parametrize("earlier", ["summary.json", "picard/checkpoint.pt"])
def test_a_second_demo_into_one_out_is_refused(tmp_path, monkeypatch, capfd, earlier):
    def no_data(*args, **kwargs):
        raise DEQCheckpointError("the data were asked for")

    monkeypatch.setattr("deq_petsc.cli.commands._load_data", no_data)
    (tmp_path / earlier).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / earlier).write_text("the first demo's")
    code, text = cli_in_process(capfd, "demo", "--out", tmp_path, "--no-progress")
    assert code == 2 and final_line(text) == (
        f"deq-petsc demo: error: {tmp_path} holds an earlier demo ({earlier}): pass "
        f"--overwrite to replace it, or choose another --out")
    assert (tmp_path / earlier).read_text() == "the first demo's"
    code, text = cli_in_process(capfd, "demo", "--out", tmp_path, "--overwrite",
                                "--no-progress")
    assert code == 1 and final_line(text).endswith("the data were asked for")
