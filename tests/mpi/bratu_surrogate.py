"""Run under mpiexec -n 2: the Bratu task's draws solved on 2 ranks (each its share)
equal the draws solved on one, bitwise (every draw is one process's Newton solve); and
TAO training of its surrogates (the MLP with exact Hessians, the DEQ with Gauss-Newton
products, brgn's residuals) on 2 ranks, each holding half of the training split, gives
the parameters one process gets: objective, gradient and products are sums over ranks.

Each is held to what a serial run's own rounding moves: the serial run again with its
products summed over chunks of 5, 8 and 12 samples instead of all 24 (other summation
orders, as the ranks' sum is). bntr's parameters move by ~1e-15 under that change;
brgn's by ~1e-6 on this problem: its steps take up rounding along directions the
objective barely sees. The bound is 10x the largest such spread, and never below 1e-9.
"""

import sys
from pathlib import Path

import deq_petsc

deq_petsc.init([sys.argv[0]])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc.science.data.pde import BratuSettings, _build, load_field_task  # noqa: E402
from deq_petsc.science.train import TaoTrainer, TrainConfig  # noqa: E402
from helpers import TIGHT_ADJOINT, TIGHT_SOLVER, shared_tempdir  # noqa: E402

comm = PETSc.COMM_WORLD
mpi = comm.tompi4py()
rank, size = comm.getRank(), comm.getSize()
torch.set_num_threads(1)
opts = PETSc.Options()
opts.setValue("pde_grid", "9")
base = shared_tempdir(mpi)
failures = 0

data = load_field_task("bratu", limit=30, seed=7, cache_dir=base / "cache", progress=False)
serial, _ = _build(BratuSettings(grid=9), 30, 7, PETSc.COMM_SELF, False)
same = (np.array_equal(data.fields, serial["fields"]) and np.array_equal(data.qoi, serial["qoi"])
        and np.array_equal(data.images.numpy(), serial["inputs"]))
cached = load_field_task("bratu", limit=30, seed=7, cache_dir=base / "cache", progress=False)
ok = same and cached.from_cache and np.array_equal(cached.fields, data.fields)
failures += not ok
PETSc.Sys.Print(f"bratu data: ranks={size} solved on {size} ranks == serial: {same}, "
                f"cached: {cached.from_cache} {'OK' if ok else 'FAIL'}")

for kind, model, tao_type, hessian in (("mlp-exact", "explicit", "bntr", "exact"),
                                       ("deq-gn", "deq", "bntr", "gauss-newton"),
                                       ("mlp-brgn", "explicit", "brgn", "gauss-newton")):
    opts.setValue("tao_type", tao_type)
    opts.setValue("tao_max_it", "3")
    opts.setValue("train_hessian", hessian)
    cfg = TrainConfig(task="bratu", epochs=1, width=6, kind=model, depth=2, seed=5,
                      objective="field", dtype="float64")
    results = {}
    chunks = {"ranks": 256, "serial": 256, "chunks of 5": 5, "chunks of 8": 8,
              "chunks of 12": 12}
    for name, chunk in chunks.items():
        c = comm if name == "ranks" else PETSc.COMM_SELF
        out = base / f"{kind}-{name.replace(' ', '')}-{'all' if name == 'ranks' else rank}"
        cfg.eval_batch_size = chunk
        trainer = TaoTrainer(cfg, data, out, solver_options=TIGHT_SOLVER,
                             adjoint_options=TIGHT_ADJOINT, progress=False,
                             log=lambda *a: None, comm=c)
        history = trainer.fit()
        results[name] = (torch.cat([p.detach().ravel() for p in trainer.model.parameters()]),
                         history[-1])
        trainer.destroy()
    (p_dist, h_dist), (p_ser, h_ser) = results["ranks"], results["serial"]
    others = [results[name] for name in chunks if name.startswith("chunks")]
    err = float((p_dist - p_ser).norm() / p_ser.norm())
    spread = max(float((p - p_ser).norm() / p_ser.norm()) for p, _ in others)
    tol = max(10 * spread, 1e-9)
    loss_tol = max(10 * max(abs(h["train_loss"] - h_ser["train_loss"]) for _, h in others),
                   1e-9 * h_ser["train_loss"])
    replicas_equal = all(np.array_equal(p_dist.numpy(), other)
                         for other in mpi.allgather(p_dist.numpy()))
    ok = err < tol and replicas_equal and abs(h_dist["train_loss"] - h_ser["train_loss"]) \
        <= loss_tol and h_dist["tao_its"] == h_ser["tao_its"] == 3
    failures += not ok
    PETSc.Sys.Print(f"{kind}: ranks={size} parameters rel_err={err:.2e} (serial, other chunks: "
                    f"{spread:.2e}; bound {tol:.1e}) train "
                    f"loss {h_dist['train_loss']:.12e}/{h_ser['train_loss']:.12e} "
                    f"{'OK' if ok else 'FAIL'}")
sys.exit(1 if mpi.allreduce(failures) else 0)
