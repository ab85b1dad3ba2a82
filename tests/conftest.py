"""Shared fixtures. PETSc is initialised without pytest's own argv."""

import os
import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import pytest  # noqa: E402
import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

# one intra-op thread per pytest-xdist worker (the workers are the parallelism), else two;
# the command lines the tests start inherit the same count, or each would start a thread
# per core beside the other workers' and the cores would be oversubscribed
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
_THREADS = max(1, min(2, (os.cpu_count() or 1) // _WORKERS))
torch.set_num_threads(_THREADS)
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(_THREADS))


@pytest.fixture
def petsc_options():
    """Set PETSc options for one test; the database is restored afterwards."""
    opts = PETSc.Options()
    before = dict(opts.getAll())
    set_names = []

    def setter(mapping=None, **kwargs):
        for key, value in {**(mapping or {}), **kwargs}.items():
            opts.setValue(key, None if value is True else str(value))
            set_names.append(key)

    yield setter
    for key in set_names:
        if key in before:
            opts.setValue(key, before[key])
        else:
            opts.delValue(key)


def assert_close(actual, expected, rtol, what="value"):
    """Relative 2-norm error check with a readable message."""
    actual = torch.as_tensor(actual, dtype=torch.float64)
    expected = torch.as_tensor(expected, dtype=torch.float64)
    err = (actual - expected).norm() / expected.norm()
    assert err <= rtol, f"{what}: relative error {err:.3e} > {rtol:.1e}"


# The longest modules first (pytest's slowest-tests list at the end of a run names
# them): `make test` runs the suite on pytest-xdist workers a module at a time
# (--dist loadfile), and a long module started last would leave one core idle.
LONGEST_FIRST = ("test_mpi.py", "test_train.py", "test_run_folder.py", "test_baseline.py",
                 "test_predict.py", "test_tao.py", "test_cli.py", "test_data.py",
                 "test_compare.py", "test_options_spec.py")


def pytest_collection_modifyitems(config, items):
    rank = {name: k for k, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))     # stable
