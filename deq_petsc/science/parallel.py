"""Data parallelism over the PETSc communicator: shards, sums, and who writes files.

Under ``mpiexec -n N`` every rank holds the same model (same seed) and the same
data set; each global batch is split into N contiguous shards, rank ``r``
computing on shard ``r``. The DEQ state is one PETSc ``Vec`` over the
communicator (each rank owns its samples), so the SNES norms, Anderson's
mixing and the adjoint Krylov solve are global: the solves are those of the
whole batch on one process. Losses are scaled by the global batch size, so the
sum of the ranks' gradients (one ``Allreduce``) is the gradient of the global
batch's loss, and every rank's optimiser takes the identical step. Rank 0
alone prints and writes files.
"""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

import numpy as np
import torch
from petsc4py import PETSc


def threads_per_rank(comm=None) -> int:
    """Cores per rank, so N ranks on one machine do not oversubscribe it."""
    size = (PETSc.COMM_WORLD if comm is None else comm).getSize()
    return max(1, usable_cores() // size)


def usable_cores() -> int:
    """The cores this process may run on (its affinity mask on Linux, else all)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                     # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def abort_on_error(comm=None, what: str = "deq-petsc"):
    """On several ranks, turn an exception on any one of them into the end of the job.

    The other ranks are likely waiting in a collective operation (a solve, an
    allreduce) that the failed rank will never join; only ``MPI_Abort`` ends
    that. The message names the rank; files written atomically (checkpoints)
    keep their last good version. On one rank the exception propagates as usual.
    """
    comm = PETSc.COMM_WORLD if comm is None else comm
    try:
        yield
    except BaseException as err:
        if comm.getSize() == 1 or isinstance(err, SystemExit) and not err.code:
            raise
        rank = comm.getRank()
        message = (f"{what}: error on rank {rank} of {comm.getSize()}: "
                   f"{type(err).__name__}: {err}\n{what}: aborting all ranks "
                   f"(MPI_Abort); the last checkpoint written is intact\n")
        sys.stderr.flush()
        os.write(2, message.encode())     # unbuffered, then give mpiexec's I/O forwarding a
        time.sleep(0.5)                   # moment: MPI_Abort kills the job, output in flight too
        comm.tompi4py().Abort(1)


class DataParallel:
    def __init__(self, comm=None):
        self.comm = PETSc.COMM_WORLD if comm is None else comm
        self.mpi = self.comm.tompi4py()
        self.rank, self.size = self.comm.getRank(), self.comm.getSize()

    @property
    def is_root(self) -> bool:
        return self.rank == 0

    def shard(self, items):
        """This rank's contiguous share of ``items`` (a tensor or index array)."""
        if self.size == 1:
            return items
        return torch.tensor_split(items, self.size)[self.rank]

    def sum(self, value):
        """Sum of a number (or a numpy array) over the ranks, bitwise the same on every rank.

        Rank 0's result is broadcast: MPI does not promise identical reductions on all
        ranks, and an objective value differing in its last bit between ranks sends
        their (replicated) line searches and optimisers down different paths.
        """
        if self.size == 1:
            return value
        from mpi4py import MPI
        return self.mpi.bcast(self.mpi.allreduce(value, op=MPI.SUM), root=0)

    def sum_gradients(self, params) -> None:
        """Replace each parameter's ``.grad`` by its sum over the ranks (one ``Allreduce``)."""
        if self.size == 1:
            return
        from mpi4py import MPI
        params = [p for p in params if p.requires_grad]
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1)
                          for p in params]).contiguous()
        self.mpi.Allreduce(MPI.IN_PLACE, flat.numpy(), op=MPI.SUM)
        self.mpi.Bcast(flat.numpy(), root=0)      # bitwise-equal steps on every rank
        offset = 0
        for p in params:
            k = p.numel()
            p.grad = flat[offset:offset + k].view_as(p).clone()
            offset += k

    def from_root(self, array: np.ndarray) -> np.ndarray:
        """Rank 0's values of a replicated ``array`` (a copy, the same on every rank).

        Replicas of one computation do not stay bitwise equal by themselves: OpenBLAS's
        reductions round differently with the address alignment of their arrays, so
        TAO replicas fed identical callback values still part in the last bit.
        """
        if self.size == 1:
            return array
        agreed = np.ascontiguousarray(array).copy()
        self.mpi.Bcast(agreed, root=0)
        return agreed

    def gather(self, local: torch.Tensor) -> torch.Tensor:
        """The ranks' shards of one batch, concatenated in rank order (on every rank)."""
        if self.size == 1:
            return local
        parts = self.mpi.allgather(local.detach().cpu().numpy())
        return torch.from_numpy(np.concatenate(parts))

    def barrier(self) -> None:
        if self.size > 1:
            self.mpi.Barrier()


def load_task_collectively(name: str, comm=None, **options):
    """``deq_petsc.science.data.load_task`` on every rank: rank 0 builds (or checks) the cache
    first, so the ranks do not all build the same images at once; then the others read it."""
    from .data import load_task
    from .data.pde import FIELD_TASKS

    if name in FIELD_TASKS:          # solved by every rank, each its share of the draws
        return FIELD_TASKS[name](name, comm=comm, **options)
    dp = DataParallel(comm)
    options["progress"] = options.get("progress", True) and dp.is_root
    data = load_task(name, **options) if dp.is_root else None
    dp.barrier()
    # the others read what rank 0 built (a --rebuild is rank 0's alone)
    return data if data is not None else load_task(name, **{**options, "rebuild": False})
