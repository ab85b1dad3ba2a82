"""What a model is trained to do: classify a task's labels or regress its DFT target.

Every task has both: ``classify`` predicts the class (polar / not, pore size
bin, metal / semiconductor / insulator) from the labels; ``regress`` predicts
the number the labels come from (dipole in D, LCD in A, band gap in eV) with a
mean-squared error on targets standardised by the training split's mean and
standard deviation, as in PETScML's regression problems. An objective supplies
the loss, the metric logged per epoch, the test report, and the curvature of
the loss in the network outputs that Gauss-Newton products need.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data.tasks import TASKS, TaskData
from .metrics import calibration, classification_report, confusion_matrix, format_report

OBJECTIVES = ("classify", "regress")


def shard_loss(objective, out: torch.Tensor, y: torch.Tensor, n_total: int) -> torch.Tensor:
    """This rank's share of the mean loss over ``n_total`` samples split across the ranks.

    The ranks' shares (and their gradients) add up to the whole batch's. A rank whose
    shard is empty (a last batch smaller than the number of ranks) contributes 0, not
    the NaN mean of nothing, through its empty output: its backward still joins the
    collective adjoint solve of the others.
    """
    if len(y) == 0:
        return out.sum() * 0.0
    return objective.loss(out, y) * (len(y) / n_total)


class Classification:
    name = "classify"
    metric = "acc"                 # metrics keys train_acc / val_acc
    metric_label = "accuracy"
    loss_label = "cross-entropy"

    def __init__(self, classes):
        self.classes = tuple(classes)
        self.out_dim = len(self.classes)

    @property
    def chance_loss(self) -> float:
        """Cross-entropy of the uniform guess: the scale a diverged loss is judged on."""
        return math.log(self.out_dim)

    def state(self) -> dict:
        return {"name": self.name, "classes": list(self.classes)}

    def targets(self, data: TaskData, split: str) -> torch.Tensor:
        return data.labels[data.indices(split)]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(out, y)

    def metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float((out.argmax(1) == y).sum())

    def output_hessian(self, out: torch.Tensor, v: torch.Tensor, n_total: int) -> torch.Tensor:
        """``d^2 (sum of per-sample losses / n_total) / d out^2`` applied to ``v``.

        Softmax cross-entropy: ``(diag(p) - p p^T) v`` per sample, positive
        semi-definite, so ``J^T H J`` is a Gauss-Newton matrix.
        """
        p = torch.softmax(out.detach(), dim=1)
        return (p * v - p * (p * v).sum(1, keepdim=True)) / n_total

    def report(self, out: torch.Tensor, y: torch.Tensor, data: TaskData) -> dict:
        cm = confusion_matrix(y.numpy(), out.argmax(1).numpy(), len(self.classes))
        report = classification_report(cm, self.classes)
        probs = torch.softmax(out.double(), dim=1).numpy()
        predicted = np.bincount(probs.argmax(1), minlength=len(self.classes))
        report.update(objective=self.name, loss=float(self.loss(out, y)), confusion=cm.tolist(),
                      class_balance=data.class_balance(),
                      calibration=calibration(probs, y.numpy()),
                      predicted_balance={c: int(k) for c, k in zip(self.classes, predicted)})
        return report

    def format(self, report: dict) -> str:
        text = format_report(report)
        if "calibration" in report:
            c = report["calibration"]
            text += (f"\nexpected calibration error {c['ece']:.3f} (mean confidence "
                     f"{c['mean_confidence']:.3f} against accuracy {report['accuracy']:.3f})")
        return text

    def answer(self, out: torch.Tensor) -> str:
        probs = torch.softmax(out, dim=1)[0]
        best = int(probs.argmax())
        return (f"{self.classes[best]} (p = {probs[best]:.3f})\n  "
                + ", ".join(f"{c}: {p:.3f}" for c, p in zip(self.classes, probs.tolist())))


class Regression:
    name = "regress"
    metric = "mae"                 # in the target's own units
    metric_label = "mean absolute error"
    loss_label = "MSE (standardised)"

    def __init__(self, data: TaskData | None, mean: float | None = None,
                 std: float | None = None, target_name: str | None = None):
        if mean is None or std is None:
            train = np.asarray(data.targets)[data.indices("train")]
            if len(train) < 2:
                raise ValueError("regression needs at least 2 training samples")
            mean, std = float(train.mean()), float(train.std())
        self.mean, self.std = float(mean), float(std) if std > 0 else 1.0
        self.target_name = target_name or TASKS[data.task].target_name
        self.out_dim = 1

    #: MSE of predicting the training mean on standardised targets
    chance_loss = 1.0

    def state(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std,
                "target_name": self.target_name}

    def targets(self, data: TaskData, split: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(data.targets)[data.indices(split)], dtype=torch.float32)
        return ((t - self.mean) / self.std)[:, None]

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, y.to(out.dtype))

    def unscale(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.std + self.mean

    def metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float((out.detach() - y.to(out.dtype)).abs().sum()) * self.std

    def output_hessian(self, out: torch.Tensor, v: torch.Tensor, n_total: int) -> torch.Tensor:
        return 2.0 * v / n_total

    def residual(self, out: torch.Tensor, y: torch.Tensor, n_total: int) -> torch.Tensor:
        """Residuals scaled so that ``||r||^2`` is the MSE (TAO's brgn minimises ``||r||^2 / 2``)."""
        return (out - y.to(out.dtype)).reshape(-1) / math.sqrt(n_total)

    def report(self, out: torch.Tensor, y: torch.Tensor, data: TaskData) -> dict:
        pred = self.unscale(out.detach().double()).reshape(-1).numpy()
        true = self.unscale(y.double()).reshape(-1).numpy()
        err = pred - true
        ss_tot = float(((true - true.mean()) ** 2).sum())
        return {"objective": self.name, "target": self.target_name, "n": int(len(true)),
                "loss": float(self.loss(out, y)), "mae": float(np.abs(err).mean()),
                "rmse": float(np.sqrt((err ** 2).mean())),
                "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
                "baseline_mae": float(np.abs(true - self.mean).mean()),
                "predicted": pred.tolist(), "true": true.tolist()}

    def format(self, report: dict) -> str:
        return (f"{report['target']}: MAE {report['mae']:.4f}, RMSE {report['rmse']:.4f}, "
                f"R^2 {report['r2']:.3f} on {report['n']} samples; predicting the training "
                f"mean gives MAE {report['baseline_mae']:.4f}")

    def answer(self, out: torch.Tensor) -> str:
        return f"{self.target_name} = {float(self.unscale(out.detach()).reshape(-1)[0]):.4f}"


def make_objective(name: str, data: TaskData | None, state: dict | None = None):
    """The objective ``name`` for ``data``, or rebuilt from a checkpoint's ``state``."""
    state = state or {}
    if name == "classify":
        return Classification(state.get("classes") or data.classes)
    if name == "regress":
        return Regression(data, state.get("mean"), state.get("std"), state.get("target_name"))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
