"""Run under mpiexec -n 2: batches that do not split evenly over the ranks.

20 training samples in batches of 9: shards of 5/4, 5/4 and a last batch of 2
(1/1); with batches of 19, a last batch of one sample leaves rank 1's shard
empty. Rank 0's local shape changes while rank 1's does not, and the other way
round: the rebuild of the solver's vectors is collective, so a rank deciding
alone deadlocks (the caller runs this under a timeout). Adam on 2 ranks must
equal Adam on one process, with no NaN from the empty shard; predict() with
uneven batches must give the serial outputs. Also reports, per rank, whether
the tuned allocator is in effect (large blocks not mmapped).
"""

import sys
from pathlib import Path

import deq_petsc

deq_petsc.init([sys.argv[0]])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc.process.allocator import large_blocks_are_mapped  # noqa: E402
from deq_petsc.science.parallel import DataParallel  # noqa: E402
from deq_petsc.science.train import TrainConfig, Trainer, predict  # noqa: E402
from helpers import TIGHT_ADJOINT, TIGHT_SOLVER, shared_tempdir, synthetic  # noqa: E402

comm = PETSc.COMM_WORLD
mpi = comm.tompi4py()
rank, size = comm.getRank(), comm.getSize()
torch.set_num_threads(1)
data = synthetic(n=25, seed=4)
tight, tight_adjoint = TIGHT_SOLVER, TIGHT_ADJOINT
base = shared_tempdir(mpi)

mapped = mpi.allgather(large_blocks_are_mapped())
PETSc.Sys.Print(f"allocator: ranks={size} large blocks mmapped per rank {mapped} "
                f"{'OK' if mapped == [False] * size else 'FAIL'}")
failures = int(mapped != [False] * size)

for batch in (9, 19):
    cfg = TrainConfig(task="polarity", epochs=2, batch_size=batch, width=4, seed=5,
                      dtype="float64")
    results = {}
    for name, c in (("ranks", comm), ("serial", PETSc.COMM_SELF)):
        out = base / f"b{batch}-{name}-{rank if name == 'serial' else 'all'}"
        trainer = Trainer(cfg, data, out, solver_options=tight, adjoint_options=tight_adjoint,
                          progress=False, log=lambda *a: None, comm=c)
        history = trainer.fit()
        images = data.images[data.indices("train")].double()
        logits, _ = predict(trainer.model, images, batch_size=7, dp=DataParallel(c))
        results[name] = ([p.detach().clone() for p in trainer.model.parameters()], history[-1],
                         logits)
        trainer.destroy()
    (p_dist, h_dist, o_dist), (p_ser, h_ser, o_ser) = results["ranks"], results["serial"]
    err = max(((a - b).norm() / b.norm()).item() for a, b in zip(p_dist, p_ser))
    out_err = ((o_dist - o_ser).norm() / o_ser.norm()).item()
    finite = all(torch.isfinite(torch.tensor(h_dist[k])) for k in ("train_loss", "val_loss"))
    ok = err < 1e-9 and out_err < 1e-9 and finite and len(o_dist) == 20
    failures += not ok
    PETSc.Sys.Print(f"batch {batch}: ranks={size} parameters rel_err={err:.2e} outputs "
                    f"rel_err={out_err:.2e} train_loss {h_dist['train_loss']:.10f}/"
                    f"{h_ser['train_loss']:.10f} {'OK' if ok else 'FAIL'}")
sys.exit(1 if mpi.allreduce(failures) else 0)
