"""Run under mpiexec -n 2 with an output folder: rank 1 fails inside a training step.

Epoch 1 trains and checkpoints; in epoch 2 the cell raises on rank 1 only, while
rank 0 waits inside the collective forward solve. The job must end (not hang),
naming rank 1, and leave epoch 1's checkpoint intact.
"""

import sys
from pathlib import Path

import deq_petsc

deq_petsc.init([sys.argv[0]])

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from petsc4py import PETSc  # noqa: E402

from deq_petsc.science.parallel import abort_on_error  # noqa: E402
from deq_petsc.science.train import TrainConfig, Trainer  # noqa: E402
from helpers import synthetic  # noqa: E402

out = Path(sys.argv[1])
comm = PETSc.COMM_WORLD
torch.set_num_threads(1)
data = synthetic(n=25, seed=4)
cfg = TrainConfig(task="polarity", epochs=1, batch_size=8, width=4, seed=5)
with abort_on_error(comm, "rank_failure.py"):
    first = Trainer(cfg, data, out, progress=False, log=lambda *a: None)
    first.fit()
    first.destroy()
    again = Trainer(TrainConfig(**{**cfg.__dict__, "epochs": 2}), data, out, progress=False,
                    log=lambda *a: None)
    again.resume()
    cell = again.model.equilibrium.cell
    calls = []

    def failing_forward(z, x, original=cell.forward):
        calls.append(1)
        if comm.getRank() == 1 and len(calls) > 3:
            raise RuntimeError("injected failure in the cell on rank 1")
        return original(z, x)

    cell.forward = failing_forward
    again.fit()
PETSc.Sys.Print("finished without the injected failure: FAIL")
sys.exit(3)
