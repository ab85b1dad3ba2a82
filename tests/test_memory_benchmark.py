"""The memory benchmark's small case (benchmarks/bench_memory.py): one training step of the
DEQ against its explicit twin, each in a process of its own."""

import json
import subprocess
import sys

from helpers import ROOT


def test_the_explicit_twin_saves_a_layer_per_layer_and_the_deq_one_cell(tmp_path):
    out = tmp_path / "memory.json"
    r = subprocess.run([sys.executable, ROOT / "benchmarks" / "bench_memory.py", "--tasks",
                        "polarity", "--depths", "2,4", "--limit", "60", "--batch", "8",
                        "--repeat", "1", "--json", out, "--plot", tmp_path / "memory.png"],
                       capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    result = json.loads(out.read_text())
    saved = {(row["kind"], row["depth"]): row["saved_mb"] for row in result["rows"]}
    # autograd keeps every layer of the twin: twice the layers, twice the saved bytes
    assert 1.8 < saved["explicit", 4] / saved["explicit", 2] < 2.2
    assert saved["deq", 8] < saved["explicit", 4]          # the DEQ keeps one application
    # at this size the peak RSS is noise (a few MB either way); the saved bytes are exact
    assert 0.9 * saved["explicit", 2] / 2 < result["fits"]["polarity"]["saved_mb_per_layer"]
    assert (tmp_path / "memory.png").stat().st_size > 10_000
