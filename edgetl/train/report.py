"""Run reports: ``metrics.json``, ``curves.png`` and ``confusion.png`` (matplotlib, Agg backend).

Plots are drawn off-screen and written atomically, so a report never needs a display and a Ctrl-C
never leaves a half-written PNG.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.fileio import atomic_path, write_json
from edgetl.lazy import require


def _pyplot() -> Any:
    matplotlib = require("matplotlib", "train", purpose="training plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def write_metrics(run_dir: str | Path, document: dict[str, Any]) -> Path:
    """Write ``metrics.json`` (per-epoch history, best epoch, final per-class figures, skipped files)."""
    return write_json(Path(run_dir) / "metrics.json", document)


def plot_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Loss and top-1 per epoch, train and validation; None when there is no epoch to draw."""
    if not history:
        return None
    plt = _pyplot()
    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.plot(epochs, [h["train_top1"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["val_top1"] for h in history], "o-", label="val")
    ax_acc.set(xlabel="epoch", ylabel="top-1 (%)", title="accuracy", ylim=(0, 100))
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    return _save(fig, plt, path)


def plot_confusion(confusion: list[list[int]], classes: list[str], path: str | Path, title: str = "") -> Path:
    """A confusion matrix (rows: true class, columns: predicted), with counts in the cells."""
    import numpy as np

    plt = _pyplot()
    matrix = np.asarray(confusion)
    n = len(classes)
    side = min(16.0, max(4.0, 0.5 * n + 2))
    fig, ax = plt.subplots(figsize=(side, side))
    ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), classes, rotation=90 if n > 6 else 0)
    ax.set_yticks(range(n), classes)
    ax.set(xlabel="predicted", ylabel="true", title=title or "confusion matrix")
    if n <= 30:
        high = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                if matrix[i, j]:
                    ax.text(j, i, str(matrix[i, j]), ha="center", va="center",
                            color="white" if matrix[i, j] > high else "black", fontsize=8)
    fig.tight_layout()
    return _save(fig, plt, path)


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)
