"""The evaluate stage's figures (matplotlib, headless): ROC curves, confusion matrices, training
curves, reliability diagram and Grad-CAM panels. Each function takes plain tables and returns a
``Figure``; saving is the catalog's job."""

from __future__ import annotations

import base64
import io
from collections.abc import Mapping, Sequence
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn.metrics import roc_curve  # noqa: E402

from osteo_pipeline.evaluation.models import proba_columns  # noqa: E402
from osteo_pipeline.training.metrics import EPOCH_METRICS  # noqa: E402


def _models(predictions: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(predictions["model"]))


def _message(fig: Figure, ax: plt.Axes, text: str) -> Figure:
    ax.axis("off")
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True)
    return fig


def roc_figure(predictions: pd.DataFrame, class_names: Sequence[str], aucs: Mapping[str, float]) -> Figure:
    """All models' ROC curves on one plot (binary: osteoporosis vs normal); three classes: one
    panel per class, one-vs-rest. ``aucs`` labels each model's curve (binary) or the panel title
    (macro AUC)."""
    classes = list(class_names)
    targets = [classes[-1]] if len(classes) == 2 else classes
    fig, axes = plt.subplots(1, len(targets), figsize=(5.2 * len(targets), 4.8), squeeze=False)
    for ax, target in zip(axes[0], targets, strict=True):
        for model in _models(predictions):
            rows = predictions[predictions["model"] == model]
            truth = (rows["label"] == target).to_numpy()
            if truth.all() or not truth.any():
                continue
            fpr, tpr, _ = roc_curve(truth, rows[f"p_{target}"].to_numpy())
            label = f"{model} (AUC {aucs.get(model, float('nan')):.3f})" if len(classes) == 2 else model
            ax.plot(fpr, tpr, lw=1.6, label=label)
        ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1)
        title = f"ROC: {target} vs rest" if len(classes) > 2 else f"ROC: {classes[-1]} vs {classes[0]}"
        ax.set(title=title, xlabel="false positive rate (1 - specificity)", ylabel="true positive rate (sensitivity)",
               xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    n = predictions.groupby("model").size().max() if len(predictions) else 0
    fig.suptitle(f"Held-out test partition, n={n} scans")
    fig.tight_layout()
    return fig


def confusion_figure(confusions: Mapping[str, Sequence[Sequence[int]]], class_names: Sequence[str]) -> Figure:
    """Per model (columns): counts (top row) and row-normalised shares (bottom row); rows of each
    matrix are the true class, columns the predicted one."""
    models = list(confusions)
    fig, axes = plt.subplots(2, max(len(models), 1), figsize=(3.1 * max(len(models), 1), 6.0), squeeze=False)
    if not models:
        return _message(fig, axes[0, 0], "no model evaluated")
    short = list(class_names)
    for j, model in enumerate(models):
        cm = np.asarray(confusions[model], dtype=float)
        shares = cm / np.where(cm.sum(axis=1, keepdims=True) == 0, 1, cm.sum(axis=1, keepdims=True))
        for i, (matrix, fmt, title) in enumerate(((cm, "{:.0f}", "counts"), (shares, "{:.2f}", "row-normalised"))):
            ax = axes[i, j]
            ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
            for (r, c), v in np.ndenumerate(matrix):
                ax.text(c, r, fmt.format(v), ha="center", va="center", color="white" if shares[r, c] > 0.6 else "black")
            ax.set(xticks=range(len(short)), yticks=range(len(short)), title=f"{model}\n{title}" if i == 0 else title)
            ax.set_xticklabels(short, fontsize=7, rotation=20)
            ax.set_yticklabels(short, fontsize=7, rotation=70, va="center")
            ax.set_xlabel("predicted")
            if j == 0:
                ax.set_ylabel("true")
    fig.tight_layout()
    return fig


def training_curves_figure(histories: Mapping[str, Mapping[str, Sequence[float]] | None]) -> Figure:
    """Final-fit training vs validation curves per model (rows: models; columns: loss, accuracy,
    Keras' micro AUC).
    Models without epochs (classical) or without a recorded history get a one-line note."""
    models = list(histories)
    metrics = EPOCH_METRICS
    fig, axes = plt.subplots(max(len(models), 1), 3, figsize=(12, 2.5 * max(len(models), 1)), squeeze=False)
    if not models:
        return _message(fig, axes[0, 0], "no model evaluated")
    for i, model in enumerate(models):
        history = histories[model] or {}
        if not history.get("loss"):
            for ax in axes[i]:
                ax.axis("off")
            axes[i, 1].text(0.5, 0.5, f"{model}: no per-epoch history (not trained by epochs, or not recorded)",
                            ha="center", va="center")
            continue
        for ax, name in zip(axes[i], metrics, strict=True):
            if name not in history:
                ax.axis("off")
                continue
            epochs = np.arange(1, len(history[name]) + 1)
            ax.plot(epochs, history[name], label="training")
            if history.get(f"val_{name}"):
                ax.plot(np.arange(1, len(history[f"val_{name}"]) + 1), history[f"val_{name}"], label="validation")
            ax.set(title=f"{model}: {name}", xlabel="epoch")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.suptitle("Final fit: training vs early-stopping validation (per epoch)")
    fig.tight_layout()
    return fig


def calibration_figure(predictions: pd.DataFrame, class_names: Sequence[str], n_bins: int = 5) -> Figure:
    """Reliability diagram: predicted probability (binary: of osteoporosis; three classes: of the
    predicted class, i.e. confidence) against the observed frequency, equal-width bins; with the
    number of scans per bin below."""
    classes = list(class_names)
    fig, (ax, counts) = plt.subplots(2, 1, figsize=(5.6, 6.4), height_ratios=(3, 1), sharex=True)
    edges = np.linspace(0, 1, n_bins + 1)
    centres = (edges[:-1] + edges[1:]) / 2
    width = 0.8 / max(len(_models(predictions)), 1) / n_bins
    for m, model in enumerate(_models(predictions)):
        rows = predictions[predictions["model"] == model]
        proba = rows[proba_columns(classes)].to_numpy()
        if len(classes) == 2:
            score, hit = proba[:, -1], (rows["label"] == classes[-1]).to_numpy()
        else:
            score, hit = proba.max(axis=1), rows["correct"].to_numpy(dtype=bool)
        idx = np.clip(np.digitize(score, edges[1:-1]), 0, n_bins - 1)
        n = np.bincount(idx, minlength=n_bins)
        mean_p = np.bincount(idx, weights=score, minlength=n_bins) / np.maximum(n, 1)
        freq = np.bincount(idx, weights=hit.astype(float), minlength=n_bins) / np.maximum(n, 1)
        ax.plot(mean_p[n > 0], freq[n > 0], marker="o", lw=1.3, label=model)
        counts.bar(centres + (m - len(_models(predictions)) / 2) * width, n, width=width, label=model)
    ax.plot([0, 1], [0, 1], ls=":", c="grey", lw=1, label="perfectly calibrated")
    what = f"P({classes[-1]})" if len(classes) == 2 else "confidence (probability of the predicted class)"
    observed = f"observed share of {classes[-1]}" if len(classes) == 2 else "observed accuracy"
    ax.set(title=f"Reliability diagram ({n_bins} bins)", ylabel=observed, xlim=(0, 1), ylim=(-0.02, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    counts.set(xlabel=what, ylabel="scans")
    fig.tight_layout()
    return fig


def gradcam_figure(panels: Sequence[Mapping[str, Any]]) -> Figure:
    """Rows: models; columns: the chosen test scans (ROI image with the heatmap overlaid), titled
    with the true and predicted class and whether the prediction is right."""
    models = list(dict.fromkeys(p["model"] for p in panels))
    n_cols = max((sum(p["model"] == m for p in panels) for m in models), default=1)
    fig, axes = plt.subplots(max(len(models), 1), n_cols, figsize=(max(2.3 * n_cols, 6.0), 2.7 * max(len(models), 1)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    if not panels:
        return _message(fig, axes[0, 0], "no Grad-CAM: no Keras image model among the evaluated models")
    for i, model in enumerate(models):
        for j, panel in enumerate(p for p in panels if p["model"] == model):
            ax = axes[i, j]
            ax.imshow(panel["overlay"])
            mark = "right" if panel["correct"] else "WRONG"
            ax.set_title(f"{model} ({panel['layer']})\ntrue {panel['label']}\npred {panel['prediction']} "
                         f"{panel['probability']:.2f} ({mark})", fontsize=7, color="black" if panel["correct"] else "crimson")
    fig.suptitle("Grad-CAM of the predicted class over the ROI (test scans)")
    fig.tight_layout()
    return fig


def png_base64(fig: Figure, dpi: int = 100) -> str:
    """The figure as a base64 PNG (in memory), for a self-contained HTML report."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")
