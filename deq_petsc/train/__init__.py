"""Training DEQ classifiers: torch optimizers (this package), checkpoints, metrics, plots."""

from .checkpoint import DEQCheckpointError, load_checkpoint, save_checkpoint
from .loop import TrainConfig, Trainer, evaluate, load_model, predict

__all__ = ["DEQCheckpointError", "TrainConfig", "Trainer", "evaluate", "load_checkpoint",
           "load_model", "predict", "save_checkpoint"]
