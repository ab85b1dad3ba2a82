"""QM9 property regression: the HOMO-LUMO gap task, gradient boosting's regression on the
same split, the gap through train/evaluate/predict, and the trainer study's QM9 mode."""

import json
import re
import subprocess
import sys

import pytest

pytest.importorskip("rdkit")
pytest.importorskip("sklearn")

from deq_petsc.science.data.descriptors import names  # noqa: E402
from deq_petsc.science.data.tasks import EV_PER_HARTREE, make_task  # noqa: E402
from helpers import ROOT, run_cli  # noqa: E402


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("deq_cache")


def test_gap_targets_hand_checked():
    """QM9's gaps in Hartree (methane 0.5048, water 0.3615, HCN 0.3796, methanol 0.3437),
    in eV; the classes split at QM9's median gap (0.2502 Ha)."""
    task = make_task("gap")
    assert task.params()["threshold_ev"] == pytest.approx(0.2502 * EV_PER_HARTREE, abs=0.01)
    by_id = {r.id: r for r in task.records(None)}
    for qm9_index, smiles, gap_hartree in [(1, "C", 0.5048), (3, "O", 0.3615),
                                          (5, "C#N", 0.3796), (8, "CO", 0.3437)]:
        r = by_id[f"qm9-{qm9_index}"]
        assert r.payload == smiles
        assert r.target == pytest.approx(gap_hartree * 27.2114, rel=1e-5)
        assert task.label(r.target) == 1
    assert task.label(5.0) == 0 and task.classes == ("small gap", "large gap")
    # the same molecules at the same DFT positions as polarity's
    assert by_id["qm9-5"].geometry == {r.id: r for r in
                                       make_task("polarity").records(None)}["qm9-5"].geometry


def test_baseline_regresses_the_dft_number_on_the_deqs_split(cache_dir, tmp_path):
    r = run_cli("baseline", "--task", "gap", "--limit", "400", "--objective", "regress",
                "--out", tmp_path, "--cache-dir", cache_dir, "--no-progress",
                "--max-iter", "80")
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"HOMO-LUMO gap \(eV\): MAE [0-9.]+ \(standard error [0-9.]+\), RMSE",
                     r.stdout), r.stdout
    report = json.loads((tmp_path / "baseline.json").read_text())
    assert report["model"] == "HistGradientBoostingRegressor"
    assert report["n_features"] == len(names("molecule")) and 1 <= report["rounds"] <= 80
    sizes = report["split_sizes"]
    assert 390 <= sum(sizes.values()) <= 400 and sizes["train"] >= 7 * sizes["test"]
    # descriptors carry the gap: far below predicting the training mean, and R^2 high
    assert report["mae"] < 0.6 * report["baseline_mae"] and report["r2"] > 0.6
    assert report["train_mae"] < report["mae"] and 0 < report["mae_stderr"] < report["mae"]


def test_the_gap_trains_evaluates_and_predicts_through_the_cli(cache_dir, tmp_path):
    out = tmp_path / "run"
    r = run_cli("train", "--task", "gap", "--objective", "regress", "--limit", "80",
                "--epochs", "1", "--width", "4", "--out", out, "--cache-dir", cache_dir,
                "--no-progress")
    assert r.returncode == 0, r.stdout + r.stderr
    line = r"HOMO-LUMO gap \(eV\): MAE [0-9.]+, RMSE [0-9.]+, R\^2 -?[0-9.]+ on \d+ samples"
    assert re.search(line, r.stdout), r.stdout
    ev = run_cli("evaluate", "--checkpoint", out / "checkpoint.pt", "--limit", "80",
                 "--cache-dir", cache_dir)
    assert ev.returncode == 0 and re.search(line, ev.stdout), ev.stdout + ev.stderr
    pred = run_cli("predict", "--checkpoint", out / "checkpoint.pt", "--smiles", "c1ccccc1")
    assert pred.returncode == 0, pred.stdout + pred.stderr
    assert re.search(r"HOMO-LUMO gap \(eV\) = -?\d+\.\d{4}", pred.stdout), pred.stdout
    crystal = run_cli("predict", "--checkpoint", out / "checkpoint.pt", "--cif", "x.cif")
    assert crystal.returncode != 0 and "give --smiles, not --cif" in crystal.stdout + \
        crystal.stderr


def test_the_trainer_study_on_qm9_runs_end_to_end(cache_dir, tmp_path):
    """benchmarks/bench_surrogate.py --task gap at a tiny size: MAE keys, gradient
    boosting's reference beside the methods, the table and the plot."""
    out = tmp_path / "study.json"
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_surrogate.py"),
                        "--task", "gap", "--limit", "100", "--budget", "0.5", "--seeds", "0",
                        "--lrs", "1e-2", "--methods", "lmvm", "--models", "explicit",
                        "--width", "4", "--depth", "2", "--snapshots", "3", "--threads", "1",
                        "--cache-dir", cache_dir, "--json", out, "--plot",
                        tmp_path / "study.png"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert re.search(r"lmvm +\d\.\d{3}e[-+]\d\d \[.*\] +\d+\.\d\dx .* CONVERGED_USER",
                     r.stdout), r.stdout
    assert "gradient boosting on descriptors, same split: test MAE" in r.stdout
    result = json.loads(out.read_text())["results"][0]
    assert result["metric"] == "mae" and result["baseline"]["mae"] > 0
    for run in result["runs"]:
        assert all("test_mae" in point for point in run["curve"])
    assert (tmp_path / "study.png").stat().st_size > 0
