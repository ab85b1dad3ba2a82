"""Run under mpiexec -n 2: the implicit gradient with a distributed state (each rank
owns part of the batch; the adjoint GMRES is global) equals the serial gradient."""

import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc import DEQ  # noqa: E402
from deq_petsc.science.models import TanhCell  # noqa: E402

comm = PETSc.COMM_WORLD
mpi = comm.tompi4py()
rank, size = comm.getRank(), comm.getSize()
torch.set_num_threads(1)
batch, n = 6, 10
tight = {"snes_rtol": 1e-13, "snes_atol": 1e-14, "snes_stol": 0.0, "snes_max_it": 500}
adjoint = {"ksp_rtol": 1e-13, "ksp_atol": 1e-16}
x = torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(21))
target = torch.randn(batch, n, dtype=torch.float64, generator=torch.Generator().manual_seed(22))
mine = torch.tensor_split(torch.arange(batch), size)[rank]

failures = 0
METHODS = {"picard": {"snes_type": "nrichardson", "snes_linesearch_type": "basic"},
           "anderson": {"snes_type": "anderson"}, "newtonls": {"snes_type": "newtonls"}}
for snes_type, method in METHODS.items():
    cell = TanhCell(n, 4, contraction=0.9, seed=23)
    opts = {**tight, **method}
    dist = DEQ(cell, comm=comm, options=opts, adjoint_options=adjoint, z_shape=(len(mine), n))
    loss = ((dist(x[mine]) - target[mine]) ** 2).sum()
    local = torch.autograd.grad(loss, list(cell.parameters()))
    g_dist = [torch.from_numpy(mpi.allreduce(g.numpy())) for g in local]   # sum over ranks
    bstats = dist.last_stats.backward
    dist.destroy()

    serial = DEQ(cell, options=opts, adjoint_options=adjoint, z_shape=(batch, n))
    g_ser = torch.autograd.grad(((serial(x) - target) ** 2).sum(), list(cell.parameters()))
    sstats = serial.last_stats.backward
    serial.destroy()
    err = max(((a - b).norm() / b.norm()).item() for a, b in zip(g_dist, g_ser))
    ok = err < 1e-10 and bstats.converged and bstats.iterations == sstats.iterations
    failures += not ok
    PETSc.Sys.Print(f"{snes_type}: ranks={size} gradient rel_err={err:.2e} adjoint its="
                    f"{bstats.iterations}/{sstats.iterations} {'OK' if ok else 'FAIL'}")
sys.exit(1 if mpi.allreduce(failures) else 0)
