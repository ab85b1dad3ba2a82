"""Where the model runs and where PETSc keeps its vectors, and what crossing between them costs.

Two questions decide the path a state takes at every function evaluation:

* does torch have the requested device (``torch.cuda.is_available()``)?
* was PETSc built with device memory (``--with-cuda``, HIP, Kokkos)?

With a CPU-only PETSc (the default install) a CUDA model's state crosses to
the host and back once per evaluation (:class:`~deq_petsc.core.interop.TensorLayout`
does exactly one ``copy_`` each way); a float32 model with float64 PETSc is one
cast each way. Zero-copy needs the tensor where PETSc's vectors live, in
PETSc's scalar type.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from .errors import DEQInputError

if TYPE_CHECKING:
    import torch


def resolve_device(name: str | None) -> torch.device:
    """``torch.device(name)``, or a clear error when that device is not there."""
    import torch        # here, as below: the CLI checks sizes with this module, torch-free

    try:
        device = torch.device(name or "cpu")
    except RuntimeError:               # torch's "Expected one of cpu, cuda, ... : foo"
        raise DEQInputError(f"--device {name}: not a device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DEQInputError(f"--device {name}: torch sees no CUDA device on this machine "
                            f"(torch {torch.__version__}, built "
                            f"{'with' if torch.version.cuda else 'without'} CUDA); use --device cpu")
    if device.type == "cuda" and device.index is not None \
            and device.index >= torch.cuda.device_count():
        raise DEQInputError(f"--device {name}: only {torch.cuda.device_count()} CUDA device(s)")
    if device.type not in ("cpu", "cuda"):
        raise DEQInputError(f"--device {name}: only cpu and cuda devices are supported")
    return device


def available_memory() -> tuple[int, str]:
    """Bytes this process may use and where the bound comes from: the machine's physical
    memory, or the address-space limit (``ulimit -v``) when that is lower."""
    import resource

    total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    limit, _ = resource.getrlimit(resource.RLIMIT_AS)
    if limit != resource.RLIM_INFINITY and limit < total:
        return limit, "the address-space limit (ulimit -v)"
    return total, "this machine's memory"


def memory_problem(needed: int, what: str) -> str | None:
    """Why ``needed`` bytes (a lower bound of what ``what`` takes) cannot fit, as one line;
    None when they can. Checked before the work, so an impossible size is refused up
    front rather than failing in torch's allocator with a traceback, or swapping."""
    available, bound = available_memory()
    if needed <= available:
        return None
    gib = 2.0 ** 30
    return (f"{what} needs at least {min(needed, 1e300) / gib:.3g} GiB; {bound} is "
            f"{available / gib:.3g} GiB")


def crossing(dtype: torch.dtype, device: torch.device) -> str:
    """How a state of this dtype on this device meets PETSc's vectors."""
    from .interop import petsc_torch_dtype

    petsc = petsc_torch_dtype()
    if device.type == "cpu" and dtype == petsc:
        return "zero-copy (the Vec is the tensor's memory)"
    parts = []
    if device.type != "cpu":
        parts.append(f"{device} <-> host")
    if dtype != petsc:
        parts.append(f"{dtype} <-> {petsc}")
    return "one copy each way per evaluation (" + ", ".join(parts) + ")"


def describe() -> dict:
    """Torch's devices and PETSc's build, for ``deq-petsc --version`` and bug reports."""
    import torch

    from .interop import petsc_has_device_memory, petsc_torch_dtype

    return {"torch_cuda": torch.cuda.is_available(),
            "cuda_devices": [torch.cuda.get_device_name(i)
                             for i in range(torch.cuda.device_count())],
            "petsc_device_memory": petsc_has_device_memory(),
            "petsc_scalar": str(petsc_torch_dtype()).replace("torch.", "")}
