"""Classification metrics and output agreement between a reference and a candidate (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Fraction of rows whose label is among the ``k`` largest logits (``k`` capped at the class count)."""
    if len(labels) == 0:
        return float("nan")
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float(np.mean(np.any(top == np.asarray(labels)[:, None], axis=1)))


def classification_agreement(reference: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    """How closely the candidate's logits follow the reference's.

    Returns:
        top1_agreement: fraction of images with the same arg-max;
        cosine_mean / cosine_min: cosine similarity of the logit vectors;
        kl_mean / kl_max: KL(softmax(reference) || softmax(candidate)) in nats;
        max_abs_diff / mean_abs_diff: of the raw logits.
    """
    ref = reference.astype(np.float64).reshape(len(reference), -1)
    cand = candidate.astype(np.float64).reshape(len(candidate), -1)
    if len(ref) == 0:
        return {k: float("nan") for k in ("top1_agreement", "cosine_mean", "cosine_min", "kl_mean", "kl_max",
                                          "max_abs_diff", "mean_abs_diff")}
    norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(cand, axis=1)
    cosine = np.sum(ref * cand, axis=1) / np.maximum(norms, 1e-12)
    p, q = softmax(ref), softmax(cand)
    kl = np.sum(p * (np.log(np.maximum(p, 1e-12)) - np.log(np.maximum(q, 1e-12))), axis=1)
    diff = np.abs(ref - cand)
    return {
        "top1_agreement": float(np.mean(ref.argmax(1) == cand.argmax(1))),
        "cosine_mean": float(cosine.mean()),
        "cosine_min": float(cosine.min()),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


def latency_stats(seconds: list[float]) -> dict[str, Any]:
    ms = np.asarray(seconds, dtype=np.float64) * 1000.0
    if ms.size == 0:
        return {"runs": 0}
    return {"runs": int(ms.size), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean())}
