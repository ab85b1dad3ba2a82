"""Run folders: resume on the checkpoint's terms, one writer, no leftovers, no blown-up model."""

import json
import os
import socket
import subprocess
import sys

import pytest
import torch

pytest.importorskip("rdkit")

from deq_petsc.checkpoint import DEQCheckpointError  # noqa: E402
from deq_petsc.train.run_folder import RunFolder  # noqa: E402
from helpers import run_cli  # noqa: E402

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
    assert r.returncode == 1, r.stdout + r.stderr
    assert last_line(r).startswith(f"deq-petsc train: error: --resume: --limit 300 differs "
                                   f"from the run in {out} (--limit 150)")
    assert len(saved(out)["history"]) == 3


@pytest.mark.parametrize("field, flag, value", [
    ("seed", "seed", 3), ("split_by", "split-by", "scaffold"), ("width", "width", 8),
    ("cell", "cell", "resnet"), ("kind", "model", "explicit"), ("task", "task", "crystals")])
def test_resume_refuses_what_changes_the_data_or_the_model(field, flag, value):
    from dataclasses import asdict, replace

    from deq_petsc.train import TrainConfig
    from deq_petsc.train.run_folder import resumed_config
    run = TrainConfig(task="polarity", limit=150, width=4)
    mine = replace(run, **{field: value})
    with pytest.raises(DEQCheckpointError, match=f"--resume: --{flag} {value} differs from the "
                                                 f"run in D"):
        resumed_config(mine, asdict(run), {flag.replace("-", "_")}, "D")
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
    # --overwrite removes the old run's outputs first: none of them survive a failed new run
    r = train(out, cache_dir, "--limit", "120", "--epochs", "2", "--lr", "1e4", "--overwrite")
    assert r.returncode == 1
    assert "Traceback" not in r.stdout + r.stderr
    assert last_line(r).startswith("deq-petsc train: error: training diverged: epoch 1 ended "
                                   "with training loss")
    assert last_line(r).endswith("no checkpoint was written; lower --lr (now 10000)")
    assert not any((out / name).exists() for name in ("checkpoint.pt", "report.json",
                                                      "metrics.json"))
    # resuming the good run with a huge step: the last good checkpoint stays as it was
    (out / "checkpoint.pt").write_bytes(before)
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
