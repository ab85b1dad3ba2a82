"""Checkpoints written atomically (temporary file + rename) and read with clear errors.

A run killed while saving leaves the previous checkpoint intact: the new one
is complete on disk (flushed and fsync'd) before it replaces the old name.

A checkpoint holds tensors and plain data only (dicts, lists, strings,
numbers), and is read with ``torch.load(weights_only=True)``: a pickle is a
program, and a checkpoint from someone else must not be able to run one on
``predict``, ``evaluate`` or ``--resume``. Anything else in the file is
refused with :class:`DEQCheckpointError`.
"""

from __future__ import annotations

import io
import pickle
import re
from pathlib import Path

import numpy as np
import torch

from deq_petsc.process.atomic import atomic_write
from deq_petsc.core.errors import DEQError

FORMAT = "deq_petsc-checkpoint-1"

#: what a checkpoint needs for its model to be rebuilt (``load_model``, ``--resume``)
MODEL_KEYS = ("model", "model_config", "train_config", "task")


class DEQCheckpointError(DEQError):
    """A checkpoint that is missing, truncated, corrupt or from something else."""


def plain(value, where: str = "state"):
    """``value`` with numpy scalars and arrays, tuples and paths turned into plain data.

    What ``weights_only`` loading accepts; anything else is a programming error
    here, named with where it sits, rather than a checkpoint that cannot be read.
    """
    if isinstance(value, dict):
        return {str(k) if not isinstance(k, (int, str)) else k: plain(v, f"{where}[{k!r}]")
                for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{where}: a {type(value).__name__} cannot go into a checkpoint (tensors "
                    f"and plain data only, so that loading one runs no code)")


def save_checkpoint(state: dict, path) -> Path:
    path = Path(path)
    state = plain({"format": FORMAT, **state})
    # serialised in memory first: torch's writer turns the file's OSError (a full disk)
    # into "unexpected pos"; written by Python, the error keeps its errno and file name
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_write(path, "wb") as fh:
        fh.write(buffer.getbuffer())
    return path


def load_checkpoint(path, required=()) -> dict:
    """The checkpoint at ``path``, refused in one line when it is missing, corrupt, holds
    Python objects, is something else, or lacks one of the ``required`` keys."""
    path = Path(path)
    if not path.is_file():
        raise DEQCheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        found = _python_object(err, path)
        if found is None:           # garbage where a pickle opcode should be
            raise DEQCheckpointError(
                f"checkpoint {path} is corrupt or truncated (not a readable checkpoint: "
                f"{_last_line(err)}); delete it to start over, or point --checkpoint at an "
                f"intact one") from None
        raise DEQCheckpointError(
            f"refusing to load {path}: {found}, where deq_petsc checkpoints hold only tensors "
            f"and plain data, and unpickling it could run code; do not use a file of unknown "
            f"origin") from None
    except Exception as err:  # zip/pickle errors of every kind mean the same thing here
        raise DEQCheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            f"delete it to start over, or point --checkpoint at an intact one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DEQCheckpointError(f"{path} is not a deq_petsc checkpoint")
    missing = [key for key in required if key not in state]
    if missing:
        raise DEQCheckpointError(f"checkpoint {path} has no {missing[0]!r} (a deq_petsc "
                                 f"checkpoint holds {', '.join(required)}): it was not written "
                                 f"by a training run; point --checkpoint at one that was")
    return state


def _python_object(err: pickle.UnpicklingError, path: Path) -> str | None:
    """What a file torch's weights-only reader refused holds, when it is code or a Python
    object (None when it is garbage). Torch has said it three ways: ``Unsupported global:
    GLOBAL m.f`` (torch 2.6), ``Trying to load unsupported GLOBAL m.f`` (2.13), and, for
    a plain pickle rather than a torch file, ``Unsupported operand N`` on the opcodes
    its reader lacks, in a file that starts like a pickle (PROTO, byte 0x80)."""
    found = re.search(r"unsupported(?: global:)? GLOBAL (\S+)", str(err), re.IGNORECASE)
    if found is not None:
        return f"it holds a Python object ({found.group(1)})"
    if re.search(r"Unsupported operand \d+", str(err)):
        with open(path, "rb") as fh:
            if fh.read(1) == b"\x80":
                return "it is a plain Python pickle (Python objects), not a torch checkpoint"
    return None


def _last_line(err: BaseException) -> str:
    """torch's weights-only message: generic paragraphs around one line that says what."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    specific = [line for line in lines if line.startswith(("Unsupported", "WeightsUnpickler"))]
    return (specific or lines or [type(err).__name__])[-1]
