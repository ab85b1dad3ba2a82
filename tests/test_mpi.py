"""MPI: distributed solves equal serial ones (launched with mpiexec -n 2)."""

import pytest

from helpers import mpiexec


@pytest.mark.mpi
def test_distributed_state_matches_serial_on_two_ranks():
    r = mpiexec(2, "tests/mpi/distributed_solve.py")
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("picard", "anderson", "newtonls"):
        assert f"{name}: ranks=2" in r.stdout and "FAIL" not in r.stdout, r.stdout
