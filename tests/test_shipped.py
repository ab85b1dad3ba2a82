"""The models that ship in the package (deq_petsc/science/shipped, made by make models):
each loads as any checkpoint, draws the images this version draws, keeps its run record and
test report beside it, and answers predict --task without a training run."""

import json

import pytest

from deq_petsc.science.checkpoint import MODEL_KEYS, load_checkpoint
from deq_petsc.science.inference import require_current_images
from deq_petsc.science.shipped import HERE, shipped_checkpoint, shipped_tasks
from helpers import NACL_CIF, final_line, run_cli

SHIPPED = ("polarity", "gap", "crystals", "mof-pore")


def test_a_model_ships_for_every_science_task():
    assert set(shipped_tasks()) == set(SHIPPED)


@pytest.mark.parametrize("task", SHIPPED)
def test_a_shipped_model_is_current_and_keeps_its_record(task):
    path = shipped_checkpoint(task)
    state = load_checkpoint(path, MODEL_KEYS)
    assert state["task"]["name"] == task
    require_current_images(state, path)        # images drawn as this version draws them
    assert path.stat().st_size < 2_000_000     # small enough for the wheel
    record = json.loads((HERE / f"{task}.run.json").read_text())
    report = json.loads((HERE / f"{task}.report.json").read_text())
    assert record["settings"]["task"] == task and record["petsc_options"] is not None
    assert report["n"] >= 100
    if "accuracy" in report:                   # better than the majority class, clearly
        assert report["accuracy"] > report["majority_baseline"] + 0.1


def test_predict_answers_with_the_shipped_model():
    r = run_cli("predict", "--task", "polarity", "--smiles", "CC(=O)O")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "the polarity model that ships with deq_petsc (test accuracy" in r.stdout
    assert "polar" in final_line(r.stdout) or "polar" in r.stdout


def test_predict_answers_about_a_crystal_and_a_gap(tmp_path):
    cif = tmp_path / "nacl.cif"
    cif.write_text(NACL_CIF)
    r = run_cli("predict", "--task", "crystals", "--cif", cif)
    assert r.returncode == 0, r.stdout + r.stderr
    assert any(c in r.stdout for c in ("metal", "semiconductor", "insulator"))
    r = run_cli("predict", "--task", "gap", "--smiles", "c1ccccc1")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "eV" in r.stdout


def test_predict_without_a_model_is_one_line():
    r = run_cli("predict", "--smiles", "CCO")
    assert r.returncode == 2
    assert "one of the arguments --checkpoint --task is required" in r.stderr


def test_a_reader_that_closes_the_pipe_ends_predict_quietly():
    """``deq-petsc predict ... | head -1``: the Unix end (SIGPIPE), not PETSc's crash banner."""
    import subprocess

    from helpers import cli_path
    proc = subprocess.Popen([cli_path(), "predict", "--task", "polarity", "--smiles", "CCO"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.readline()
    proc.stdout.close()                        # head -1 has what it wanted
    err = proc.stderr.read()
    assert proc.wait(timeout=60) in (0, -13)   # done before, or ended by SIGPIPE
    assert "PETSC ERROR" not in err and "Traceback" not in err, err
