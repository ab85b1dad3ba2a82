"""A task is a plug-in: one class implementing the Task protocol, registered, and every
command takes it (data, train, evaluate, predict, baseline) with no other file touched."""

import json
import os
from pathlib import Path

import pytest

from deq_petsc.science.data.tasks import TASKS, Record, Task
from helpers import cli_in_process, final_line, run_cli

#: small molecules with and without rings (the task's source; drawn from SMILES with
#: ETKDG + MMFF94, as predict draws a new molecule)
SMILES = ["CCO", "CCC", "CCCC", "CC(C)C", "CCN", "CCCl", "CC=O", "CC(=O)O", "CCOC", "CCCO",
          "NCCO", "CC#N", "C=CC", "CCS", "CC(N)C", "OCCO", "CCCN", "CC(C)O", "CNC", "COC",
          "c1ccccc1", "C1CCCCC1", "c1ccncc1", "C1CCOC1", "c1ccoc1", "C1CCNC1", "c1cc[nH]c1",
          "C1CC1", "C1CCC1", "Cc1ccccc1", "Oc1ccccc1", "Nc1ccccc1", "C1CCCC1", "c1ccsc1",
          "OC1CCCCC1", "CC1CCCCC1", "c1cnccn1", "C1COCCO1", "c1ccc2ccccc2c1", "O=C1CCCC1"]


class RingTask(Task):
    """Does a molecule have a ring? Its target: the number of rings."""
    name, kind, payload, target_name = "rings-test", "molecule", "smiles", "rings"
    classes = ("acyclic", "cyclic")

    def params(self):
        return {"source": "test_task_plugin", "version": 1}

    def records(self, cache_root):
        from rdkit import Chem
        from rdkit.Chem import rdMolDescriptors
        return [Record(f"m{k}", s, float(rdMolDescriptors.CalcNumRings(Chem.MolFromSmiles(s))))
                for k, s in enumerate(SMILES)]

    def label(self, target):
        return int(target > 0)


@pytest.fixture
def ring_task():
    TASKS.register(RingTask)
    yield RingTask.name
    TASKS.unregister(RingTask.name)


def test_a_registered_task_runs_through_every_command(ring_task, capfd, tmp_path):
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = ["--task", ring_task, "--limit", "0", "--cache-dir", cache, "--jobs", "1"]
    code, out = cli_in_process(capfd, "data", *common)
    assert code == 0, out
    assert f"task {ring_task}: 40 graph images" in out and "acyclic" in out

    code, out = cli_in_process(capfd, "train", *common, "--epochs", "1", "--width", "4",
                               "--batch-size", "8", "--out", run, "--no-progress")
    assert code == 0, out
    assert (run / "checkpoint.pt").exists() and (run / "report.json").exists()

    code, out = cli_in_process(capfd, "evaluate", "--checkpoint", run / "checkpoint.pt",
                               "--cache-dir", cache, "--split", "test")
    assert code == 0, out
    assert "accuracy" in out

    code, out = cli_in_process(capfd, "predict", "--checkpoint", run / "checkpoint.pt",
                               "--smiles", "c1ccccc1O")
    assert code == 0, out
    assert "acyclic" in out or "cyclic" in out

    code, out = cli_in_process(capfd, "baseline", *common, "--out", tmp_path / "gb",
                               "--max-iter", "20", "--no-progress")
    assert code == 0, out
    report = json.loads((tmp_path / "gb" / "baseline.json").read_text())
    assert report["task"] == ring_task and report["n"] == 4 and 0 <= report["accuracy"] <= 1


def test_a_task_that_does_not_keep_the_protocol_is_refused_at_registration():
    class NoSource(Task):
        name, kind, payload, target_name = "broken-test", "molecule", "smiles", "x"
        classes = ("a", "b")

        def label(self, target):
            return 0

    with pytest.raises(TypeError, match="implement params, records"):
        TASKS.register(NoSource)
    with pytest.raises(ValueError, match="kind must be one of"):
        TASKS.register(type("Odd", (RingTask,), {"name": "odd-test", "kind": "protein"}))
    with pytest.raises(ValueError, match="already registered"):
        TASKS.register(type("Again", (RingTask,), {"name": "polarity"}))
    assert "broken-test" not in TASKS and "odd-test" not in TASKS


def test_an_installed_package_adds_its_task_through_an_entry_point(tmp_path):
    """A user's own package, installed (here: on PYTHONPATH with its dist-info), declares
    ``[project.entry-points."deq_petsc.tasks"]``; the command line lists and builds it, and
    a broken plug-in is one line on stderr that leaves every other task working."""
    site = tmp_path / "site"
    (site / "ring_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "ring_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ring-plugin\nVersion: 1.0\n")
    (site / "ring_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[deq_petsc.tasks]\nrings-test = ring_plugin:RingTask\nbroken = ring_plugin:Nothing\n")
    source = Path(__file__).read_text()
    (site / "ring_plugin.py").write_text(source[source.index("from deq_petsc.science.data"):
                                                source.index("@pytest.fixture")]
                                         .replace("from helpers import", "# "))
    env = {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}
    listed = run_cli("data", "--help", env=env)
    assert listed.returncode == 0 and "rings-test" in listed.stdout, listed.stdout + listed.stderr
    assert "the task 'broken' of ring_plugin:Nothing is left out: AttributeError" in \
        listed.stderr
    built = run_cli("data", "--task", "rings-test", "--limit", "12", "--jobs", "1", "--cache-dir",
                    tmp_path / "cache", env=env)
    assert built.returncode == 0, built.stdout + built.stderr
    assert "task rings-test: 12 graph images" in built.stdout, final_line(built.stdout)


def test_an_unknown_name_is_answered_with_the_known_ones():
    from deq_petsc.core import solver_sets
    from deq_petsc.science.data.tasks import make_task
    with pytest.raises(KeyError, match="unknown solver set 'andersen'; known: picard, anderson"):
        solver_sets.get("andersen")
    with pytest.raises(ValueError, match="unknown task 'polarty'; known: polarity, gap"):
        make_task("polarty")
