"""Run under mpiexec -n 2: one state Vec over COMM_WORLD (each rank owns part of
the batch) must give the serial answer for Picard, Anderson and Newton-Krylov, and
for the lean types under each stopping rule (deq_petsc.core.lean)."""

import sys

import deq_petsc

deq_petsc.init([sys.argv[0]])

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc import DEQSolver, FixedPointProblem  # noqa: E402
from deq_petsc.core.lean import options as lean  # noqa: E402
from deq_petsc.science.models import TanhCell  # noqa: E402

CONFIGS = {
    "picard": {"snes_type": "nrichardson", "snes_linesearch_type": "basic"},
    "anderson": {"snes_type": "anderson", "snes_anderson_m": 5},
    "newtonls": {"snes_type": "newtonls", "ksp_type": "gmres", "ksp_rtol": 1e-12},
    "lean-picard-batch": {**lean("picard"), "deq_sample_stop": "batch"},
    "lean-anderson-batch": {**lean("anderson"), "snes_anderson_m": 5,
                            "deq_sample_stop": "batch"},
    "lean-anderson-worst": {**lean("anderson"), "snes_anderson_m": 5,
                            "deq_sample_stop": "worst"},
    "lean-anderson-each": {**lean("anderson"), "snes_anderson_m": 5,
                           "deq_sample_stop": "each"},
}

comm = PETSc.COMM_WORLD
rank, size = comm.getRank(), comm.getSize()
torch.set_num_threads(1)
batch, n = 6, 10
cell = TanhCell(n, 4, contraction=0.9, seed=11)
x = torch.randn(batch, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(12))
mine = torch.tensor_split(torch.arange(batch), size)[rank]

failures = 0
for name, opts in CONFIGS.items():
    opts = {**opts, "snes_rtol": 1e-12, "snes_atol": 1e-13, "snes_max_it": 1000}
    with DEQSolver(comm=comm, options=opts) as dist:
        z_local, s_dist = dist.solve(FixedPointProblem(cell, x[mine], z_shape=(len(mine), n),
                                                       independent_samples=True))
    gathered = comm.tompi4py().allgather(z_local)
    z_dist = torch.cat(gathered)
    with DEQSolver(options=opts) as serial:
        z_ser, s_ser = serial.solve(FixedPointProblem(cell, x, z_shape=(batch, n),
                                                      independent_samples=True))
    err = ((z_dist - z_ser).norm() / z_ser.norm()).item()
    # Norms agree to rounding relative to the initial norm (a per-entry relative
    # test would fail on ~1e-13 norms, where rounding is all that is left).
    r0 = s_ser.residual_norms[0]
    hist = max(abs(a - b) / r0 for a, b in zip(s_dist.residual_norms, s_ser.residual_norms))
    ok = err < 1e-10 and s_dist.iterations == s_ser.iterations and hist < 1e-12
    failures += not ok
    PETSc.Sys.Print(f"{name}: ranks={size} rel_err={err:.2e} its={s_dist.iterations}/"
                    f"{s_ser.iterations} history_diff={hist:.1e} {'OK' if ok else 'FAIL'}")
# a rank whose share of the batch is empty (a last batch smaller than the ranks): it
# takes part in every reduction, with zero-size tensors, and the answer is the serial one
everything = torch.arange(batch) if rank == 0 else torch.arange(0)
for name in ("lean-picard-batch", "lean-anderson-batch", "lean-anderson-each"):
    opts = {**CONFIGS[name], "snes_rtol": 1e-12, "snes_atol": 1e-13, "snes_max_it": 1000}
    with DEQSolver(comm=comm, options=opts) as dist:
        z_local, s_dist = dist.solve(FixedPointProblem(cell, x[everything],
                                                       z_shape=(len(everything), n),
                                                       independent_samples=True))
    z_dist = torch.cat(comm.tompi4py().allgather(z_local))
    with DEQSolver(options=opts) as serial:
        z_ser, s_ser = serial.solve(FixedPointProblem(cell, x, z_shape=(batch, n),
                                                      independent_samples=True))
    err = ((z_dist - z_ser).norm() / z_ser.norm()).item()
    ok = err < 1e-10 and s_dist.iterations == s_ser.iterations and s_dist.converged
    failures += not ok
    PETSc.Sys.Print(f"{name} with an empty rank: ranks={size} rel_err={err:.2e} its="
                    f"{s_dist.iterations}/{s_ser.iterations} {'OK' if ok else 'FAIL'}")
sys.exit(1 if comm.tompi4py().allreduce(failures) else 0)
