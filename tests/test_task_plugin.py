"""A task is a plug-in: one class implementing the Task protocol, in a package of its own
that declares it under the entry-point group ``deq_petsc.tasks``, and every command takes
it (data, train, evaluate, predict, baseline) with no file of deq_petsc touched.

The commands run in processes of their own, as a user runs them: RDKit's extended-Hueckel
library exports a function ``error`` that glibc's ``error(3)`` can shadow, and in a test
process that has run the command line in-process before, its bond perception of a QM9
molecule ended the process with a garbage exit status (seen, not yet understood)."""

import json
import os
from pathlib import Path

import pytest

from deq_petsc.science.data.tasks import TASKS, Record, Task
from helpers import final_line, run_cli

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


def _installed(tmp_path) -> dict:
    """The environment of a process in which a package ``ring_plugin`` is installed (on
    PYTHONPATH with its dist-info) that declares RingTask, and a broken entry, under
    ``[project.entry-points."deq_petsc.tasks"]``."""
    site = tmp_path / "site"
    (site / "ring_plugin-1.0.dist-info").mkdir(parents=True)
    (site / "ring_plugin-1.0.dist-info" / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: ring-plugin\nVersion: 1.0\n")
    (site / "ring_plugin-1.0.dist-info" / "entry_points.txt").write_text(
        "[deq_petsc.tasks]\nrings-test = ring_plugin:RingTask\nbroken = ring_plugin:Nothing\n")
    source = Path(__file__).read_text()
    (site / "ring_plugin.py").write_text(source[source.index("from deq_petsc.science.data"):
                                                source.index("def _installed")]
                                         .replace("from helpers import", "# "))
    return {"PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")])}


def test_an_installed_task_runs_through_every_command(tmp_path):
    """The command line, in processes of its own, takes the installed task: data, train,
    evaluate, predict and baseline, with no file of deq_petsc naming it."""
    env = _installed(tmp_path)
    cache, run = tmp_path / "cache", tmp_path / "run"
    common = ["--task", "rings-test", "--limit", "0", "--cache-dir", cache, "--jobs", "1"]

    def ok(*argv):
        r = run_cli(*argv, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout

    assert "task rings-test: 40 graph images" in ok("data", *common)
    ok("train", *common, "--epochs", "1", "--width", "4", "--batch-size", "8", "--out", run,
       "--no-progress")
    assert (run / "checkpoint.pt").exists() and (run / "report.json").exists()
    assert "accuracy" in ok("evaluate", "--checkpoint", run / "checkpoint.pt", "--cache-dir",
                            cache, "--split", "test")
    assert "cyclic" in ok("predict", "--checkpoint", run / "checkpoint.pt", "--smiles",
                          "c1ccccc1O")
    ok("baseline", *common, "--out", tmp_path / "gb", "--max-iter", "20", "--no-progress")
    report = json.loads((tmp_path / "gb" / "baseline.json").read_text())
    assert report["task"] == "rings-test" and report["n"] == 4 and 0 <= report["accuracy"] <= 1


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
    with pytest.raises(ValueError, match="registered as 'other-test': one name"):
        TASKS.register(RingTask, name="other-test")
    with pytest.raises(ValueError, match="kind must be one of"):
        TASKS.register(type("NoKind", (Task,), {"name": "nokind-test", "payload": "smiles",
                                               "classes": ("a", "b"), "target_name": "t"}))
    assert "broken-test" not in TASKS and "odd-test" not in TASKS


def test_an_installed_task_is_listed_unimported_and_a_broken_one_is_one_line(tmp_path):
    """The command line lists the installed tasks from their packages' metadata without
    importing them (nothing a plug-in imports runs before PETSc is set up), and names a
    broken one in one line when it is asked for."""
    env = _installed(tmp_path)
    listed = run_cli("data", "--help", env=env)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    assert "rings-test" in listed.stdout and "broken" in listed.stdout
    assert listed.stderr == ""
    broken = run_cli("data", "--task", "broken", "--cache-dir", tmp_path / "cache", env=env)
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert final_line(broken.stdout + broken.stderr) == (
        "deq-petsc data: error: the task 'broken' of ring_plugin:Nothing could not be "
        "loaded: AttributeError: module 'ring_plugin' has no attribute 'Nothing'")


def test_an_unknown_name_is_answered_with_the_known_ones():
    from deq_petsc.core import solver_sets
    from deq_petsc.core.errors import DEQInputError
    from deq_petsc.science.data.tasks import make_task
    with pytest.raises(KeyError, match="unknown solver set 'andersen'; known: picard, anderson"):
        solver_sets.get("andersen")
    with pytest.raises(DEQInputError, match="unknown task 'polarty'; known: polarity, gap"):
        make_task("polarty")
