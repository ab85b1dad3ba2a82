"""MPI: distributed solves equal serial ones (launched with mpiexec -n 2)."""

import re

import pytest

from helpers import cli_path, mpiexec, run_cli, double_scalars


def _assert_all_ok(script, names, *args, timeout=300):
    """Run an MPI check script on 2 ranks; each name must report ranks=2 and nothing FAIL."""
    r = mpiexec(2, script, *args, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    for name in names:
        assert f"{name}: ranks=2" in r.stdout and "FAIL" not in r.stdout, r.stdout


@pytest.mark.mpi
@double_scalars
def test_distributed_state_matches_serial_on_two_ranks():
    _assert_all_ok("tests/mpi/distributed_solve.py",
                   ("picard", "anderson", "newtonls", "lean-picard-batch", "lean-anderson-batch",
                    "lean-anderson-worst", "lean-anderson-each",
                    "lean-anderson-batch with an empty rank",
                    "lean-anderson-each with an empty rank"))


def _norms(text):
    return [float(v) for v in re.findall(r"SNES Function norm ([0-9.eE+-]+)", text)]


@pytest.mark.mpi
@double_scalars
def test_demo_under_mpiexec_reproduces_the_serial_history():
    args = ["solve", "--batch", "4", "--channels", "4", "--size", "8"]
    par = mpiexec(2, cli_path(), *args, python=False)
    ser = run_cli(*args)
    assert par.returncode == 0 and ser.returncode == 0, par.stderr + ser.stderr
    assert "on 2 rank(s)" in par.stdout
    p, s = _norms(par.stdout), _norms(ser.stdout)
    assert len(p) == len(s) >= 5          # printed once (rank 0), same iteration count
    assert max(abs(a - b) for a, b in zip(p, s)) <= 1e-10 * s[0]


@pytest.mark.mpi
@double_scalars
def test_distributed_implicit_gradient_matches_serial_on_two_ranks():
    _assert_all_ok("tests/mpi/distributed_gradient.py", ("picard", "anderson", "newtonls"))


@pytest.mark.mpi
@pytest.mark.parametrize("tao_type", ["bntr", "brgn"])
@double_scalars
def test_training_steps_on_two_ranks_equal_one_rank(tao_type):
    """Adam steps and TAO iterations (Gauss-Newton trust region / brgn) on 2 ranks."""
    _assert_all_ok("tests/mpi/distributed_training.py", ("adam", "tao-gn"), tao_type)


@pytest.mark.mpi
@double_scalars
def test_uneven_and_empty_shards_train_and_predict_like_one_process():
    """A batch of 9 on 2 ranks (5/4), a last batch of 1 (rank 1 empty): no deadlock, no NaN."""
    # a deadlock (a rank rebuilding its vectors alone) fails by the timeout instead of hanging
    _assert_all_ok("tests/mpi/uneven_shards.py", ("allocator", "batch 9", "batch 19"),
                   timeout=120)


@pytest.mark.mpi
def test_a_failure_on_one_rank_ends_the_job_and_keeps_the_checkpoint(tmp_path):
    out = tmp_path / "run"
    r = mpiexec(2, "tests/mpi/rank_failure.py", out, timeout=120)
    assert r.returncode != 0 and "FAIL" not in r.stdout
    assert "error on rank 1 of 2: RuntimeError: injected failure in the cell on rank 1" in r.stderr
    assert "aborting all ranks" in r.stderr
    from deq_petsc.science.train import load_checkpoint
    assert load_checkpoint(out / "checkpoint.pt")["epoch"] == 1     # epoch 2 never landed


@pytest.mark.mpi
def test_train_command_under_mpiexec(tmp_path):
    pytest.importorskip("rdkit")
    cache, out = tmp_path / "cache", tmp_path / "run"
    args = ["train", "--task", "polarity", "--limit", "60", "--epochs", "2", "--width", "4",
            "--cache-dir", cache, "--no-progress"]
    par = mpiexec(2, cli_path(), *args, "--out", out, python=False)
    assert par.returncode == 0, par.stdout + par.stderr
    assert "data-parallel on 2 MPI ranks" in par.stdout
    assert len(re.findall(r"^epoch   2:", par.stdout, re.M)) == 1      # rank 0 alone prints
    ser = run_cli(*args, "--out", tmp_path / "serial")
    assert ser.returncode == 0, ser.stdout + ser.stderr
    # the same run: printed losses and accuracies agree (float32; summation order differs)
    line = r"^epoch   2: loss ([0-9.]+) acc ([0-9.]+) \| val loss ([0-9.]+)"
    p = [float(v) for v in re.search(line, par.stdout, re.M).groups()]
    s = [float(v) for v in re.search(line, ser.stdout, re.M).groups()]
    assert p == pytest.approx(s, abs=2e-4)
    # resume on 2 ranks from the checkpoint rank 0 wrote
    again = mpiexec(2, cli_path(), *args[:6], "3", *args[7:], "--out", out, "--resume",
                    python=False)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "resuming" in again.stdout and re.search(r"^epoch   3:", again.stdout, re.M)


@pytest.mark.mpi
@double_scalars
def test_compare_under_mpiexec_matches_serial(tmp_path):
    args = ["compare", "--batch", "4", "--channels", "4", "--size", "8",
            "--set", "picard: -snes_type nrichardson -snes_linesearch_type basic",
            "--set", "jfnk: -snes_type newtonls -ksp_type gmres"]
    par = mpiexec(2, cli_path(), *args, "--out", tmp_path / "par", python=False)
    ser = run_cli(*args, "--out", tmp_path / "ser")
    assert par.returncode == 0 and ser.returncode == 0, par.stderr + ser.stderr
    rows = [re.findall(r"^\| (picard|jfnk) \| (\w+) \| (\d+) \| (\d+) \| (\d+) \|.*\| ([0-9.e+-]+) \|$",
                       out.stdout, re.M) for out in (par, ser)]
    assert len(rows[0]) == 2 and rows[0] == rows[1]       # same its, evals, relative residual


@pytest.mark.mpi
def test_commands_with_uneven_and_empty_shards_under_mpiexec(tmp_path):
    """train, evaluate, predict and compare on 2 ranks with batches that do not split
    evenly (and a last training batch of one sample: rank 1 empty), each under a timeout
    so that a deadlock fails the test."""
    pytest.importorskip("rdkit")
    cache, out = tmp_path / "cache", tmp_path / "run"
    data = ["--task", "polarity", "--limit", "101", "--cache-dir", cache]
    # 81 training molecules in batches of 8: ten of 8 (4/4), then one of 1 (1/0)
    train = mpiexec(2, cli_path(), "train", *data, "--epochs", "1", "--width", "4",
                    "--batch-size", "8", "--no-progress", "--out", out, python=False,
                    timeout=120)
    assert train.returncode == 0, train.stdout + train.stderr
    assert "nan" not in train.stdout.lower()
    checkpoint = out / "checkpoint.pt"
    # 10 test molecules in batches of 7 (4/3) and 3 (2/1): the numbers of one process
    evaluate = ["evaluate", "--checkpoint", checkpoint, "--cache-dir", cache,
                "--batch-size", "7", "-snes_rtol", "1e-10", "-snes_max_it", "300"]
    par = mpiexec(2, cli_path(), *evaluate, python=False, timeout=120)
    ser = run_cli(*evaluate)
    assert par.returncode == 0 and ser.returncode == 0, par.stdout + par.stderr + ser.stderr
    accuracy = r"accuracy ([0-9.]+) on 10 samples"
    assert re.search(accuracy, par.stdout).group(1) == re.search(accuracy, ser.stdout).group(1)
    # three inputs, one unreadable: every rank predicts, rank 0 writes the CSV
    inputs = tmp_path / "in.smi"
    inputs.write_text("CCO\nC1CC\nc1ccccc1O\n")
    pred = mpiexec(2, cli_path(), "predict", "--checkpoint", checkpoint, "--input", inputs,
                   "--output", tmp_path / "p.csv", "--no-progress", python=False, timeout=120)
    assert pred.returncode == 0, pred.stdout + pred.stderr
    assert "3 inputs: 2 predicted, 1 could not be read" in pred.stdout
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 4
    # a batch of 3 over 2 ranks (2/1)
    compare = mpiexec(2, cli_path(), "compare", "--batch", "3", "--channels", "4", "--size",
                      "8", "--out", tmp_path / "cmp", python=False, timeout=120)
    assert compare.returncode == 0, compare.stdout + compare.stderr
    assert "CONVERGED" in compare.stdout


@pytest.mark.mpi
@double_scalars
def test_bratu_data_and_tao_training_on_two_ranks_equal_one_rank():
    """The PDE task's draws solved by 2 ranks, and TAO (exact Hessian, Gauss-Newton
    through the DEQ, brgn) on its surrogates with the training split over 2 ranks."""
    _assert_all_ok("tests/mpi/bratu_surrogate.py", ("bratu data", "mlp-exact", "deq-gn",
                                                     "mlp-brgn"))
