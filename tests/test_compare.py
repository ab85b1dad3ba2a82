"""Solver comparisons: option sets parsed, run side by side, written as table, CSV and plot."""

import csv

import pytest
import torch

from deq_petsc import FixedPointProblem
from deq_petsc.studies.compare import (OptionSet, compare_solves, markdown_table, read_option_sets,
                               default_option_sets)
from deq_petsc.science.models import TanhCell

from helpers import run_cli, double_scalars


def test_option_sets_parse_like_a_command_line():
    s = OptionSet.parse("anderson3: -snes_type anderson -snes_anderson_m 3 -snes_monitor "
                        "-snes_anderson_beta -0.5")
    assert s.name == "anderson3"
    assert s.options == {"snes_type": "anderson", "snes_anderson_m": "3", "snes_monitor": None,
                         "snes_anderson_beta": "-0.5"}
    sets = read_option_sets(["# a comment", "", "a: -snes_type ngmres", "b: -snes_type anderson"])
    assert [x.name for x in sets] == ["a", "b"]
    with pytest.raises(ValueError, match="distinct names"):
        read_option_sets(["a: -snes_type ngmres", "a: -snes_type anderson"])
    assert {s.name for s in default_option_sets()} >= {"picard", "anderson5", "jfnk"}


@double_scalars
def test_every_set_converges_to_the_tolerance_and_a_bad_one_is_its_own_row():
    cell = TanhCell(12, 3, contraction=0.9, seed=4)
    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    problem = FixedPointProblem(cell, x, z_shape=(5, 12))
    sets = read_option_sets(["picard: -snes_type nrichardson -snes_linesearch_type basic",
                             "bad: -snes_type nosuchsolver",
                             "anderson: -snes_type anderson -snes_anderson_m 3 -snes_typo 1",
                             "jfnk: -snes_type newtonls -ksp_type gmres"])
    runs = compare_solves(problem, sets, defaults={"snes_rtol": 1e-10, "snes_stol": 0,
                                                   "snes_max_it": 300},
                          repeat=2)
    by = {r.name: r for r in runs}
    assert [r.name for r in runs] == ["picard", "bad", "anderson", "jfnk"]
    assert by["bad"].reason == "ERROR"
    assert "Unable to find requested SNES type nosuchsolver" in by["bad"].error
    for name in ("picard", "anderson", "jfnk"):
        r = by[name]
        assert r.converged and r.relative_residual <= 1e-10, (name, r.reason)
        assert len(r.residuals) == r.iterations + 1 == len(r.times)
    assert by["jfnk"].iterations < by["anderson"].iterations < by["picard"].iterations
    assert by["jfnk"].jvps > 0
    assert by["anderson"].unused_options == ["-snes_typo"]
    table = markdown_table(runs)
    assert table.count("\n| ") == 4 and "`bad`: PETSc rejected the set" in table


def test_compare_command_writes_table_csv_and_plot(tmp_path):
    out = tmp_path / "cmp"
    r = run_cli("compare", "--batch", "4", "--channels", "4", "--size", "8", "--out", out,
                "--set", "picard: -snes_type nrichardson -snes_linesearch_type basic",
                "--set", "anderson5: -snes_type anderson -snes_anderson_m 5",
                "--set", "broken: -snes_type nosuchsolver")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "| picard | CONVERGED_FNORM_RELATIVE |" in r.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [row["name"] for row in rows] == ["picard", "anderson5", "broken"]
    assert rows[2]["reason"] == "ERROR" and rows[0]["converged"] == "True"
    assert (out / "residuals.png").stat().st_size > 0
    assert "| anderson5 |" in (out / "table.md").read_text()


def test_compare_training_runs_each_set_and_plots_against_time(tmp_path):
    pytest.importorskip("rdkit")
    out = tmp_path / "cmp"
    r = run_cli("compare", "--train", "--task", "polarity", "--limit", "80", "--epochs", "1",
                "--width", "4", "--no-progress", "--cache-dir", tmp_path / "cache", "--out", out,
                "--set", "picard: -snes_type nrichardson -snes_linesearch_type basic",
                "--set", "anderson: -snes_type anderson -snes_anderson_m 3",
                "--set", "broken: -snes_type nosuchsolver")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[picard] epoch   1:" in r.stdout and "[anderson] epoch   1:" in r.stdout
    assert "`broken`: PETSc rejected the set: Unable to find requested SNES type" in r.stdout
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert [row["name"] for row in rows] == ["picard", "anderson", "broken"]
    assert 0 <= float(rows[0]["test accuracy"]) <= 1 and float(rows[1]["train s"]) > 0
    assert (out / "training.png").stat().st_size > 0
    assert (out / "picard" / "checkpoint.pt").exists()


def test_demo_seeds_aggregates_every_number_with_its_spread():
    """Two seeds' summaries -> mean, sample sd, range per set and metric; one-model ratios
    only where both solves converged; the table shows mean ± sd."""
    from deq_petsc.studies.demo_seeds import METRICS, aggregate, format_seeds, parse_seeds

    def summary(acc, secs, picard_evals, anderson_converged=True):
        row = {m: 0.5 for m in METRICS}
        rows = {"picard": {**row, "test_accuracy": acc}, "anderson": {**row, "test_accuracy":
                                                                      acc + 0.02}}
        return {"task": "polarity", "solvers": rows, "baseline": {"test_accuracy": 0.79},
                "inference_on_one_model": {"solves": {
                    "picard": {"converged": True, "function_evals": picard_evals,
                               "seconds": secs},
                    "anderson": {"converged": anderson_converged, "function_evals": 40,
                                 "seconds": 1.0}}}}

    agg = aggregate({0: summary(0.88, 0.8, 80), 1: summary(0.90, 1.2, 120, False)})
    acc = agg["sets"]["picard"]["test_accuracy"]
    assert acc["mean"] == pytest.approx(0.89) and acc["sd"] == pytest.approx(0.02 ** 0.5 / 10 * 1)
    assert (acc["min"], acc["max"], acc["values"]) == (0.88, 0.90, [0.88, 0.90])
    ratio = agg["sets"]["anderson"]["one_model_f_evals_ratio"]
    assert ratio["values"] == [2.0, None] and ratio["missing"] == 1 and ratio["mean"] == 2.0
    assert agg["sets"]["anderson"]["one_model_time_ratio"]["values"] == [0.8, None]
    assert agg["baseline_test_accuracy"]["mean"] == pytest.approx(0.79)
    table = format_seeds(agg)
    assert "| picard | 0.890 ± 0.014 |" in table and "2.00 (1 n/a)" in table
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0", "0,0", "a,b", "-1,2"):
        with pytest.raises(ValueError, match="--seeds"):
            parse_seeds(bad)
