"""torch tensors <-> PETSc ``Vec``: shared memory where possible, one explicit copy otherwise.

A :class:`TensorLayout` remembers what the model works in (shape, dtype,
device) and what PETSc stores (``PETSc.ScalarType`` on the host). When the two
agree -- a contiguous CPU tensor of PETSc's scalar type -- ``Vec`` and tensor
share one buffer and nothing is copied. Otherwise each crossing is exactly one
``copy_`` (a cast, a device transfer, or both), never a silent reinterpretation.

Vectors that SNES or KSP create themselves (work vectors, duplicates) are read
and written through the same layout, via DLPack views of their local arrays:
callbacks must not assume they get the vectors we created.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from petsc4py import PETSc

from deq_petsc.process import blas_threads

blas_threads.limit()        # PETSc's BLAS single-threaded: torch keeps the cores for f

_NUMPY_TO_TORCH = {
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.complex128): torch.complex128,
    np.dtype(np.complex64): torch.complex64,
}


def petsc_torch_dtype() -> torch.dtype:
    """The torch dtype of this PETSc build's scalars (float64 unless configured otherwise)."""
    return _NUMPY_TO_TORCH[np.dtype(PETSc.ScalarType)]


def petsc_has_device_memory() -> bool:
    """Whether PETSc was built with a GPU backend (CUDA/HIP/Kokkos vectors)."""
    return any(PETSc.Sys.hasExternalPackage(p) for p in ("cuda", "hip", "kokkos"))


def vec_local_view(vec: PETSc.Vec, mode: str = "r") -> torch.Tensor:
    """A 1-D torch view of ``vec``'s local (host) array, with no copy.

    ``mode`` is PETSc's access mode: ``"r"`` keeps the vector's state (cached
    norms stay valid; the caller must not write), ``"w"``/``"rw"`` bump it.
    petsc4py restores the array at once; the view stays valid while ``vec``
    lives and is not re-allocated (``VecPlaceArray`` etc.).
    """
    view = torch.from_dlpack(vec.toDLPack(mode))
    if view.device.type != "cpu":  # pragma: no cover - needs a GPU PETSc
        raise NotImplementedError(
            "device-resident PETSc vectors are not supported by this path; use a CPU Vec")
    return view


@dataclass(frozen=True)
class TensorLayout:
    """What the model computes in vs. what PETSc stores, and how to cross between them.

    ``shape`` is the tensor's local shape on this rank (one rank: the whole
    batch); the Vec is its flattening, in C order.
    """

    shape: torch.Size
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def like(cls, tensor: torch.Tensor) -> "TensorLayout":
        return cls(torch.Size(tensor.shape), tensor.dtype, tensor.device)

    @property
    def numel(self) -> int:
        return int(torch.Size(self.shape).numel())

    @property
    def petsc_dtype(self) -> torch.dtype:
        return petsc_torch_dtype()

    @property
    def zero_copy(self) -> bool:
        """True when Vec and tensor can share one buffer (CPU, PETSc's dtype)."""
        return self.device.type == "cpu" and self.dtype == self.petsc_dtype

    def describe(self) -> str:
        how = "zero-copy" if self.zero_copy else (
            f"one copy per crossing ({self.dtype} on {self.device} <-> "
            f"{self.petsc_dtype} on cpu)")
        return f"{tuple(self.shape)} {self.dtype} on {self.device}: {how}"

    # -- Vec -> tensor ---------------------------------------------------------
    def read(self, vec: PETSc.Vec, out: torch.Tensor | None = None) -> torch.Tensor:
        """``vec`` as a model tensor: a view when zero-copy, else one cast/transfer.

        The view must be treated as read-only: it aliases PETSc's memory. When a
        cast is needed, ``out`` (a tensor of this layout, e.g. from
        :meth:`empty`) receives it, so a solver loop allocates nothing per call.
        """
        self._check_size(vec)
        flat = vec_local_view(vec, "r")
        if self.zero_copy:
            return flat.view(self.shape)
        if out is None:
            return flat.to(device=self.device, dtype=self.dtype).view(self.shape)
        out.view(-1).copy_(flat)
        return out

    def empty(self) -> torch.Tensor:
        """An uninitialised tensor of this layout (a reusable buffer for :meth:`read`)."""
        return torch.empty(self.shape, dtype=self.dtype, device=self.device)

    # -- tensor -> Vec ---------------------------------------------------------
    def write(self, tensor: torch.Tensor, vec: PETSc.Vec) -> None:
        """Store ``tensor`` into ``vec`` (a no-op if it already is ``vec``'s memory)."""
        self._check_size(vec)
        if tensor.shape != self.shape:
            raise ValueError(f"tensor of shape {tuple(tensor.shape)} does not match the "
                             f"layout {tuple(self.shape)}")
        target = vec_local_view(vec, "w")
        source = tensor.detach().reshape(-1)
        if source.device == target.device and source.data_ptr() == target.data_ptr():
            return
        target.copy_(source)

    def create_vec(self, tensor: torch.Tensor, comm=None) -> PETSc.Vec:
        """A ``Vec`` holding ``tensor``; it *is* the tensor's memory when zero-copy.

        Otherwise the Vec gets its own buffer and ``tensor`` is copied in once.
        With ``comm`` of several ranks, each rank's tensor is its local part.
        """
        comm = PETSc.COMM_SELF if comm is None else comm
        tensor = tensor.detach()
        if tuple(tensor.shape) != tuple(self.shape):
            raise ValueError(f"tensor of shape {tuple(tensor.shape)} does not match the "
                             f"layout {tuple(self.shape)}")
        if self.zero_copy and tensor.is_contiguous() and tensor.dtype == self.petsc_dtype \
                and tensor.device.type == "cpu":
            array = tensor.numpy().reshape(-1)
            vec = PETSc.Vec().createWithArray(array, size=(self.numel, PETSc.DECIDE),
                                              comm=comm)
            if vec_local_view(vec, "r").data_ptr() != tensor.data_ptr():  # pragma: no cover
                raise RuntimeError("petsc4py copied a buffer that should have been shared")
            return vec
        vec = PETSc.Vec().createMPI((self.numel, PETSc.DECIDE), comm=comm)
        self.write(tensor, vec)
        return vec

    def _check_size(self, vec: PETSc.Vec) -> None:
        if vec.getLocalSize() != self.numel:
            raise ValueError(f"Vec of local size {vec.getLocalSize()} does not match the "
                             f"layout {tuple(self.shape)} ({self.numel} entries)")


def layout_changed(comm, layout: TensorLayout, previous: TensorLayout | None) -> bool:
    """Whether a solver over ``comm`` must rebuild its vectors: decided by all ranks together.

    Each rank's local shape can change on its own (uneven shards: 21 samples on
    one rank, 20 on the other), but the rebuild is collective; a rank deciding
    alone would enter ``SNESReset`` while the other enters the solve, and both
    wait forever. One ``MPI_Allreduce`` (MAX) per solve, none on one rank.
    """
    changed = layout != previous
    if comm.getSize() == 1:
        return changed
    from mpi4py import MPI
    return bool(comm.tompi4py().allreduce(int(changed), op=MPI.MAX))


def shares_memory(tensor: torch.Tensor, vec: PETSc.Vec) -> bool:
    """Whether ``tensor`` and ``vec``'s local array are the same buffer."""
    view = vec_local_view(vec, "r")
    return tensor.device.type == "cpu" and tensor.data_ptr() == view.data_ptr()
