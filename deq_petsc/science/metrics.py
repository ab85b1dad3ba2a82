"""Classification metrics: accuracy, confusion matrix, per-class precision/recall/F1, and
calibration (does a predicted 0.9 come true 90% of the time?); regression's errors."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def accuracy_stderr(accuracy: float, samples: int) -> float:
    """The binomial standard error of an accuracy measured on ``samples`` examples: what a
    difference between two models must clearly exceed before it says anything (200 test
    molecules at 0.65: 0.034)."""
    return float((accuracy * (1 - accuracy) / samples) ** 0.5) if samples else float("nan")


def classification_report(cm: np.ndarray, classes) -> dict:
    """Per class: precision, recall, F1, support; plus accuracy and the majority baseline."""
    total = cm.sum()
    out = {"accuracy": float(np.trace(cm) / total) if total else float("nan"),
           "majority_baseline": float(cm.sum(axis=1).max() / total) if total else float("nan"),
           "n": int(total), "classes": {}}
    out["accuracy_stderr"] = accuracy_stderr(out["accuracy"], int(total))
    for k, name in enumerate(classes):
        tp = cm[k, k]
        predicted, actual = cm[:, k].sum(), cm[k, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out["classes"][name] = {"precision": float(precision), "recall": float(recall),
                                "f1": float(f1), "support": int(actual)}
    return out


def regression_report(predicted, true, train_mean: float) -> dict:
    """MAE, RMSE and R^2 of ``predicted`` against ``true``, the MAE's standard error (what
    a difference between two regressors must clearly exceed), and the MAE of predicting
    the training mean (what a model must beat to have learnt anything)."""
    pred, true = np.asarray(predicted, np.float64), np.asarray(true, np.float64)
    err = np.abs(pred - true)
    ss_tot = float(((true - true.mean()) ** 2).sum())
    n = len(true)
    return {"n": int(n), "mae": float(err.mean()),
            "mae_stderr": float(err.std(ddof=1) / n ** 0.5) if n > 1 else float("nan"),
            "rmse": float(np.sqrt((err ** 2).mean())),
            "r2": float(1 - (err ** 2).sum() / ss_tot) if ss_tot > 0 else float("nan"),
            "baseline_mae": float(np.abs(true - train_mean).mean())}


def format_regression(report: dict) -> str:
    """One line: a :func:`regression_report` (with its ``target`` name)."""
    stderr = (f" (standard error {report['mae_stderr']:.4f})" if "mae_stderr" in report
              else "")
    return (f"{report['target']}: MAE {report['mae']:.4f}{stderr}, RMSE {report['rmse']:.4f}, "
            f"R^2 {report['r2']:.3f} on {report['n']} samples; predicting the training "
            f"mean gives MAE {report['baseline_mae']:.4f}")


def format_report(report: dict) -> str:
    lines = [f"{'class':>24s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'support':>8s}"]
    for name, r in report["classes"].items():
        lines.append(f"{name:>24s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
                     f"{r['support']:8d}")
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['n']} samples (standard error "
                 f"{report['accuracy_stderr']:.3f}); majority-class "
                 f"baseline {report['majority_baseline']:.4f}")
    return "\n".join(lines)


def calibration(probabilities, y_true, bins: int = 10) -> dict:
    """Expected calibration error and the reliability table of the top-class confidence.

    Confidence = the largest predicted probability; the samples are grouped into
    ``bins`` equal-width confidence bins; ECE = sum over bins of (bin size / n) x
    |accuracy in bin - mean confidence in bin| (Guo et al. 2017). A model that says
    0.9 and is right 60% of the time is overconfident, whatever its accuracy.
    """
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(y_true)
    confidence, predicted = p.max(axis=1), p.argmax(axis=1)
    correct = predicted == y
    edges = np.linspace(1.0 / p.shape[1], 1.0, bins + 1)      # confidence >= 1/C always
    which = np.clip(np.searchsorted(edges, confidence, side="right") - 1, 0, bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        if not inside.any():
            continue
        acc, conf = float(correct[inside].mean()), float(confidence[inside].mean())
        ece += inside.mean() * abs(acc - conf)
        table.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                      "n": int(inside.sum()), "accuracy": acc, "confidence": conf})
    return {"ece": float(ece), "mean_confidence": float(confidence.mean()) if len(y) else 0.0,
            "bins": table}
