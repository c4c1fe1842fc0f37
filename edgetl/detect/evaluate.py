"""Detector evaluation: mAP@0.5 and mAP@0.5:0.95 (pycocotools) and per-class AP.

The evaluation path is the deployment path: images go through `edgetl.preprocess` (letterbox), the
model's decoded ``boxes``/``scores`` through the runtime's numpy post-processing
(`edgetl.runtime.detection.postprocess_detections`), and boxes are scored in original-image pixels
against the dataset's labels. Training validation calls the same `evaluate_model`. The scoring itself
(thresholds, COCO mAP) is `edgetl.metrics.detection`, shared with validation and the INT8 budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.metrics.detection import (
    EVAL_SCORE_THRESHOLD,
    coco_map,
    eval_postprocess,
)
from edgetl.preprocess import PreprocessSpec, preprocess_batch

torch = lazy_import("torch", "train", purpose="evaluating a detector checkpoint")

class PreparedImages:
    """Preprocessed evaluation images kept in memory, so per-epoch validation decodes each file once.

    Args:
        paths: image files.
        spec: the letterbox preprocessing.
        batch_size: images per forward pass.
    """

    def __init__(self, paths: Sequence[str | Path], spec: PreprocessSpec, batch_size: int = 16) -> None:
        self.batches: list[tuple[np.ndarray, list[Any]]] = []
        for start in range(0, len(paths), batch_size):
            self.batches.append(preprocess_batch(list(paths[start:start + batch_size]), spec))

    def __iter__(self):
        return iter(self.batches)


def run_model(model: Any, images: PreparedImages, postprocess: dict[str, Any], labels: list[str],
              device: Any = "cpu") -> list[Any]:
    """Predict every prepared image with a PyTorch detector; returns runtime `DetectionResult`s."""
    from edgetl.runtime.detection import postprocess_detections

    model.eval()
    results: list[Any] = []
    with torch.inference_mode():
        for batch, infos in images:
            boxes, scores = model(torch.from_numpy(batch).to(device))
            outputs = {"boxes": boxes.float().cpu().numpy(), "scores": scores.float().cpu().numpy()}
            results.extend(postprocess_detections(outputs, postprocess, infos, labels))
    return results


def evaluate_model(model: Any, samples: Sequence[Any], classes: list[str], spec: PreprocessSpec, *,
                   device: Any = "cpu", batch_size: int = 16, images: PreparedImages | None = None,
                   score_threshold: float = EVAL_SCORE_THRESHOLD) -> dict[str, Any]:
    """mAP of a PyTorch detector on labelled samples.

    Args:
        model: a `YoloDetector` (any module returning ``(boxes, scores)``).
        samples: `edgetl.data.detection.DetSample` list (boxes in original pixels).
        classes: class names.
        spec: the letterbox preprocessing the model was trained with.
        device: torch device of the model.
        batch_size: images per forward pass.
        images: the samples already prepared (training validation reuses them every epoch).
        score_threshold: lowest score kept before NMS.

    Returns:
        ``{"map50", "map", "per_class": {name: AP@0.5:0.95}, "images", "detections"}``.
    """
    if images is None:
        images = PreparedImages([s.path for s in samples], spec, batch_size)
    post = eval_postprocess(model.postprocess_spec(), score_threshold=score_threshold)
    predictions = run_model(model, images, post, classes, device)
    metrics = dict(coco_map(predictions, list(samples), classes))
    metrics["images"] = len(samples)
    metrics["detections"] = int(sum(len(p.scores) for p in predictions))
    return metrics
