"""What a model is trained to do: classify a task's labels, regress its DFT target, or
regress a PDE's solution field.

Every science task has the first two: ``classify`` predicts the class (polar /
not, pore size bin, metal / semiconductor / insulator) from the labels;
``regress`` predicts the number the labels come from (dipole in D, LCD in A,
band gap in eV) with a mean-squared error on targets standardised by the
training split's mean and standard deviation, as in PETScML's regression
problems. The PDE task (:mod:`deq_petsc.science.data.pde`) has ``field``: the solution
on the grid, its metric the relative L2 error. An objective supplies the loss,
the metric logged per epoch, the test report, and the curvature of the loss in
the network outputs that Gauss-Newton products need (and, for least squares, the
residuals).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .data.tasks import TASKS, TaskData
from .metrics import (calibration, classification_report, confusion_matrix, format_regression,
                      format_report, regression_report)

OBJECTIVES = ("classify", "regress", "field")


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
    metric_short = "accuracy"
    report_dtype = torch.float32     # what evaluate casts outputs to before report()
    metric_format, loss_format = ".3f", ".4f"
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

    @staticmethod
    def metric_value(total: float, samples: int) -> float:
        """The split's metric from :meth:`metric_sum`'s total over ``samples``."""
        return total / samples

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


class MeanSquares:
    """The least-squares half of the regression objectives: the MSE over every output of
    standardised targets (``out_dim`` per sample), its Gauss-Newton output Hessian, and
    the residuals TAO's ``brgn`` takes."""

    loss_label = "MSE (standardised)"
    #: MSE of predicting the training mean on standardised targets
    chance_loss = 1.0
    out_dim: int

    def loss(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.mse_loss(out, y.to(out.dtype))

    def output_hessian(self, out: torch.Tensor, v: torch.Tensor, n_total: int) -> torch.Tensor:
        return 2.0 * v / (n_total * self.out_dim)

    def residual_scale(self, n_total: int) -> float:
        """What residuals and their Jacobian are divided by (see :meth:`residual`)."""
        return math.sqrt(n_total * self.out_dim)

    def residual(self, out: torch.Tensor, y: torch.Tensor, n_total: int) -> torch.Tensor:
        """Scaled so that ``||r||^2`` is the loss (TAO's brgn minimises ``||r||^2 / 2``)."""
        return (out - y.to(out.dtype)).reshape(-1) / self.residual_scale(n_total)


class Regression(MeanSquares):
    name = "regress"
    metric = "mae"                 # in the target's own units
    metric_label = "mean absolute error"
    metric_short = "MAE"
    report_dtype = torch.float32
    reference = "DFT"            # where the true values come from (plots)
    metric_format, loss_format = ".3f", ".4f"

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

    metric_value = staticmethod(Classification.metric_value)

    def state(self) -> dict:
        return {"name": self.name, "mean": self.mean, "std": self.std,
                "target_name": self.target_name}

    def targets(self, data: TaskData, split: str) -> torch.Tensor:
        t = torch.as_tensor(np.asarray(data.targets)[data.indices(split)], dtype=torch.float32)
        return ((t - self.mean) / self.std)[:, None]

    def unscale(self, out: torch.Tensor) -> torch.Tensor:
        return out * self.std + self.mean

    def metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float((out.detach() - y.to(out.dtype)).abs().sum()) * self.std

    def report(self, out: torch.Tensor, y: torch.Tensor, data: TaskData) -> dict:
        pred = self.unscale(out.detach().double()).reshape(-1).numpy()
        true = self.unscale(y.double()).reshape(-1).numpy()
        return {"objective": self.name, "target": self.target_name,
                "loss": float(self.loss(out, y)), **regression_report(pred, true, self.mean),
                "predicted": pred.tolist(), "true": true.tolist()}

    def format(self, report: dict) -> str:
        return format_regression({k: v for k, v in report.items() if k != "mae_stderr"})

    def answer(self, out: torch.Tensor) -> str:
        return f"{self.target_name} = {float(self.unscale(out.detach()).reshape(-1)[0]):.4f}"


class FieldRegression(MeanSquares):
    """Regress a PDE's solution field (:mod:`deq_petsc.science.data.pde`): the SciML surrogate.

    The loss is the MSE over every grid value of fields standardised by the training
    split's mean field and one scale (the root of the mean per-point variance), so that
    predicting the mean field scores 1. The metric is the relative L2 error of a split
    in the field's own units, ``sqrt(mean_i ||u_pred,i - u_i||^2) / sqrt(mean_i
    ||u_i||^2)``, the denominator taken over the training split (so that it is a sum
    over samples, as the trainers accumulate metrics; a test split's own differs by a
    few percent). Per-sample ratios ``||e_i|| / ||u_i||`` are reported beside it, but
    not averaged: a draw whose solution is nearly zero makes its ratio arbitrary.
    """

    name = "field"
    metric = "rel_l2"
    metric_label = "relative L2 error"
    metric_short = "relative L2 error"
    report_dtype = torch.float64     # errors far below float32's resolution are measured
    reference = "SNES"
    metric_format = loss_format = ".3e"

    def __init__(self, data=None, mean=None, scale: float | None = None,
                 norm: float | None = None):
        if mean is None or scale is None or norm is None:
            train = np.asarray(data.fields)[data.indices("train")]
            if len(train) < 2:
                raise ValueError("regression needs at least 2 training samples")
            mean = train.mean(0)
            scale = float(np.sqrt(train.var(0).mean()))
            norm = float(np.sqrt((train ** 2).sum(1).mean()))
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float64))
        self.scale = float(scale) if scale and scale > 0 else 1.0
        self.norm = float(norm) if norm and norm > 0 else 1.0
        self.out_dim = int(self.mean.numel())
        self.target_name = "mean of u"

    def metric_value(self, total: float, samples: int) -> float:
        """The split's metric from :meth:`metric_sum`'s total over ``samples``."""
        return math.sqrt(total / samples) if samples else math.nan

    def state(self) -> dict:
        return {"name": self.name, "mean": self.mean.tolist(), "scale": self.scale,
                "norm": self.norm}

    def targets(self, data, split: str) -> torch.Tensor:
        fields = torch.as_tensor(np.asarray(data.fields)[data.indices(split)])
        return (fields - self.mean) / self.scale

    def unscale(self, out: torch.Tensor) -> torch.Tensor:
        return out.detach().double() * self.scale + self.mean

    def errors(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``||u_pred,i - u_i||`` per sample, in the field's units."""
        return (out.detach().double() - y.double()).norm(dim=1) * self.scale

    def metric_sum(self, out: torch.Tensor, y: torch.Tensor) -> float:
        return float((self.errors(out, y) ** 2).sum()) / self.norm ** 2

    @staticmethod
    def _qoi(fields: torch.Tensor) -> np.ndarray:
        """The task's quantity of interest (the mean of u over the square) of interior
        fields, the boundary's zeros put back."""
        from .data.pde import mean_over_square
        inner = int(round(math.sqrt(fields.shape[1])))
        u = torch.zeros(len(fields), inner + 2, inner + 2, dtype=torch.float64)
        u[:, 1:-1, 1:-1] = fields.reshape(-1, inner, inner)
        return mean_over_square(u).numpy()

    def report(self, out: torch.Tensor, y: torch.Tensor, data) -> dict:
        n = len(y)
        pred, true = self.unscale(out), self.unscale(y)
        ratios = (self.errors(out, y) / true.norm(dim=1).clamp_min(1e-300)).numpy()
        q_pred, q_true = self._qoi(pred), self._qoi(true)
        return {"objective": self.name, "target": "u on the grid's interior", "n": int(n),
                "loss": float(self.loss(out, y)),
                "rel_l2": self.metric_value(self.metric_sum(out, y), n),
                "rel_l2_own_norm": float((pred - true).norm() / true.norm()),
                "rel_l2_per_sample_median": float(np.median(ratios)),
                "mse": float(((pred - true) ** 2).mean()),
                "qoi_mae": float(np.abs(q_pred - q_true).mean()),
                "baseline_rel_l2": self.metric_value(
                    self.metric_sum(torch.zeros_like(y), y), n),
                "predicted": q_pred.tolist(), "true": q_true.tolist()}

    def format(self, report: dict) -> str:
        return (f"u on the grid: relative L2 error {report['rel_l2']:.3e} (per sample: median "
                f"{report['rel_l2_per_sample_median']:.3e}), MSE {report['mse']:.3e} on "
                f"{report['n']} samples; mean of u: MAE {report['qoi_mae']:.3e}; the training "
                f"mean field scores {report['baseline_rel_l2']:.3e}")

    def answer(self, out: torch.Tensor) -> str:
        u = self.unscale(out)[0]
        return (f"u from {float(u.min()):.4f} to {float(u.max()):.4f}, mean over the square "
                f"{float(self._qoi(u[None])[0]):.4f}")


def make_objective(name: str, data: TaskData | None, state: dict | None = None):
    """The objective ``name`` for ``data``, or rebuilt from a checkpoint's ``state``."""
    state = state or {}
    if name == "classify":
        return Classification(state.get("classes") or data.classes)
    if name == "regress":
        return Regression(data, state.get("mean"), state.get("std"), state.get("target_name"))
    if name == "field":
        return FieldRegression(data, state.get("mean"), state.get("scale"), state.get("norm"))
    raise ValueError(f"objective must be one of {OBJECTIVES}, got {name!r}")
