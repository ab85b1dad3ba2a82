"""Every run a record: the options in force, the code, the machine and the settings, kept
where the run's results are, and a resume that restores the run's solvers."""

import json
import os
import subprocess
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from petsc4py import PETSc

import deq_petsc
from deq_petsc.core.petsc_options import inserted_defaults
from deq_petsc.science.run_record import options_text, run_record, solver_options
from deq_petsc.science.train import Trainer, TrainConfig
from deq_petsc.science.train.run_folder import resumed_solver_options

from helpers import synthetic

ROOT = Path(deq_petsc.__file__).resolve().parents[1]


def test_a_run_record_holds_the_options_code_machine_and_settings(petsc_options, monkeypatch):
    petsc_options({"snes_type": "anderson", "anderson_snes_anderson_m": 3, "snes_monitor": True})
    monkeypatch.setenv("OPENBLAS_CORETYPE", "Haswell")
    record = run_record(settings={"seed": 3}, prefix="anderson_")
    assert json.loads(json.dumps(record)) == record                # plain data
    options = record["petsc_options"]
    assert options["snes_type"] == "anderson" and options["anderson_snes_anderson_m"] == "3"
    assert options["snes_monitor"] is None                         # a flag
    assert record["settings"] == {"seed": 3} and record["prefix"] == "anderson_"
    assert record["code"]["version"] == deq_petsc.__version__
    if (ROOT / ".git").exists():
        head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"],
                              capture_output=True, text=True).stdout.strip()
        assert record["code"]["commit"] == head and isinstance(record["code"]["modified"], bool)
    software = record["software"]
    assert software["petsc"] == ".".join(map(str, PETSc.Sys.getVersion()))
    assert software["torch"] == torch.__version__ and software["mpi4py"]
    assert software["petsc_scalar"] == np.dtype(PETSc.ScalarType).name
    machine = record["machine"]
    assert machine["cpu"] and machine["cores"] == os.cpu_count() and machine["mpi_size"] == 1
    assert machine["environment"]["OPENBLAS_CORETYPE"] == "Haswell"
    # the solver options of the run under its prefix: not monitors, not another prefix's
    assert solver_options(options, "anderson_") == {"snes_anderson_m": "3"}
    assert options_text({"snes_type": "ngmres", "snes_monitor": None}, "a_") == \
        "-a_snes_type ngmres -a_snes_monitor"


def test_a_training_run_keeps_its_record_in_checkpoint_report_and_run_json(tmp_path,
                                                                         petsc_options):
    petsc_options({"snes_type": "anderson", "snes_anderson_m": 2})
    cfg = TrainConfig(task="polarity", epochs=1, batch_size=16, width=4, seed=1)
    trainer = Trainer(cfg, synthetic(), tmp_path, progress=False, log=lambda *a: None)
    try:
        trainer.fit()
        trainer.finish()
        assert trainer.model.equilibrium.solver.snes.getType() == "anderson"
    finally:
        trainer.destroy()
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["record"]
    run = json.loads((tmp_path / "run.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())["record"]
    for record in (saved, run, report):
        assert record["petsc_options"]["snes_type"] == "anderson"
        assert record["petsc_options"]["snes_anderson_m"] == "2"
        assert record["settings"] == json.loads(json.dumps(asdict(cfg)))
        assert record["code"]["version"] == deq_petsc.__version__
        assert record["machine"]["cores"] == os.cpu_count()


#: a checkpoint's record (its options sorted, as run_record writes them)
RUN = {"record": {"prefix": "anderson_", "petsc_options": {
    "anderson_adjoint_ksp_type": "bcgs", "anderson_infer_snes_rtol": "1e-4",
    "anderson_snes_anderson_m": "3", "anderson_snes_monitor": None,
    "anderson_snes_type": "anderson", "log_view": None}}}


def test_resume_restores_the_runs_solver_options_under_the_command_line(petsc_options):
    # nothing typed: the run's solvers come back (under the resume's prefix), not its
    # monitors, its inference options or options of no prefix of its own
    restored, line = resumed_solver_options(RUN, {})
    assert restored == {"adjoint_ksp_type": "bcgs", "snes_anderson_m": "3",
                        "snes_type": "anderson"}
    assert line == ("restored the run's solver options: -adjoint_ksp_type bcgs "
                    "-snes_anderson_m 3 -snes_type anderson")
    # a typed option wins, and the line says what the run had
    petsc_options({"snes_type": "ngmres", "snes_rtol": "1e-3"})
    restored, line = resumed_solver_options(RUN, PETSc.Options().getAll())
    assert line == ("new solver options: -snes_rtol 1e-3 -snes_type ngmres (the run had "
                    "-snes_type anderson); restored the run's solver options: "
                    "-adjoint_ksp_type bcgs -snes_anderson_m 3")
    with inserted_defaults("", {**restored, "snes_type": "anderson"}):
        opts = PETSc.Options()
        assert opts.getString("snes_type") == "ngmres"             # the command line's
        assert opts.getString("snes_anderson_m") == "3"            # the run's
    assert not PETSc.Options().hasName("snes_anderson_m")          # only for the run
    # a checkpoint from before runs kept records
    assert resumed_solver_options({}, {}) == (
        {}, "the checkpoint records no solver options (written before runs kept them): "
            "this command line's are used")


def test_evaluate_out_is_a_file_checked_before_any_work(tmp_path, capsys):
    from deq_petsc.cli.main import build_parser, invalid_argument, split_petsc_args
    with pytest.raises(SystemExit):
        split_petsc_args(build_parser(), ["evaluate", "--checkpoint", "c", "--out",
                                          str(tmp_path)])
    assert f"argument --out: {tmp_path} is a folder, not a file" in capsys.readouterr().err
    report = tmp_path / "evaluation.json"
    report.write_text("{}")                 # an earlier report is replaced, not refused
    args, _ = split_petsc_args(build_parser(), ["evaluate", "--checkpoint", "c", "--out",
                                                str(report)])
    assert args.out_file == str(report) and invalid_argument(args) is None
