"""Solve a batch of DEQ fixed points z = tanh(W z + U x + b) with any PETSc SNES.

    python examples/solve_tanh_cell.py -snes_type anderson -snes_anderson_m 5 -snes_monitor
    python examples/solve_tanh_cell.py -snes_type newtonls -ksp_type gmres -ksp_monitor
    python examples/solve_tanh_cell.py -snes_type nrichardson -snes_linesearch_type basic \
        -snes_converged_reason -log_view

The solution is checked against SciPy's MINPACK root finder when SciPy is installed.
"""

import sys

import petsc4py

petsc4py.init(sys.argv)           # first, so the command line reaches PETSc

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.science.models import TanhCell  # noqa: E402

opts = PETSc.Options()
batch = opts.getInt("batch", 16)
n = opts.getInt("n", 64)
contraction = opts.getReal("contraction", 0.95)

cell = TanhCell(n, n, contraction=contraction, seed=0)
x = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
problem = FixedPointProblem(cell, x, z_shape=(batch, n))

with DEQSolver() as solver:
    z, stats = solver.solve(problem)
PETSc.Sys.Print(stats.summary())

try:
    import numpy as np
    from scipy.optimize import root
except ImportError:
    sys.exit(0)
with torch.no_grad():
    ref = root(lambda v: v - cell(torch.from_numpy(v).view(batch, n), x).reshape(-1).numpy(),
               np.zeros(batch * n), method="krylov", tol=1e-12)
err = np.linalg.norm(z.reshape(-1).numpy() - ref.x) / np.linalg.norm(ref.x)
PETSc.Sys.Print(f"relative difference from scipy.optimize.root: {err:.2e}")
