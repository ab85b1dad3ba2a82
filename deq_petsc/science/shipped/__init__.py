"""The small trained model per task that ships with deq_petsc.

``deq-petsc predict --task polarity --smiles CCO`` answers with ``polarity.pt`` here, so a
fresh install can ask its questions before training anything. Each file is a checkpoint
of ``deq-petsc train`` (loaded as every checkpoint is, tensors and plain data only),
beside its run record (``<task>.run.json``: settings, PETSc options, versions, machine)
and test report (``<task>.report.json``); ``make models`` (``ci/ship-models.sh``) makes
them again, with the settings it lists.
"""

from __future__ import annotations

from pathlib import Path

from deq_petsc.core.errors import DEQInputError

HERE = Path(__file__).resolve().parent


def shipped_tasks() -> list[str]:
    """The tasks a model ships for (the checkpoints present)."""
    return sorted(p.stem for p in HERE.glob("*.pt"))


def shipped_checkpoint(task: str) -> Path:
    """The shipped checkpoint of ``task``; a task without one is one line naming those
    with one."""
    path = HERE / f"{task}.pt"
    if not path.is_file():
        raise DEQInputError(f"no model ships for the task {task!r} (shipped: "
                            f"{', '.join(shipped_tasks()) or 'none'}); give --checkpoint")
    return path
