"""The studies' kept results (docs/results) redraw the tables and plots the docs show."""

import subprocess
import sys

import pytest

from helpers import ROOT

RESULTS = ROOT / "docs" / "results"


@pytest.mark.parametrize("task, line", [
    ("polarity", "the equilibrium's gain over one iteration: -0.0100; the best twin (depth 8)"),
    ("crystals", "the equilibrium's gain over one iteration: +0.0000; the best twin (depth 32)")])
def test_the_equilibrium_study_redraws_from_its_results(tmp_path, task, line):
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "bench_equilibrium.py",
                        "--from-json", RESULTS / f"2026-12-03-equilibrium-{task}.json",
                        "--plot", tmp_path / "eq.png"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert line in r.stdout and (tmp_path / "eq.png").stat().st_size > 10_000


def test_the_memory_study_redraws_from_its_results(tmp_path):
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "bench_memory.py", "--from-json",
                        RESULTS / "2026-12-03-memory.json", RESULTS / "2026-12-03-memory-cap.json",
                        "--plot", tmp_path / "memory.png"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stderr
    assert "polarity  explicit x400: out of memory under the 20 GiB cap" in r.stdout
    assert "at depth 366 it would need all 23.5 GiB" in r.stdout
