"""Training graph-image DEQs: torch Adam (:mod:`.trainer`) or PETSc TAO (:mod:`.tao`), run
folders, plots. Re-exports the configuration, checkpoint and inference names it is used with."""

from ..checkpoint import DEQCheckpointError, load_checkpoint, save_checkpoint
from ..config import TrainConfig
from ..inference import evaluate, load_model, objective_of, predict
from .trainer import Trainer
from .tao import TaoTrainer

__all__ = ["DEQCheckpointError", "TaoTrainer", "TrainConfig", "Trainer", "evaluate",
           "load_checkpoint", "load_model", "objective_of", "predict", "save_checkpoint"]
