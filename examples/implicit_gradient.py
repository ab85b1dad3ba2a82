"""One training step of a DEQ layer: forward by PETSc SNES, backward by a PETSc KSP.

    python examples/implicit_gradient.py -snes_converged_reason \
        -adjoint_ksp_monitor -adjoint_ksp_converged_reason
    python examples/implicit_gradient.py -adjoint_snes_type anderson -adjoint_snes_monitor
    python examples/implicit_gradient.py -adjoint_deq_method phantom -adjoint_deq_phantom_steps 5

Prints the statistics of both solves and checks the gradient against autograd
through 200 unrolled fixed-point iterations.
"""

import sys

import petsc4py

petsc4py.init(sys.argv)

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc import DEQ  # noqa: E402
from deq_petsc.science.models import TanhCell  # noqa: E402

torch.manual_seed(0)
cell = TanhCell(32, 8, contraction=0.9, seed=0)
x = torch.randn(16, 8, dtype=torch.float64)
y = torch.randn(16, 32, dtype=torch.float64)

layer = DEQ(cell, options={"snes_rtol": 1e-10}, z_shape=lambda x: (x.shape[0], 32))
loss = ((layer(x) - y) ** 2).mean()
loss.backward()
PETSc.Sys.Print(layer.last_stats.summary())
PETSc.Sys.Print(f"spectral radius of J_f at z*: {layer.spectral_radius():.3f}")

implicit = cell.W.grad.clone()
cell.zero_grad()
z = torch.zeros(16, 32, dtype=torch.float64)
for _ in range(200):
    z = cell(z, x)
((z - y) ** 2).mean().backward()
err = ((implicit - cell.W.grad).norm() / cell.W.grad.norm()).item()
PETSc.Sys.Print(f"dL/dW: relative difference from 200 unrolled iterations {err:.2e}")
layer.destroy()
