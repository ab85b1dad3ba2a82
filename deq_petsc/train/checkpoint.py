"""Checkpoints written atomically (temporary file + rename) and read with clear errors.

A run killed while saving leaves the previous checkpoint intact: the new one
is complete on disk (flushed and fsync'd) before it replaces the old name.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ..atomic import atomic_write
from ..errors import DEQError

FORMAT = "deq_petsc-checkpoint-1"


class DEQCheckpointError(DEQError):
    """A checkpoint that is missing, truncated, corrupt or from something else."""


def save_checkpoint(state: dict, path) -> Path:
    path = Path(path)
    with atomic_write(path, "wb") as fh:
        torch.save({"format": FORMAT, **state}, fh)
    return path


def load_checkpoint(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DEQCheckpointError(f"no checkpoint at {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # zip/pickle errors of every kind mean the same thing here
        raise DEQCheckpointError(
            f"checkpoint {path} is corrupt or truncated ({type(err).__name__}: {err}); "
            f"delete it to start over, or point --checkpoint at an intact one") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise DEQCheckpointError(f"{path} is not a deq_petsc checkpoint")
    return state
