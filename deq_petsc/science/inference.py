"""Inference with a graph-image model: build or load it, predict, evaluate.

``build_model`` makes the model a :class:`~deq_petsc.science.config.TrainConfig` describes
(seeded initial weights) and ``load_model`` the trained model of a checkpoint,
both with the training solve defaults below; ``predict`` and ``evaluate`` run one
over images or a data-set split, data-parallel under ``mpiexec``
(:mod:`deq_petsc.science.parallel`). Training (:mod:`deq_petsc.science.train`) builds on these.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch
from petsc4py import PETSc

from .checkpoint import MODEL_KEYS, DEQCheckpointError, load_checkpoint
from .config import TrainConfig
from .data.graph_image import ELEMENT_SCALE
from .data.pde import FieldData
from .data.tasks import TaskData
from deq_petsc.core.errors import DEQCappedSolveWarning
from .models.graph_classifier import ClassifierConfig, GraphImageClassifier
from .models.surrogate import FAMILY as SURROGATE
from .models.surrogate import FieldSurrogate, SurrogateConfig
from .objectives import Classification, make_objective
from .parallel import DataParallel

#: Program defaults of the solves when training (the command line wins): DEQ
#: tolerances (the implicit-layers tutorial trains at 1e-2 to 1e-3) rather than
#: PETSc's 1e-8, and a batch whose forward or adjoint solve reaches its iteration
#: limit continues from the last iterate -- counted per epoch in the metrics and
#: the log -- instead of ending the run. NaN/Inf still end it.
TRAIN_SOLVER_OPTIONS = {"snes_rtol": 1e-3, "snes_max_it": 100, "deq_accept_max_it": True}
TRAIN_ADJOINT_OPTIONS = {"ksp_rtol": 1e-3, "ksp_max_it": 100, "deq_accept_max_it": True}


def _element_channel(cfg: TrainConfig, data: TaskData) -> int:
    """Where the images keep ``Z / ELEMENT_SCALE`` for the element embeddings (-1: none
    asked, or images without an element channel). Every task of the command line has
    one; a library user's own :class:`TaskData` may not, and then trains without them,
    as it would with ``elements=False``."""
    channels = list(getattr(data, "channels", ()))
    return channels.index("element") if cfg.elements and "element" in channels else -1


def _model_class(model_config: dict):
    """The model class a checkpoint's ``model_config`` rebuilds, and its config class."""
    if model_config.get("family") == SURROGATE:
        return FieldSurrogate, SurrogateConfig
    return GraphImageClassifier, ClassifierConfig


def build_model(cfg: TrainConfig, data: TaskData, out_dim: int, prefix: str = "", comm=None,
                solver_options: dict | None = None, adjoint_options: dict | None = None):
    """The model ``cfg`` describes for ``data``, seeded: a graph-image classifier, or for a
    PDE task's parameter draws (``[M, P]`` inputs) a :class:`FieldSurrogate`."""
    solver_options = {**TRAIN_SOLVER_OPTIONS, **(solver_options or {})}
    adjoint_options = {**TRAIN_ADJOINT_OPTIONS, **(adjoint_options or {})}
    if isinstance(data, FieldData):
        torch.manual_seed(cfg.seed)
        model = FieldSurrogate(SurrogateConfig(data.images.shape[1], out_dim, width=cfg.width,
                                               kind=cfg.kind, depth=cfg.depth,
                                               gamma=cfg.gamma),
                               prefix=prefix, comm=comm, solver_options=solver_options,
                               adjoint_options=adjoint_options)
        dtype = getattr(torch, cfg.dtype)
        model = model.to(device=cfg.device, dtype=dtype)     # buffers too, then filled:
        model.inject.standardise(data.images[data.indices("train")].to(cfg.device, dtype))
        return model
    model_cfg = ClassifierConfig(in_channels=data.images.shape[1],
                                 image_size=data.images.shape[-1], n_classes=out_dim,
                                 width=cfg.width, kind=cfg.kind, depth=cfg.depth,
                                 cell=cfg.cell, gamma=cfg.gamma, sums=cfg.sums,
                                 element_channel=_element_channel(cfg, data),
                                 element_scale=ELEMENT_SCALE)
    torch.manual_seed(cfg.seed)
    model = GraphImageClassifier(model_cfg, prefix=prefix, comm=comm,
                                 solver_options=solver_options, adjoint_options=adjoint_options)
    model.inject.standardise(data.images[data.indices("train")])
    return model.to(device=cfg.device, dtype=getattr(torch, cfg.dtype))


def solver_counts(model):
    """Forward its, f evaluations, adjoint its, and 0/1 for an inexact forward / adjoint."""
    stats = model.last_stats
    if stats is None or stats.forward is None:
        return 0, 0, 0, 0, 0
    f, b = stats.forward, stats.backward
    return (f.iterations, f.function_evals, b.iterations if b is not None else 0,
            int(not f.converged), int(b is not None and not b.converged))


def model_dtype(model) -> torch.dtype:
    return next(model.parameters()).dtype


def model_device(model) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 256, dp: DataParallel | None = None,
            counts: dict | None = None):
    """Outputs for ``images``, plus (mean forward iterations, f evaluations, seconds,
    batches whose solve stopped at its iteration limit).

    With ``dp`` over several ranks each rank computes its shard of every batch
    (the DEQ solve is one global solve) and every rank gets all the outputs. Batches
    whose solve stopped at its iteration limit (a loaded model accepts the cap) are
    counted and warned about (:class:`~deq_petsc.core.errors.DEQCappedSolveWarning`).
    ``counts``, if given, receives ``sample_evals`` and ``samples``: the f evaluations
    counted per sample and the samples, on this rank's shards (a sample that stops early
    stops costing them).
    """
    model.eval()
    dp = dp or DataParallel(PETSc.COMM_SELF)
    logits, its, evals, inexact = [], [], 0, 0
    dtype, device = model_dtype(model), model_device(model)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        local = dp.shard(images[i:i + batch_size]).to(device=device, dtype=dtype)
        logits.append(dp.gather(model(local).cpu()))
        f_its, f_evals, _, unconverged, _ = solver_counts(model)
        its.append(f_its)
        evals += f_evals
        if counts is not None and model.last_stats is not None and model.last_stats.forward:
            counts["sample_evals"] = counts.get("sample_evals", 0) + \
                model.last_stats.forward.sample_evals
            counts["samples"] = counts.get("samples", 0) + len(local)
        inexact += unconverged
    elapsed = time.perf_counter() - start
    if inexact:
        warnings.warn(capped_solves_warning(inexact, -(-len(images) // batch_size)),
                      DEQCappedSolveWarning, stacklevel=2)
    return torch.cat(logits), (float(np.mean(its)) if its else 0.0, evals, elapsed, inexact)


def capped_solves_warning(capped: int, solves: int) -> str:
    """The one wording of "these answers come from solves stopped at their cap"."""
    return (f"{capped} of {solves} forward solves stopped at the iteration limit "
            f"(-snes_max_it) before reaching their tolerance: those answers are not the "
            f"model's equilibrium")


def evaluate(model, data: TaskData, split: str = "test", batch_size: int = 256,
             objective=None, dp: DataParallel | None = None) -> dict:
    """Test-style report of ``model`` on a split: the objective's metrics plus solver cost."""
    objective = objective or Classification(data.classes)
    images = data.images[data.indices(split)]
    y = objective.targets(data, split)
    counts = {}
    out, (its, evals, elapsed, inexact) = predict(model, images, batch_size, dp, counts)
    report = objective.report(out.to(getattr(objective, "report_dtype", torch.float32)), y,
                              data)
    per_sample = counts["sample_evals"] / counts["samples"] if counts.get("samples") else None
    report.update(split=split, forward_its=its, function_evals=evals,
                  function_evals_per_sample=per_sample, seconds=elapsed,
                  seconds_per_sample=elapsed / max(len(y), 1), inexact_forward=inexact,
                  batches=-(-len(y) // batch_size))
    return report


def load_model(checkpoint, prefix: str = "", solver_options: dict | None = None,
               comm=None, device="cpu"):
    """Rebuild the trained model of a checkpoint: ``(model, state)``.

    Its solver answers to ``prefix`` (default none: ``-snes_type nrichardson``
    applies as typed, whatever prefix the training run used, e.g. the demo's
    ``anderson_``). ``objective_of(state)`` gives what it was trained to predict.
    """
    state = load_checkpoint(checkpoint, MODEL_KEYS)
    model_class, config_class = _model_class(state["model_config"])
    model = model_class(config_class(**state["model_config"]), prefix=prefix,
                                 comm=comm,
                                 solver_options={**TRAIN_SOLVER_OPTIONS, **(solver_options or {})},
                                 adjoint_options=TRAIN_ADJOINT_OPTIONS)
    model.to(device=device, dtype=getattr(torch, state["train_config"].get("dtype", "float32")))
    model.load_state_dict(state["model"])
    model.eval()
    return model, state


def require_current_images(state: dict, checkpoint) -> None:
    """A model reads the graph images of the representation it was trained on: a
    checkpoint from before a representation change (molecules gained 3D channels) is
    refused in one line, not fed images with other channels."""
    from .data.graph_image import MOLECULE_CHANNELS, PERIODIC_CHANNELS
    from .data.tasks import TASKS
    if state["model_config"].get("family") == SURROGATE:
        return                         # parameter draws, no images (evaluate checks them)
    task = state["task"]
    if task["name"] not in TASKS:
        raise DEQCheckpointError(f"{checkpoint} was trained on task {task['name']!r}, which "
                                 f"this version does not know ({', '.join(TASKS)})")
    current = (MOLECULE_CHANNELS if TASKS[task["name"]].kind == "molecule"
               else PERIODIC_CHANNELS)
    saved = tuple(task.get("channels", ()))
    if saved != tuple(current):
        raise DEQCheckpointError(
            f"{checkpoint} was trained on {len(saved)}-channel images ({', '.join(saved)}); "
            f"this version draws {task['name']} inputs with {len(current)} "
            f"({', '.join(current)}): train the model again")


def objective_of(state: dict, data: TaskData | None = None):
    """The objective a checkpoint's model was trained for (older ones: classification)."""
    saved = state.get("objective") or {"name": "classify", "classes": state["task"]["classes"]}
    return make_objective(saved["name"], data, saved)
