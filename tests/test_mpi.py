"""MPI: distributed solves equal serial ones (launched with mpiexec -n 2)."""

import re

import pytest

from helpers import cli_path, mpiexec, run_cli


@pytest.mark.mpi
def test_distributed_state_matches_serial_on_two_ranks():
    r = mpiexec(2, "tests/mpi/distributed_solve.py")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("picard", "anderson", "newtonls"):
        assert f"{name}: ranks=2" in r.stdout and "FAIL" not in r.stdout, r.stdout



def _norms(text):
    return [float(v) for v in re.findall(r"SNES Function norm ([0-9.eE+-]+)", text)]


@pytest.mark.mpi
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
def test_distributed_implicit_gradient_matches_serial_on_two_ranks():
    r = mpiexec(2, "tests/mpi/distributed_gradient.py")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("anderson", "newtonls"):
        assert f"{name}: ranks=2" in r.stdout and "FAIL" not in r.stdout, r.stdout
