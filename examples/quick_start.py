"""The README's library quick start: a PETSc SNES solve of a DEQ cell, then its implicit
gradient by a PETSc KSP. Options on the command line choose both solvers:

    python examples/quick_start.py -snes_type nrichardson -snes_linesearch_type basic \\
        -adjoint_ksp_type bcgs
"""

import sys, petsc4py
petsc4py.init(sys.argv)                 # first, so the command line reaches PETSc

import torch
from deq_petsc import DEQ, DEQSolver, FixedPointProblem
from deq_petsc.science.models import TanhCell

cell = TanhCell(64, contraction=0.95)                     # f(z, x) = tanh(W z + U x + b)
x = torch.randn(16, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
with DEQSolver(options={"snes_rtol": 1e-10}) as solver:   # -snes_type ... applies here
    z_star, stats = solver.solve(FixedPointProblem(cell, x))
print(stats.summary())

layer = DEQ(cell)                                          # nn.Module, implicit gradient
layer(x).square().mean().backward()                        # adjoint solve by a PETSc KSP
print(layer.last_stats.backward.summary())
