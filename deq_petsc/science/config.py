"""A training run's configuration: what ``deq-petsc train`` and the trainers take.

Its model fields (``width``, ``kind``, ``depth``, ``cell``, ``gamma``, ``dtype``,
``device``, ``seed``) are also what :func:`deq_petsc.science.inference.build_model` builds
from, so it sits below both training and inference and imports nothing of theirs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    task: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    lr_schedule: str = "constant"   # or "cosine": lr * (1 + cos(pi * epoch / epochs)) / 2
    seed: int = 0
    width: int = 16
    kind: str = "deq"
    depth: int = 8
    limit: int | None = None
    split_by: str = "random"        # or "scaffold" (molecules): data.tasks.scaffold_split
    eval_batch_size: int = 256
    jac_reg: float = 0.0
    spectral_reg: float = 0.0       # weight of the spectral-radius penalty (DEQ.spectral_penalty)
    spectral_target: float = 0.9    # the radius above which it acts
    spectral_steps: int = 4         # power-iteration steps of its radius estimate
    cell: str = "contractive"       # any images; `deq-petsc train` defaults to "pair", which
                                    # needs the science tasks' element channel
    gamma: float = 0.9
    sums: bool = True               # the image's graph sums in the injection (Injection)
    elements: bool = True           # learned element embeddings in the injection (Injection)
    objective: str = "classify"     # or "regress": the task's DFT target, MSE
    dtype: str = "float32"          # the model's; the TAO trainer uses float64
    tao_batch: int = 0              # TAO: samples per epoch's objective (0: all)
    device: str = "cpu"             # the model's torch device
    csv: str | None = None          # crystals: the source CSV given by --csv (absolute)
