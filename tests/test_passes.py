"""The pass counting of benchmarks/bench_passes.py, on the case derived by hand from PETSc's
source: Picard (nrichardson with the basic line search).

Per iteration (src/snes/impls/richardson/snesrichardson.c, src/snes/linesearch/impls/
basic/linesearchbasic.c): ``W = X - Y`` (VecWAXPY, 3 passes), ``||F||`` (VecNorm, 1),
``||Y||`` and ``||W||`` (split-phase norms, 2), ``X = W`` and ``Y = F`` (two VecCopy, 4),
but no ``Y = F`` after the last; before the loop ``||F0||`` and ``Y = F0`` (3): ``10 N + 1``
over ``N`` iterations. Our callback per f evaluation: ``F = X - f`` (3) and the NaN check's
sum (1), plus, for a float32 model on double PETSc, the cast of ``X`` (1 read, 1 write).
"""

import sys
from pathlib import Path

import pytest
import torch
from petsc4py import PETSc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_passes  # noqa: E402

from helpers import double_scalars  # noqa: E402

N = 12


def _picard(dtype):
    PETSc.Log.begin()
    x = torch.linspace(-1, 1, 200, dtype=dtype).reshape(4, 50)
    return bench_passes.count_forward("Picard", bench_passes.FORWARD["Picard"],
                                      lambda z, x: torch.tanh(0.5 * z + x), x, N,
                                      f"passes{str(dtype)[-2:]}_")


@double_scalars
def test_picard_petsc_passes_are_the_ones_derived_from_its_source():
    row = _picard(torch.float64)
    assert (row.iterations, row.f_evals) == (N, N + 1)
    assert row.petsc == {
        "VecNorm": {"calls": N + 1, "reads": N + 1, "writes": 0},
        "VecWAXPY": {"calls": N, "reads": 2 * N, "writes": N},
        "VecCopy": {"calls": 2 * N, "reads": 2 * N, "writes": 2 * N},
        "VecReduceArith": {"calls": 2 * N, "reads": 2 * N, "writes": 0},
    }
    assert row.petsc_per_it == pytest.approx(10 + 1 / N)
    assert row.unmodelled == []
    # per f evaluation: F = X - f (2 reads, 1 write), the NaN check's sum (1 read); once
    # per solve: z0 = zeros (1 write) and its clone (1 read, 1 write)
    assert row.torch_ops == {"sub": [2 * (N + 1), N + 1], "sum": [N + 1, 0],
                             "zeros_like": [0, 1], "clone": [1, 1]}
    assert row.crossing_per_it == 0
    assert row.needed == 3


@double_scalars
def test_a_float32_model_crosses_once_per_evaluation():
    """The cast of X into the model's dtype: one read and one write per f evaluation (and
    the state's way in and out of the solve, once each)."""
    row = _picard(torch.float32)
    assert row.petsc_per_it == pytest.approx(10 + 1 / N)
    casts = {k: v for k, v in row.torch_ops.items() if k.endswith("(cast)")}
    assert casts == {"copy_ (cast)": [N + 2, N + 2], "_to_copy (cast)": [1, 1]}
