"""Classification metrics: accuracy, confusion matrix, per-class precision/recall/F1."""

from __future__ import annotations

import numpy as np


def confusion_matrix(y_true, y_pred, n_classes: int) -> np.ndarray:
    cm = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(cm: np.ndarray, classes) -> dict:
    """Per class: precision, recall, F1, support; plus accuracy and the majority baseline."""
    total = cm.sum()
    out = {"accuracy": float(np.trace(cm) / total) if total else float("nan"),
           "majority_baseline": float(cm.sum(axis=1).max() / total) if total else float("nan"),
           "n": int(total), "classes": {}}
    for k, name in enumerate(classes):
        tp = cm[k, k]
        predicted, actual = cm[:, k].sum(), cm[k, :].sum()
        precision = tp / predicted if predicted else 0.0
        recall = tp / actual if actual else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out["classes"][name] = {"precision": float(precision), "recall": float(recall),
                                "f1": float(f1), "support": int(actual)}
    return out


def format_report(report: dict) -> str:
    lines = [f"{'class':>24s} {'precision':>9s} {'recall':>7s} {'F1':>6s} {'support':>8s}"]
    for name, r in report["classes"].items():
        lines.append(f"{name:>24s} {r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f} "
                     f"{r['support']:8d}")
    lines.append(f"accuracy {report['accuracy']:.4f} on {report['n']} samples; majority-class "
                 f"baseline {report['majority_baseline']:.4f}")
    return "\n".join(lines)
