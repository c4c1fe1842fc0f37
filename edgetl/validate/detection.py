"""Detector validation: both models on the same labelled images, scored by `edgetl.metrics.detection`.

`validate_detection` compares two inference functions on a dataset; `task_metrics` is the ``detect``
task of `edgetl.validate.validate_bundle` (mAP of both models, the delta, box agreement, the gate).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.metrics.detection import box_agreement, detection_metrics, ground_truth_for, map_postprocess


def run_detector(
    infer: Any,
    sources: Sequence[Any],
    spec: Any,
    postprocess: dict[str, Any],
    labels: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[Any]:
    """Preprocess ``sources`` with `edgetl.preprocess`, run ``infer`` (NCHW -> outputs dict, e.g.
    ``Backend.infer``) batch by batch, and post-process to `DetectionResult` in original pixels."""
    from edgetl.preprocess import preprocess_batch
    from edgetl.runtime.detection import postprocess_detections

    results: list[Any] = []
    for start in range(0, len(sources), batch_size):
        batch, infos = preprocess_batch(list(sources[start : start + batch_size]), spec)
        results += postprocess_detections(infer(batch), postprocess, infos, labels)
    return results


def validate_detection(
    reference_infer: Any,
    candidate_infer: Any,
    data: Any,
    spec: Any,
    postprocess: dict[str, Any],
    labels: Sequence[str],
    *,
    limit: int | None = None,
    max_map_drop: float | None = None,
    batch_size: int = 8,
) -> dict[str, Any]:
    """The ``detect`` task of bundle validation: both models on the same labelled images.

    Args:
        reference_infer, candidate_infer: callables NCHW float32 -> outputs dict (``Backend.infer``).
        data: a data.yaml / COCO JSON path (its val split is used) or a `DetectionData`.
        spec: the bundle's `PreprocessSpec` (letterbox).
        postprocess: the manifest's postprocess section.
        labels: the bundle's class names; the dataset's classes must be the same.
        limit: use at most this many images (the first ones, in dataset order).
        max_map_drop: gate, in mAP points; None: report only.

    Returns:
        `detection_metrics` plus ``images`` and ``data``.
    """
    from edgetl.data.detection import DetectionData, load_detection_data

    dataset = data if isinstance(data, DetectionData) else load_detection_data(data)
    if list(dataset.classes) != list(labels):
        raise BadInputError(
            f"dataset classes {list(dataset.classes)} differ from the bundle's labels {list(labels)}",
            hint="validate on data with the classes the model was trained on, in the same order",
        )
    samples = list(dataset.val or dataset.train)
    if limit is not None:
        samples = samples[: int(limit)]
    if not samples:
        raise BadInputError("no images to validate the detector on")
    paths = [s.path for s in samples]
    reference = run_detector(reference_infer, paths, spec, postprocess, labels, batch_size=batch_size)
    candidate = run_detector(candidate_infer, paths, spec, postprocess, labels, batch_size=batch_size)
    report = detection_metrics(reference, candidate, samples, labels, max_map_drop=max_map_drop)
    report["images"] = len(samples)
    report["data"] = str(dataset.root) if dataset.root else None
    return report


def task_metrics(
    bundle: Any,
    decoded: Any,
    ref_out: dict[str, np.ndarray],
    cand_out: dict[str, np.ndarray],
    *,
    max_top1_drop: float | None = None,
    min_agreement: float | None = None,
    max_map_drop: float = 1.0,
    data: str | Path | None = None,
    **_: Any,
) -> dict[str, Any]:
    """The ``detect`` task of `edgetl.validate.validate_bundle`: mAP of both models, delta, box agreement, gate.

    mAP is scored with evaluation thresholds (`map_postprocess`, the numbers `edgetl evaluate` gives);
    box agreement compares the detections deployment would return (the bundle's thresholds).

    Args:
        bundle: the `Bundle` (labels, postprocess, recorded dataset).
        decoded: the preprocessed images (`edgetl.data.imagesets.Decoded`, with letterbox infos).
        ref_out, cand_out: raw outputs of each model on ``decoded.batch``.
        max_top1_drop, min_agreement: the classifier gates; not used for detectors.
        max_map_drop: gate: largest allowed drop of mAP@0.5:0.95, in points.
        data: the dataset the images came from (default: the one the bundle records).

    Returns:
        ``{"metrics": {"reference", "candidate", "delta"}, "agreement", "checks"}``; deltas in points.

    Raises:
        BadInputError: no labelled dataset for the images, or no ground-truth boxes at all.
    """
    from edgetl.runtime.detection import postprocess_detections
    from edgetl.validate.api import _check

    source = data or bundle.dataset
    if not source:
        raise BadInputError("no ground truth: the bundle records no dataset", hint="pass --data data.yaml")
    labels = list(bundle.labels)
    truth = ground_truth_for(decoded.paths, source, labels)
    post = dict(bundle.manifest.get("postprocess") or {})
    scoring = map_postprocess(post)
    report = detection_metrics(postprocess_detections(ref_out, scoring, decoded.infos, labels),
                               postprocess_detections(cand_out, scoring, decoded.infos, labels),
                               truth, labels, max_map_drop=max_map_drop)
    drop = report["gate"]["map_drop"]
    if drop is not None:
        drop = drop + 0.0  # no "-0" in reports when the two models agree
    if drop is None:
        raise BadInputError(f"the {len(truth)} validation images have no ground-truth boxes; mAP is undefined",
                            hint="validate on labelled images (--data data.yaml)")
    agreement = box_agreement(postprocess_detections(ref_out, post, decoded.infos, labels),
                              postprocess_detections(cand_out, post, decoded.infos, labels))
    agreement["score_threshold"] = float(post.get("score_threshold", 0.25))
    metrics = {
        "reference": report["reference"],
        "candidate": report["candidate"],
        "delta": {"map50": report["deltas"]["map50"], "map": report["deltas"]["map"], "map_drop_points": drop},
    }
    return {"metrics": metrics, "agreement": agreement, "checks": [_check("map_drop_points", drop, max_map_drop, "<=")]}


