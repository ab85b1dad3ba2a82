"""Training with a torch optimizer, evaluation, and the run folder they write.

A run folder holds ``checkpoint.pt`` (after every epoch, atomically),
``metrics.csv`` / ``metrics.json`` (one row per epoch), ``curves.png``, and at
the end ``report.json`` and ``confusion.png`` for the test split. Everything
random is seeded (initial weights by ``seed``, the shuffle of epoch ``e`` by
``(seed, e)``), so ``--resume`` from the checkpoint of epoch ``k`` gives the
same numbers as a run that was never interrupted.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data.tasks import TaskData
from ..models.graph_classifier import ClassifierConfig, GraphImageClassifier
from .checkpoint import DEQCheckpointError, load_checkpoint, save_checkpoint
from .metrics import classification_report, confusion_matrix
from .plots import plot_confusion, plot_curves

#: Program defaults of the solves when training (the command line wins): DEQ
#: tolerances (the implicit-layers tutorial trains at 1e-2 to 1e-3) rather than
#: PETSc's 1e-8, and a batch whose forward or adjoint solve reaches its iteration
#: limit continues from the last iterate -- counted per epoch in the metrics and
#: the log -- instead of ending the run. NaN/Inf still end it.
TRAIN_SOLVER_OPTIONS = {"snes_rtol": 1e-3, "snes_max_it": 100, "deq_accept_max_it": True}
TRAIN_ADJOINT_OPTIONS = {"ksp_rtol": 1e-3, "ksp_max_it": 100, "deq_accept_max_it": True}


@dataclass
class TrainConfig:
    task: str
    epochs: int = 10
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 0.0
    seed: int = 0
    width: int = 16
    kind: str = "deq"
    depth: int = 8
    limit: int | None = None
    eval_batch_size: int = 256
    jac_reg: float = 0.0
    cell: str = "contractive"
    gamma: float = 0.9


def build_model(cfg: TrainConfig, data: TaskData, prefix: str = "", comm=None,
                solver_options: dict | None = None, adjoint_options: dict | None = None):
    model_cfg = ClassifierConfig(in_channels=data.images.shape[1],
                                 image_size=data.images.shape[-1], n_classes=len(data.classes),
                                 width=cfg.width, kind=cfg.kind, depth=cfg.depth,
                                 cell=cfg.cell, gamma=cfg.gamma)
    torch.manual_seed(cfg.seed)
    return GraphImageClassifier(model_cfg, prefix=prefix, comm=comm,
                                solver_options={**TRAIN_SOLVER_OPTIONS, **(solver_options or {})},
                                adjoint_options={**TRAIN_ADJOINT_OPTIONS,
                                                 **(adjoint_options or {})})


def _solver_counts(model):
    """Forward its, f evaluations, adjoint its, and 0/1 for an inexact forward / adjoint."""
    stats = model.last_stats
    if stats is None or stats.forward is None:
        return 0, 0, 0, 0, 0
    f, b = stats.forward, stats.backward
    return (f.iterations, f.function_evals, b.iterations if b is not None else 0,
            int(not f.converged), int(b is not None and not b.converged))


@torch.no_grad()
def predict(model, images: torch.Tensor, batch_size: int = 256):
    """Logits for ``images``, plus (mean forward iterations, f evaluations, seconds)."""
    model.eval()
    logits, its, evals = [], [], 0
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        logits.append(model(images[i:i + batch_size]))
        f_its, f_evals, *_ = _solver_counts(model)
        its.append(f_its)
        evals += f_evals
    elapsed = time.perf_counter() - start
    return torch.cat(logits), (float(np.mean(its)) if its else 0.0, evals, elapsed)


def evaluate(model, data: TaskData, split: str = "test", batch_size: int = 256) -> dict:
    images, labels = data.split(split)
    logits, (its, evals, elapsed) = predict(model, images, batch_size)
    loss = float(nn.functional.cross_entropy(logits, labels))
    cm = confusion_matrix(labels.numpy(), logits.argmax(1).numpy(), len(data.classes))
    report = classification_report(cm, data.classes)
    report.update(split=split, loss=loss, confusion=cm.tolist(), forward_its=its,
                  function_evals=evals, seconds=elapsed,
                  seconds_per_sample=elapsed / max(len(labels), 1))
    return report


class Trainer:
    """Trains one model on one task's data set and keeps its run folder up to date."""

    def __init__(self, cfg: TrainConfig, data: TaskData, out_dir, prefix: str = "",
                 solver_options: dict | None = None, adjoint_options: dict | None = None,
                 progress: bool = True, log=print):
        self.cfg, self.data, self.out = cfg, data, Path(out_dir)
        self.prefix = prefix
        self.progress, self.log = progress, log
        self.model = build_model(cfg, data, prefix=prefix, solver_options=solver_options,
                                 adjoint_options=adjoint_options)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=cfg.lr,
                                    weight_decay=cfg.weight_decay)
        self.history: list[dict] = []
        self.start_epoch = 0
        self.out.mkdir(parents=True, exist_ok=True)

    @property
    def checkpoint_path(self) -> Path:
        return self.out / "checkpoint.pt"

    # -- checkpoints --------------------------------------------------------------------
    def state(self, epoch: int) -> dict:
        return {"epoch": epoch, "model": self.model.state_dict(),
                "optimizer": self.opt.state_dict(), "history": self.history,
                "train_config": asdict(self.cfg), "model_config": self.model.config.as_dict(),
                "task": {"name": self.data.task, "classes": list(self.data.classes),
                         "channels": list(self.data.channels), "params": self.data.params},
                "prefix": self.prefix}

    def resume(self, path=None) -> int:
        state = load_checkpoint(path or self.checkpoint_path)
        if state["train_config"]["task"] != self.cfg.task or \
                state["model_config"] != self.model.config.as_dict():
            raise DEQCheckpointError(
                f"checkpoint {path or self.checkpoint_path} is for task "
                f"{state['train_config']['task']!r} with model {state['model_config']}, not "
                f"this run's {self.cfg.task!r} / {self.model.config.as_dict()}")
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"])
        return self.start_epoch

    # -- training -----------------------------------------------------------------------
    def fit(self) -> list[dict]:
        from tqdm.auto import tqdm

        X, y = self.data.split("train")
        n = len(y)
        if n == 0:
            raise ValueError("no training samples")
        loss_fn = nn.CrossEntropyLoss()
        elapsed = self.history[-1]["elapsed"] if self.history else 0.0
        for epoch in range(self.start_epoch, self.cfg.epochs):
            self.model.train()
            # Everything random in an epoch comes from generators seeded by (seed, epoch):
            # a resumed run draws exactly what an uninterrupted one would.
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            order = torch.randperm(n, generator=g)
            probes = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch + 7919)
            sums = dict(loss=0.0, correct=0, f_its=0, f_evals=0, b_its=0, unconverged=0,
                        unconverged_adjoint=0, batches=0, jac=0.0)
            bar = tqdm(range(0, n, self.cfg.batch_size), disable=not self.progress,
                       desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch", leave=False)
            start = time.perf_counter()
            for i in bar:
                idx = order[i:i + self.cfg.batch_size]
                logits = self.model(X[idx])
                loss = loss_fn(logits, y[idx])
                objective = loss
                if self.cfg.jac_reg > 0 and self.cfg.kind == "deq":
                    penalty = self.model.equilibrium.jacobian_penalty(generator=probes)
                    objective = loss + self.cfg.jac_reg * penalty
                    sums["jac"] += float(penalty.detach())
                self.opt.zero_grad(set_to_none=True)
                objective.backward()
                self.opt.step()
                if not math.isfinite(loss.item()):
                    raise FloatingPointError(f"training loss became {loss.item()} in epoch "
                                             f"{epoch + 1}; lower --lr")
                f_its, f_evals, b_its, unconv, unconv_b = _solver_counts(self.model)
                sums["loss"] += loss.item() * len(idx)
                sums["correct"] += int((logits.argmax(1) == y[idx]).sum())
                sums["f_its"] += f_its
                sums["f_evals"] += f_evals
                sums["b_its"] += b_its
                sums["unconverged"] += unconv
                sums["unconverged_adjoint"] += unconv_b
                sums["batches"] += 1
                bar.set_postfix(loss=f"{sums['loss'] / min(i + len(idx), n):.4f}",
                                acc=f"{sums['correct'] / min(i + len(idx), n):.3f}",
                                fwd_its=f"{sums['f_its'] / sums['batches']:.1f}")
            bar.close()
            train_time = time.perf_counter() - start
            elapsed += train_time
            val = evaluate(self.model, self.data, "val", self.cfg.eval_batch_size)
            row = {"epoch": epoch + 1, "train_loss": sums["loss"] / n,
                   "train_acc": sums["correct"] / n, "val_loss": val["loss"],
                   "val_acc": val["accuracy"],
                   "forward_its": sums["f_its"] / sums["batches"],
                   "forward_f_evals": sums["f_evals"] / sums["batches"],
                   "backward_its": sums["b_its"] / sums["batches"],
                   "jacobian_penalty": sums["jac"] / sums["batches"],
                   "inexact_forward": sums["unconverged"],
                   "inexact_adjoint": sums["unconverged_adjoint"], "epoch_time": train_time,
                   "elapsed": elapsed}
            self.history.append(row)
            self.log(f"epoch {epoch + 1:3d}: loss {row['train_loss']:.4f} acc "
                     f"{row['train_acc']:.3f} | val loss {row['val_loss']:.4f} acc "
                     f"{row['val_acc']:.3f} | fwd its {row['forward_its']:.1f} bwd its "
                     f"{row['backward_its']:.1f}"
                     + (f" | at iteration limit: {sums['unconverged']} forward, "
                        f"{sums['unconverged_adjoint']} adjoint of {sums['batches']}"
                        if sums["unconverged"] or sums["unconverged_adjoint"] else "")
                     + f" | {train_time:.1f} s")
            self._write_metrics()
            save_checkpoint(self.state(epoch + 1), self.checkpoint_path)
            plot_curves(self.history, self.out / "curves.png",
                        title=f"{self.cfg.task} ({self.cfg.kind})")
        return self.history

    def finish(self) -> dict:
        """Test-split report, confusion matrix PNG, ``report.json``."""
        report = evaluate(self.model, self.data, "test", self.cfg.eval_batch_size)
        report["class_balance"] = self.data.class_balance()
        report["history"] = self.history
        plot_confusion(np.array(report["confusion"]), self.data.classes,
                       self.out / "confusion.png", title=f"{self.cfg.task}: test split")
        _write_json(self.out / "report.json", report)
        return report

    def _write_metrics(self):
        _write_json(self.out / "metrics.json", self.history)
        tmp = self.out / ".metrics.csv.tmp"
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(tmp, self.out / "metrics.csv")

    def destroy(self):
        self.model.destroy()


def _write_json(path: Path, obj):
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=1, default=float))
    os.replace(tmp, path)


def load_model(checkpoint, prefix: str | None = None, solver_options: dict | None = None):
    """Rebuild the trained model of a checkpoint: ``(model, state)``."""
    state = load_checkpoint(checkpoint)
    cfg = ClassifierConfig(**state["model_config"])
    model = GraphImageClassifier(cfg, prefix=state.get("prefix", "") if prefix is None else prefix,
                                 solver_options={**TRAIN_SOLVER_OPTIONS, **(solver_options or {})},
                                 adjoint_options=TRAIN_ADJOINT_OPTIONS)
    model.load_state_dict(state["model"])
    model.eval()
    return model, state
