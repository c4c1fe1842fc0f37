"""Accuracy-budget mode: keep the most INT8-sensitive layers in float until the model is within budget.

1. Measure each layer's sensitivity: quantize that layer alone (calibrated ranges from the cache) and
   compare its outputs with FP32 on a validation sample.
2. Starting from the fully quantized model, keep layers in float, most sensitive first, re-measuring
   the whole model after each, until the drop is within ``max_drop`` points and agreement reaches
   ``min_agreement``.

What "drop", "agreement" and "sensitivity" mean is the task's scorer: `score` for classifiers (top-1
drop against labels, or disagreement with FP32 without labels; top-1 agreement; KL of the softmax),
`edgetl.validate.detection.budget_scorer` for detectors (mAP@0.5:0.95 drop; box agreement; output
error). The search itself is the same for every task.

Every step is recorded so the report can say which layers were kept and what each bought.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.quantize.int8 import Int8Settings, quantize_file
from edgetl.validate.metrics import classification_agreement, topk_accuracy

log = logging.getLogger(__name__)


@dataclass
class Sample:
    """The validation sample of budget mode.

    Attributes:
        batch: preprocessed inputs.
        labels: class labels (classifiers), or None.
        reference: the FP32 model's output on ``batch``: the logits, or (detectors) the outputs by name.
        source: where the images came from.
        index: position of each image in the full sample, so a scorer can find per-image data (ground
            truth) after `subset`.
    """

    batch: np.ndarray
    labels: np.ndarray | None
    reference: Any
    source: str
    index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def __post_init__(self) -> None:
        if len(self.index) != len(self.batch):
            self.index = np.arange(len(self.batch))

    def subset(self, pick: np.ndarray) -> Sample:
        """The images at positions ``pick``."""
        ref = ({k: v[pick] for k, v in self.reference.items()} if isinstance(self.reference, dict)
               else self.reference[pick])
        return Sample(self.batch[pick], None if self.labels is None else self.labels[pick], ref, self.source,
                      self.index[pick])


#: scorer(candidate_output, sample) -> {"drop" (points), "agreement" (0-1), "sensitivity" (higher: worse), ...}
Scorer = Callable[[Any, Sample], dict[str, Any]]


@dataclass
class BudgetOutcome:
    """Result of the budget search.

    Attributes:
        kept: layers kept in float, in the order they were kept.
        within_budget: whether the final model meets the budget.
        final: metrics of the final candidate.
        steps: metrics after each kept layer (step 0: fully quantized).
        sensitivity: per-layer sensitivity, most sensitive first.
    """

    kept: list[str]
    within_budget: bool
    final: dict[str, Any]
    steps: list[dict[str, Any]] = field(default_factory=list)
    sensitivity: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"kept_layers": self.kept, "within_budget": self.within_budget, "final": self.final,
                "steps": self.steps, "sensitivity": self.sensitivity}


def score(logits: np.ndarray, sample: Sample) -> dict[str, Any]:
    """The classifier scorer: top-1 (when labelled), its drop in points, top-1 agreement and KL against FP32."""
    agree = classification_agreement(sample.reference, logits)
    out: dict[str, Any] = {"top1_agreement": agree["top1_agreement"], "kl": agree["kl_mean"],
                           "cosine": agree["cosine_mean"], "agreement": agree["top1_agreement"],
                           "sensitivity": agree["kl_mean"]}
    if sample.labels is not None:
        ref_top1 = topk_accuracy(sample.reference, sample.labels, 1)
        top1 = topk_accuracy(logits, sample.labels, 1)
        out.update({"top1": top1, "reference_top1": ref_top1, "drop": 100.0 * (ref_top1 - top1)})
    else:  # no labels: disagreement with FP32 bounds the possible drop
        out["drop"] = 100.0 * (1.0 - agree["top1_agreement"])
    return out


def within(metrics: dict[str, Any], max_drop: float, min_agreement: float | None) -> bool:
    ok = metrics["drop"] <= max_drop + 1e-9
    if min_agreement is not None:
        ok = ok and metrics["agreement"] >= min_agreement - 1e-9
    return ok


def search(
    src: Path,
    layers: list[str],
    weights: dict[str, int],
    settings: Int8Settings,
    cache_path: Path,
    sample: Sample,
    run: Callable[[Path, np.ndarray], Any],
    *,
    max_drop: float,
    min_agreement: float | None,
    full_metrics: dict[str, Any],
    max_kept: int | None = None,
    probe_images: int = 64,
    progress: bool = False,
    scorer: Scorer = score,
) -> tuple[BudgetOutcome, Path | None]:
    """Run the sensitivity analysis and the greedy keep-in-float search.

    Args:
        src: the FP32 model.
        layers: names of quantizable layers.
        weights: parameter count per layer (for the size cost of keeping it in float).
        settings: INT8 settings (calibration ranges are read from ``cache_path``).
        sample: validation sample with the reference outputs.
        run: ``run(model_path, batch) -> output`` through the runtime backend (what ``scorer`` takes).
        full_metrics: metrics of the fully quantized model (step 0).
        max_kept: give up after keeping this many layers (default: a quarter of them).
        probe_images: the per-layer probes use an evenly strided subset of this many images (the ranking
            needs far fewer than the budget decision, which always uses the whole sample).
        scorer: the task's scorer (`score` for classifiers).

    Returns:
        The outcome, and the path of the final model in a temporary directory the caller must move
        (``None`` when no layer had to be kept).
    """
    steps = [{"kept": 0, "layer": None, **full_metrics}]
    if within(full_metrics, max_drop, min_agreement):
        return BudgetOutcome([], True, full_metrics, steps, []), None
    tmp = Path(tempfile.mkdtemp(prefix="edgetl-budget-"))
    sensitivity = []
    iterator = layers
    if progress:
        from tqdm import tqdm

        iterator = tqdm(layers, desc="layer sensitivity", unit="layer", leave=False)
    probe = tmp / "probe.onnx"
    pick = np.unique(np.linspace(0, len(sample.batch) - 1, min(probe_images, len(sample.batch))).astype(int))
    small = sample.subset(pick)
    for name in iterator:
        quantize_file(src, probe, settings, reader=None, cache_path=cache_path, nodes_to_quantize=[name])
        metrics = scorer(run(probe, small.batch), small)
        sensitivity.append({"layer": name, "sensitivity": metrics["sensitivity"], "agreement": metrics["agreement"],
                            "params": weights.get(name, 0)})
    sensitivity.sort(key=lambda s: (-s["sensitivity"], s["agreement"]))
    limit = max_kept if max_kept is not None else max(1, len(layers) // 4)
    kept: list[str] = []
    metrics = full_metrics
    candidate = tmp / "candidate.onnx"
    for entry in sensitivity[:limit]:
        kept.append(entry["layer"])
        quantize_file(src, candidate, settings, reader=None, cache_path=cache_path, nodes_to_exclude=list(kept))
        previous = metrics
        metrics = scorer(run(candidate, sample.batch), sample)
        steps.append({"kept": len(kept), "layer": entry["layer"], **metrics,
                      "gain_points": previous["drop"] - metrics["drop"],
                      "gain_agreement": metrics["agreement"] - previous["agreement"],
                      "float_bytes_added": 3 * int(entry["params"])})
        log.info("kept %s in float: drop %.2f points, agreement %.4f", entry["layer"], metrics["drop"],
                 metrics["agreement"])
        if within(metrics, max_drop, min_agreement):
            break
    probe.unlink(missing_ok=True)
    ok = within(metrics, max_drop, min_agreement)
    return BudgetOutcome(kept, ok, metrics, steps, sensitivity), candidate
