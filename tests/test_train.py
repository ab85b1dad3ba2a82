"""Training, resuming, checkpoints and the train/evaluate/predict commands on tiny subsets."""

import json
import os
import re

import numpy as np
import pytest
import torch

pytest.importorskip("rdkit")

from deq_petsc.science.checkpoint import DEQCheckpointError  # noqa: E402
from deq_petsc.science.data import load_task  # noqa: E402
from deq_petsc.science.train import Trainer, TrainConfig, load_checkpoint  # noqa: E402

from helpers import run_cli  # noqa: E402

TINY = dict(task="polarity", batch_size=32, width=8, lr=3e-3, seed=1)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("train_cache")


@pytest.fixture(scope="module")
def tiny(cache_dir):
    return load_task("polarity", limit=160, seed=1, cache_dir=cache_dir, progress=False)


def test_training_lowers_the_loss_and_writes_the_run(tiny, tmp_path):
    trainer = Trainer(TrainConfig(epochs=4, **TINY), tiny, tmp_path, progress=False,
                      log=lambda *a: None)
    history = trainer.fit()
    report = trainer.finish()
    trainer.destroy()
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert all(h["forward_its"] > 0 and h["backward_its"] > 0 for h in history)
    for name in ("checkpoint.pt", "metrics.csv", "metrics.json", "curves.png",
                 "confusion.png", "reliability.png", "report.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert 0 <= report["calibration"]["ece"] <= 1
    assert sum(b["n"] for b in report["calibration"]["bins"]) == len(tiny.indices("test"))
    assert sum(report["predicted_balance"].values()) == len(tiny.indices("test"))
    rows = (tmp_path / "metrics.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("epoch,train_loss")
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["accuracy"] == pytest.approx(report["accuracy"])
    assert sum(sum(r) for r in saved["confusion"]) == len(tiny.indices("test"))
    assert load_checkpoint(tmp_path / "checkpoint.pt")["epoch"] == 4


def test_resume_matches_an_uninterrupted_run(tiny, tmp_path):
    """... on a cosine schedule: the resumed epochs take the uninterrupted run's step sizes."""
    cfg = TrainConfig(epochs=3, lr_schedule="cosine", **TINY)
    straight = Trainer(cfg, tiny, tmp_path / "straight", progress=False, log=lambda *a: None)
    straight.fit()
    # lr (1 + cos(pi e / 3)) / 2 for e = 0, 1, 2
    assert [h["lr"] for h in straight.history] == pytest.approx([3e-3, 2.25e-3, 0.75e-3])
    assert straight.opt.param_groups[0]["lr"] == pytest.approx(0.75e-3)
    # "killed" after epoch 1: a run that stops there, then a new process resumes it
    first = Trainer(TrainConfig(epochs=1, lr_schedule="cosine", **TINY), tiny,
                    tmp_path / "resumed", progress=False, log=lambda *a: None)
    first.fit()
    first.destroy()
    resumed = Trainer(cfg, tiny, tmp_path / "resumed", progress=False, log=lambda *a: None)
    assert resumed.resume() == 1
    resumed.fit()
    for a, b in zip(straight.history, resumed.history):
        for key in ("train_loss", "train_acc", "val_loss", "val_acc", "forward_its", "lr"):
            assert a[key] == pytest.approx(b[key], rel=1e-6, abs=1e-9), key
    for (name, p), q in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.allclose(p, q, rtol=1e-6, atol=1e-8), name
    straight.destroy()
    resumed.destroy()


def test_corrupt_checkpoint_is_a_clear_error(tiny, tmp_path):
    trainer = Trainer(TrainConfig(epochs=1, **TINY), tiny, tmp_path, progress=False,
                      log=lambda *a: None)
    trainer.fit()
    path = tmp_path / "checkpoint.pt"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DEQCheckpointError, match="corrupt or truncated"):
        trainer.resume()
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(DEQCheckpointError, match="corrupt or truncated"):
        load_checkpoint(path)
    trainer.destroy()


class _RunsCode:
    """What a hostile checkpoint carries: unpickling it calls a function of the attacker's."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "deq_petsc-checkpoint-1", "epoch": 1, "model": _RunsCode(marker)},
               path)
    with pytest.raises(DEQCheckpointError, match="refusing to load .* could run code"):
        load_checkpoint(path)
    assert not marker.exists()
    r = run_cli("predict", "--checkpoint", path, "--smiles", "CCO")
    assert r.returncode == 1 and "refusing to load" in r.stdout + r.stderr
    assert len((r.stdout + r.stderr).strip().splitlines()) == 1 and not marker.exists()


def test_checkpoints_hold_plain_data_only(tmp_path):
    import numpy as np

    from deq_petsc.science.train import save_checkpoint

    state = {"epoch": 2, "history": [{"loss": np.float32(0.5), "its": np.int64(3)}],
             "classes": ("a", "b"), "weights": torch.ones(2), "arr": np.arange(3)}
    back = load_checkpoint(save_checkpoint(state, tmp_path / "c.pt"))
    assert back["history"] == [{"loss": 0.5, "its": 3}]
    assert type(back["history"][0]["its"]) is int and back["classes"] == ["a", "b"]
    assert torch.equal(back["arr"], torch.arange(3)) and torch.equal(back["weights"],
                                                                       torch.ones(2))
    with pytest.raises(TypeError, match=r"state\['bad'\]: a object cannot go into"):
        save_checkpoint({"bad": object()}, tmp_path / "d.pt")
    assert not (tmp_path / "d.pt").exists()


def test_train_cli_passes_petsc_options_and_predicts(cache_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--task", "polarity", "--limit", "120", "--epochs", "1", "--width",
                "8", "--seed", "1", "--out", out, "--cache-dir", cache_dir, "--no-progress",
                "-snes_type", "ngmres", "-adjoint_ksp_type", "bcgs")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "forward solver: ngmres" in r.stdout
    assert re.search(r"accuracy [0-9.]+ on \d+ samples \(standard error 0\.\d+\); "
                     r"majority-class baseline", r.stdout)
    ckpt = out / "checkpoint.pt"
    # the run folder records the options the run trained with
    record = json.loads((out / "run.json").read_text())
    assert record["petsc_options"]["snes_type"] == "ngmres" and record["settings"]["limit"] == 120
    # and the kernels it computed with: the portable ones unless the test's caller chose
    from deq_petsc.process.kernels import PORTABLE, cpu_flags
    if "DEQ_PETSC_KERNELS" not in os.environ and {"avx2", "fma"} <= (cpu_flags() or set()):
        environment = record["machine"]["environment"]
        assert {k: environment[k] for k in PORTABLE} == \
            {k: os.environ.get(k, v) for k, v in PORTABLE.items()}
        assert record["software"]["torch_cpu_capability"] in ("AVX2", "DEFAULT") or \
            "ATEN_CPU_CAPABILITY" in os.environ

    ok = run_cli("predict", "--checkpoint", ckpt, "--smiles", "CC(=O)O")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert re.search(r"SMILES CC\(=O\)O: (weakly|strongly) polar \(p = 0\.\d+\)", ok.stdout)
    bad = run_cli("predict", "--checkpoint", ckpt, "--smiles", "C1CC")
    assert bad.returncode == 2 and "unparsable SMILES 'C1CC'" in bad.stdout + bad.stderr

    ev = run_cli("evaluate", "--checkpoint", ckpt, "--cache-dir", cache_dir,
                 "--out", tmp_path / "evaluation.json",
                 "-snes_type", "nrichardson", "-snes_linesearch_type", "basic")
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "forward solver: nrichardson" in ev.stdout
    # evaluate --out: the report as JSON, with the options used and the record
    evaluation = json.loads((tmp_path / "evaluation.json").read_text())
    assert f"accuracy {evaluation['accuracy']:.3f}" in ev.stdout
    assert evaluation["options"] == {"snes_type": "nrichardson", "snes_linesearch_type": "basic"}
    assert evaluation["forward_solver"]["snes_type"] == "nrichardson"
    assert evaluation["record"]["settings"]["split"] == "test"

    # --resume trains on with the run's solvers, but for one typed anew
    res = run_cli("train", "--epochs", "2", "--out", out, "--cache-dir", cache_dir,
                  "--no-progress", "--resume", "--task", "polarity", "-adjoint_ksp_type", "gmres")
    assert res.returncode == 0, res.stdout + res.stderr
    assert ("new solver options: -adjoint_ksp_type gmres (the run had -adjoint_ksp_type "
            "bcgs); restored the run's solver options: -snes_type ngmres") in res.stdout
    assert "forward solver: ngmres" in res.stdout
    options = json.loads((out / "run.json").read_text())["petsc_options"]
    assert options["snes_type"] == "ngmres" and options["adjoint_ksp_type"] == "gmres"

    again = run_cli("train", "--task", "polarity", "--limit", "120", "--epochs", "1",
                    "--out", out, "--cache-dir", cache_dir, "--no-progress")
    assert again.returncode == 2 and "already holds a checkpoint" in again.stdout + again.stderr


SUMMARY_FIELDS = {"options", "test_accuracy", "train_seconds", "seconds_to_target",
                  "forward_converged_fraction", "adjoint_converged_fraction",
                  "forward_iterations_mean", "forward_function_evals_mean",
                  "spectral_radius_final", "inference_function_evals_mean",
                  "inference_function_evals_per_sample",
                  "inference_ms_per_sample", "inference_converged_fraction", "set_options",
                  "forward_solver"}


def test_quick_demo_writes_a_summary_with_every_field(cache_dir, tmp_path):
    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "--out", out, "--cache-dir", cache_dir, "--no-progress",
                "--solvers", "picard,anderson", "--target-accuracy", "0.0",
                "-picard_adjoint_snes_max_it", "3", "-anderson_snes_anderson_m", "3")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"^picard\s+0\.\d+", r.stdout, re.M)
    assert re.search(r"^anderson\s+0\.\d+", r.stdout, re.M)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "polarity" and summary["target_accuracy"] == 0.0
    assert set(summary["solvers"]) == {"picard", "anderson"}
    for name, row in summary["solvers"].items():
        assert SUMMARY_FIELDS <= set(row), name
        assert row["seconds_to_target"] == pytest.approx(row["train_seconds"])  # epoch 1
        assert 0 < row["spectral_radius_final"] < 10 and row["inference_function_evals_mean"] > 0
    assert summary["solvers"]["picard"]["speedup_to_reference"] == pytest.approx(1.0)
    assert summary["reference"]["solver"] == "picard"
    # one epoch: Picard's final validation accuracy is its first, so no time ranks the sets
    assert summary["reference"]["resolved"] is False
    assert "not resolved: picard changed its validation accuracy by +0.000" in r.stdout
    # the user's -picard_adjoint_snes_max_it 3 beats the demo's default of 25: every
    # Picard adjoint stops at its cap, and the summary counts none as converged
    assert summary["solvers"]["picard"]["adjoint_converged_fraction"] == 0.0
    assert summary["solvers"]["anderson"]["adjoint_converged_fraction"] == 1.0
    assert "-snes_python_type deq_petsc.core.lean.Picard" in summary["solvers"]["picard"]["options"]
    # each set's options as applied (the user's over the set's), read back in training
    from deq_petsc.core.solver_sets import parse_options
    anderson = summary["solvers"]["anderson"]
    assert parse_options(anderson["options"])["snes_anderson_m"] == "3"
    assert parse_options(anderson["set_options"])["snes_anderson_m"] == "5"
    assert parse_options(summary["solvers"]["picard"]["options"])["adjoint_snes_max_it"] == "3"
    assert anderson["forward_solver"]["method"] == "lean-anderson"
    assert anderson["forward_solver"]["max_it"] == 25                  # the demo's cap
    assert summary["record"]["petsc_options"]["anderson_snes_anderson_m"] == "3"
    assert set(summary["inference_on_one_model"]["solves"]) == {
        "picard", "anderson", "petsc-picard", "petsc-anderson"}     # PETSc's own beside
    # the descriptor baseline on the same split, beside the DEQs
    assert 0.0 <= summary["baseline"]["test_accuracy"] <= 1.0
    assert summary["baseline"]["features"] == "descriptors"
    assert "reference on the same split: gradient boosting" in r.stdout
    for name in ("comparison.png", "residuals.png", "anderson/curves.png",
                 "picard/confusion.png", "anderson/checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    # a checkpoint trained under the prefix anderson_ answers to unprefixed options
    ev = run_cli("evaluate", "--checkpoint", out / "anderson" / "checkpoint.pt", "--cache-dir",
                 cache_dir, "-snes_type", "nrichardson", "-snes_linesearch_type", "basic")
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert "forward solver: nrichardson" in ev.stdout and "unused" not in ev.stdout + ev.stderr


def test_time_to_the_first_sets_final_accuracy():
    from deq_petsc.studies.demo import _time_to_reference
    hist = {"picard": [{"elapsed": 10, "val_acc": 0.55}, {"elapsed": 20, "val_acc": 0.62},
                       {"elapsed": 30, "val_acc": 0.60}],
            "anderson": [{"elapsed": 4, "val_acc": 0.61}, {"elapsed": 8, "val_acc": 0.66}],
            "slow": [{"elapsed": 50, "val_acc": 0.5}]}
    rows = {name: {} for name in hist}
    ref = _time_to_reference(rows, hist, 200)
    # Picard ended at 0.60 and first reached it at 20 s; Anderson at 4 s: 5x
    stderr = (0.6 * 0.4 / 200) ** 0.5                                    # 0.0346
    assert ref == {"solver": "picard", "val_accuracy": 0.60, "seconds": 20, "val_samples": 200,
                   "val_accuracy_stderr": pytest.approx(stderr),
                   "first_epoch_val_accuracy": 0.55, "resolved": True}   # +0.05 > 0.035
    assert rows["anderson"] == {"seconds_to_reference": 4, "speedup_to_reference": 5.0}
    assert rows["picard"]["speedup_to_reference"] == 1.0
    assert rows["slow"] == {"seconds_to_reference": None, "speedup_to_reference": None}
    # the same +0.05 on 100 validation samples is within one standard error (0.049)
    assert _time_to_reference(rows, hist, 100)["resolved"] is True
    assert _time_to_reference(rows, hist, 90)["resolved"] is False       # 0.052


def test_the_sets_are_compared_on_the_hardest_model_that_attracts():
    from deq_petsc.studies.demo import shared_model_name
    assert shared_model_name({"picard": 0.954, "anderson": 0.858, "gmres": 0.923}) == "picard"
    assert shared_model_name({"picard": 1.2, "anderson": 0.97, "gmres": 0.99}) == "gmres"
    assert shared_model_name({"picard": 1.2, "anderson": 1.05}) == "anderson"   # none attracts


def test_an_iteration_capped_inference_is_said_loudly(cache_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--task", "polarity", "--limit", "120", "--epochs", "1", "--width",
                "4", "--seed", "1", "--out", out, "--cache-dir", cache_dir, "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    ev = run_cli("evaluate", "--checkpoint", out / "checkpoint.pt", "--cache-dir", cache_dir,
                 "-snes_max_it", "1", "-deq_accept_max_it")
    assert ev.returncode == 0, ev.stdout + ev.stderr
    assert re.search(r"WARNING: 1 of 1 forward solves stopped at the iteration limit", ev.stdout)


def test_calibration_is_measured_against_hand_computed_bins():
    from deq_petsc.science.metrics import calibration
    # four samples, two classes: confidences 0.55, 0.65, 0.95, 0.95
    p = np.array([[0.55, 0.45], [0.35, 0.65], [0.95, 0.05], [0.05, 0.95]])
    y = np.array([1, 1, 0, 0])          # right: second and third; wrong: first and fourth
    c = calibration(p, y, bins=5)       # bins of width 0.1 from 0.5
    got = {(round(b["low"], 2), b["n"]): (b["accuracy"], round(b["confidence"], 4))
           for b in c["bins"]}
    assert got == {(0.5, 1): (0.0, 0.55), (0.6, 1): (1.0, 0.65), (0.9, 2): (0.5, 0.95)}
    assert c["ece"] == pytest.approx((0.55 + 0.35 + 2 * 0.45) / 4)
    perfect = calibration(np.eye(3)[[0, 1, 2]], np.array([0, 1, 2]))
    assert perfect["ece"] == 0.0 and perfect["mean_confidence"] == 1.0


def test_an_accuracy_comes_with_its_standard_error():
    from deq_petsc.science.metrics import classification_report
    cm = np.array([[70, 30], [40, 60]])             # 130 right of 200
    r = classification_report(cm, ["a", "b"])
    assert r["accuracy"] == 0.65
    assert r["accuracy_stderr"] == pytest.approx((0.65 * 0.35 / 200) ** 0.5)   # 0.0337


def test_the_demo_runs_the_same_protocol_on_crystals(cache_dir, tmp_path):
    from deq_petsc.science.data.tasks import default_crystals_csv
    if default_crystals_csv() is None:
        pytest.skip("shared/data/mp_crystals_bandgap.csv.gz not beside the project")
    out = tmp_path / "demo"
    r = run_cli("demo", "--quick", "--task", "crystals", "--out", out, "--cache-dir", cache_dir,
                "--no-progress", "--no-baseline", "--solvers", "anderson")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "training the crystals DEQ" in r.stdout and "test crystals through" in r.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["task"] == "crystals" and set(summary["solvers"]) == {"anderson"}
    assert 0 < summary["solvers"]["anderson"]["test_samples"] <= 10     # of 100 crystals


def test_the_demo_trains_each_task_for_its_own_default_epochs():
    from deq_petsc.studies.demo import DemoConfig, task_epochs
    assert DemoConfig().epochs == task_epochs("polarity") == 3
    assert DemoConfig(task="mof-pore").epochs == 12
    assert DemoConfig(task="crystals", epochs=2).epochs == 2        # the user's wins
