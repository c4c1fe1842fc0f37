"""Classification metrics from logits: top-1, top-5, per-class accuracy, confusion matrix."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(logits: Any, labels: Any, classes: list[str]) -> dict[str, Any]:
    """Accuracy figures of one evaluation pass.

    Args:
        logits: ``[N, C]`` scores (numpy or torch).
        labels: ``[N]`` true class indices.
        classes: class names, in index order.

    Returns:
        ``{"images", "top1", "top5", "per_class": {name: accuracy or None}, "confusion": [[...]]}``,
        accuracies in percent; ``confusion[true][predicted]`` counts; top-5 uses ``min(5, C)``.
    """
    logits = np.asarray(logits.detach().cpu() if hasattr(logits, "detach") else logits, dtype=np.float64)
    labels = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels, dtype=np.int64)
    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), dtype=np.int64)
    if len(labels) == 0:
        empty = dict.fromkeys(classes)
        return {"images": 0, "top1": 0.0, "top5": 0.0, "per_class": empty, "confusion": confusion.tolist()}
    predicted = logits.argmax(axis=1)
    k = min(5, n_classes)
    topk = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    np.add.at(confusion, (labels, predicted), 1)
    per_class: dict[str, float | None] = {}
    for index, name in enumerate(classes):
        total = confusion[index].sum()
        per_class[name] = round(100.0 * confusion[index, index] / total, 3) if total else None
    return {
        "images": int(len(labels)),
        "top1": round(100.0 * float((predicted == labels).mean()), 3),
        "top5": round(100.0 * float((topk == labels[:, None]).any(axis=1).mean()), 3),
        "per_class": per_class,
        "confusion": confusion.tolist(),
    }
