"""Training curves, confusion matrices, reliability diagrams and solver comparisons as PNGs."""

from __future__ import annotations

import numpy as np


def subplots(*grid, figsize=None, constrained_layout: bool = False, **kwargs):
    """``pyplot.subplots`` without pyplot: a ``Figure`` that ``savefig`` draws with Agg.

    A program that writes PNGs needs no figure manager or GUI backend, and importing
    pyplot costs about a second in every training process.
    """
    from matplotlib.figure import Figure
    fig = Figure(figsize=figsize, layout="constrained" if constrained_layout else None)
    return fig, fig.subplots(*grid, **kwargs)


def save_figure(fig, path, title: str = "") -> str:
    """Write ``fig``, its title wrapped to the figure's width (about 10 characters an
    inch: a long title on a one-panel figure would run off both edges)."""
    if title:
        import textwrap
        fig.suptitle(textwrap.fill(title, width=max(int(fig.get_figwidth() * 10), 40)))
    fig.savefig(path, dpi=110)
    return str(path)


def finish_figure(fig, axes, path, title: str) -> str:
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend()
    return save_figure(fig, path, title)


def plot_curves(history: list[dict], path, title: str = "", metric: str = "acc",
                metric_label: str = "accuracy", loss_label: str = "cross-entropy") -> str:
    epochs = [h["epoch"] for h in history]
    fig, (ax1, ax2, ax3) = subplots(1, 3, figsize=(13, 3.6), constrained_layout=True)
    ax1.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax1.plot(epochs, [h["val_loss"] for h in history], "s-", label="validation")
    ax1.set(xlabel="epoch", ylabel=loss_label, title="loss")
    ax2.plot(epochs, [h[f"train_{metric}"] for h in history], "o-", label="train")
    ax2.plot(epochs, [h[f"val_{metric}"] for h in history], "s-", label="validation")
    ax2.set(xlabel="epoch", ylabel=metric_label, title=metric_label)
    ax3.plot(epochs, [h["forward_its"] for h in history], "o-", label="forward")
    ax3.plot(epochs, [h["backward_its"] for h in history], "s-", label="backward")
    ax3.set(xlabel="epoch", ylabel="mean iterations per batch", title="solver iterations")
    integer_ticks((ax1, ax2, ax3), epochs)
    return finish_figure(fig, (ax1, ax2, ax3), path, title)


def integer_ticks(axes, epochs) -> None:
    """Whole-number x ticks: epochs are counted, and an axis reading 1.5 (or 0.99 with a
    single epoch, where matplotlib pads the limits by fractions) suggests epochs that never
    ran. Every epoch is a tick up to a dozen; beyond, integer ticks at matplotlib's spacing."""
    from matplotlib.ticker import MaxNLocator
    epochs = sorted(set(int(e) for e in epochs))
    for ax in axes:
        if not epochs:
            continue
        if len(epochs) <= 12:
            ax.set_xticks(epochs)
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlim(epochs[0] - 0.5, epochs[-1] + 0.5)


def plot_confusion(cm: np.ndarray, classes, path, title: str = "") -> str:
    fig, ax = subplots(figsize=(1.6 + 1.3 * len(classes), 1.2 + 1.2 * len(classes)),
                       constrained_layout=True)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.0f}%", ha="center", va="center",
                    color="white" if norm[i, j] > 0.5 else "black", fontsize=9)
    ax.set_xticks(range(len(classes)), classes, rotation=20)
    ax.set_yticks(range(len(classes)), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix (test)")
    fig.savefig(path, dpi=110)
    return str(path)


def plot_reliability(calibration: dict, path, title: str = "") -> str:
    """Accuracy against confidence per bin (a calibrated model sits on the diagonal)."""
    reliability_figure(calibration, title).savefig(path, dpi=110)
    return str(path)


def reliability_figure(calibration: dict, title: str = ""):
    """The reliability diagram as a ``Figure``. Each bar carries its number of samples (a
    bin of 5 is noise, one of 100 is not); the legend sits below the axes, where it cannot
    hide a bar."""
    fig, ax = subplots(figsize=(4.8, 5.2), constrained_layout=True)
    bins = calibration["bins"]
    bars = ax.bar([(b["low"] + b["high"]) / 2 for b in bins], [b["accuracy"] for b in bins],
                  width=[0.9 * (b["high"] - b["low"]) for b in bins], alpha=0.7,
                  label="accuracy in bin (number: samples in bin)")
    ax.bar_label(bars, labels=[str(b["n"]) for b in bins], fontsize=7, padding=1)
    ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "ko", ms=3,
            label="(mean confidence, accuracy)")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="calibrated")
    lo = bins[0]["low"] if bins else 0.0
    ax.set(xlim=(lo, 1), ylim=(0, 1.08), xlabel="confidence (top-class probability)",
           ylabel="accuracy", title=title or f"reliability (ECE {calibration['ece']:.3f})")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", fontsize=8, title_fontsize=8,
               title=f"{sum(b['n'] for b in bins)} samples in {len(bins)} bins")
    return fig


def plot_parity(true, predicted, path, label: str = "target", title: str = "",
                reference: str = "DFT") -> str:
    """Predicted against the reference value (DFT's, or the PDE solver's) for a
    regression's test split."""
    fig, ax = subplots(figsize=(4.6, 4.4), constrained_layout=True)
    ax.scatter(true, predicted, s=6, alpha=0.5)
    lo, hi = float(min(min(true), min(predicted))), float(max(max(true), max(predicted)))
    ax.plot([lo, hi], [lo, hi], "k--", lw=1, label="y = x")
    ax.set(xlabel=f"{reference} {label}", ylabel=f"predicted {label}", title=title or "parity")
    return finish_figure(fig, (ax,), path, "")


def plot_fields(fields, titles, path, title: str = "") -> str:
    """Solution fields on their grids (interior values ``[k, m*m]``), side by side."""
    import numpy as np
    fields = np.asarray(fields)
    m = int(round(np.sqrt(fields.shape[1])))
    fig, axes = subplots(1, len(fields), figsize=(3.2 * len(fields), 3.0),
                         constrained_layout=True, squeeze=False)
    for ax, u, name in zip(axes[0], fields, titles):
        image = ax.imshow(u.reshape(m, m), origin="lower", extent=(0, 1, 0, 1), cmap="viridis")
        fig.colorbar(image, ax=ax, shrink=0.8)
        ax.set(title=name, xlabel="x", ylabel="y")
    return save_figure(fig, path, title)


def plot_comparison(histories: dict, path, title: str = "", metric: str = "acc",
                    metric_label: str = "accuracy") -> str:
    """Validation metric and training loss against cumulative wall time, one line per run."""
    fig, (ax1, ax2) = subplots(1, 2, figsize=(10, 3.8), constrained_layout=True)
    for name, history in histories.items():
        t = [h["elapsed"] for h in history]
        ax1.plot(t, [h["train_loss"] for h in history], "o-", label=name)
        ax2.plot(t, [h[f"val_{metric}"] for h in history], "o-", label=name)
    ax1.set(xlabel="training wall time (s)", ylabel="training loss", title="loss vs time")
    ax2.set(xlabel="training wall time (s)", ylabel=f"validation {metric_label}",
            title=f"{metric_label} vs time")
    return finish_figure(fig, (ax1, ax2), path, title)
