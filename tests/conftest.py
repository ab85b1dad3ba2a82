"""Shared fixtures. PETSc is initialised without pytest's own argv."""

import os
import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import pytest  # noqa: E402
import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


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
