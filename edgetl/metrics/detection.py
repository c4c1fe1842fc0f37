"""Detection metrics: COCO mAP (pycocotools, the reference implementation) and box-level agreement.

``coco_map`` scores predictions against ground truth; ``box_agreement`` compares a candidate model's
detections with the reference model's on the same images (does the INT8 model find the same boxes?),
and `detection_metrics` puts both together with the ``max_map_drop`` gate. Everything takes plain
objects with ``boxes`` (xyxy pixels), ``labels`` and (predictions) ``scores``:
`edgetl.runtime.detection.DetectionResult` and `edgetl.data.detection.DetSample` both fit.

A layer below every stage that scores detectors: training validation and `edgetl evaluate`
(`edgetl.detect.evaluate`), the INT8 accuracy budget (`budget_scorer`), compile's engine check
(`box_agreement`) and bundle validation (`edgetl.validate.detection`) all score the same way.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.detection import load_detection_data
from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.runtime.detection import box_iou, postprocess_detections

coco_mod = lazy_import("pycocotools.coco", "train", purpose="mAP")
eval_mod = lazy_import("pycocotools.cocoeval", "train", purpose="mAP")

#: maxDets used for the headline numbers (COCO's default of 100 detections per image).
MAX_DETS = 100

#: Scoring settings of mAP evaluation: a low threshold, as COCO evaluation expects.
EVAL_SCORE_THRESHOLD = 0.001
EVAL_IOU_THRESHOLD = 0.6
EVAL_MAX_DETECTIONS = 100  # COCO scores at most 100 detections per image


def eval_postprocess(postprocess: dict[str, Any], *, score_threshold: float = EVAL_SCORE_THRESHOLD,
                     iou_threshold: float = EVAL_IOU_THRESHOLD,
                     max_detections: int = EVAL_MAX_DETECTIONS) -> dict[str, Any]:
    """The deployment post-processing with mAP-evaluation thresholds (the deployed ones stay as they are)."""
    return {**postprocess, "outputs": "boxes_scores", "score_threshold": score_threshold,
            "iou_threshold": iou_threshold, "max_detections": max_detections}


def _coco_doc(items: Sequence[Any], num_classes: int, with_scores: bool) -> dict[str, Any]:
    images, annotations = [], []
    for index, item in enumerate(items):
        images.append(
            {
                "id": index + 1,
                "width": int(getattr(item, "width", 0) or 0),
                "height": int(getattr(item, "height", 0) or 0),
            }
        )
        boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
        labels = np.asarray(item.labels, dtype=np.int64).reshape(-1)
        scores = np.asarray(item.scores, dtype=np.float64).reshape(-1) if with_scores else None
        for j, (box, label) in enumerate(zip(boxes, labels)):
            if not 0 <= label < num_classes:
                raise BadInputError(f"image {index}: label {label} is outside the {num_classes} classes")
            w, h = box[2] - box[0], box[3] - box[1]
            ann = {
                "id": len(annotations) + 1,
                "image_id": index + 1,
                "category_id": int(label) + 1,
                "bbox": [float(box[0]), float(box[1]), float(w), float(h)],
                "area": float(max(w, 0.0) * max(h, 0.0)),
                "iscrowd": 0,
            }
            if scores is not None:
                ann["score"] = float(scores[j])
            annotations.append(ann)
    categories = [{"id": i + 1, "name": str(i)} for i in range(num_classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def _coco_api(doc: dict[str, Any]) -> Any:
    api = coco_mod.COCO()
    api.dataset = doc
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress on stdout
        api.createIndex()
    return api


def coco_map(predictions: Sequence[Any], ground_truth: Sequence[Any], classes: Sequence[str]) -> dict[str, Any]:
    """mAP@0.5 and mAP@0.5:0.95 (COCO, area "all", 100 detections per image) with per-class AP.

    Args:
        predictions: per image, an object with ``boxes`` (K, 4) xyxy, ``scores`` (K,), ``labels`` (K,).
        ground_truth: per image (same order), an object with ``boxes`` and ``labels``.
        classes: class names; labels index them.

    Returns:
        ``{"map50", "map", "per_class": {name: {"ap50", "ap", "instances"}}, "images", "instances"}``.
        A class without ground-truth boxes has ``None`` APs and is left out of the means (COCO's rule);
        with no ground truth at all both means are ``None``.
    """
    if len(predictions) != len(ground_truth):
        raise BadInputError(f"{len(predictions)} prediction sets for {len(ground_truth)} ground-truth images")
    num_classes = len(classes)
    gt_doc = _coco_doc(ground_truth, num_classes, with_scores=False)
    dt_doc = _coco_doc(predictions, num_classes, with_scores=True)
    instances = np.bincount([a["category_id"] - 1 for a in gt_doc["annotations"]], minlength=num_classes)
    result: dict[str, Any] = {"map50": None, "map": None, "per_class": {}, "images": len(ground_truth)}
    result["instances"] = int(instances.sum())
    if not gt_doc["annotations"]:
        result["per_class"] = {name: {"ap50": None, "ap": None, "instances": 0} for name in classes}
        return result
    gt, dt = _coco_api(gt_doc), _coco_api(dt_doc)
    evaluator = eval_mod.COCOeval(gt, dt, iouType="bbox")
    evaluator.params.maxDets = [1, 10, MAX_DETS]
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    precision = evaluator.eval["precision"]  # [iou thresholds, recall points, classes, areas, maxDets]
    result["map"] = float(evaluator.stats[0])
    result["map50"] = float(evaluator.stats[1])
    for k, name in enumerate(classes):
        if instances[k] == 0:
            result["per_class"][name] = {"ap50": None, "ap": None, "instances": 0}
            continue
        p_all = precision[:, :, k, 0, -1]
        p50 = precision[0, :, k, 0, -1]
        result["per_class"][name] = {
            "ap50": float(p50[p50 > -1].mean()) if (p50 > -1).any() else 0.0,
            "ap": float(p_all[p_all > -1].mean()) if (p_all > -1).any() else 0.0,
            "instances": int(instances[k]),
        }
    return result


def box_agreement(
    reference_results: Sequence[Any], candidate_results: Sequence[Any], iou: float = 0.5
) -> dict[str, Any]:
    """How closely a candidate model's detections follow the reference model's, image by image.

    Reference boxes are matched, best score first, to the unmatched candidate box of the same class
    with the highest IoU (at least ``iou``).

    Args:
        reference_results, candidate_results: per image, objects with ``boxes``, ``scores``, ``labels``.
        iou: minimum IoU for a match.

    Returns:
        ``matched_iou_mean`` (mean IoU of matched pairs; None without matches), ``score_abs_diff_mean``
        (mean |score difference| of matched pairs; None without matches), ``recall_of_reference``
        (matched / reference boxes; 1.0 when the reference has none), ``precision_vs_reference``
        (matched / candidate boxes; 1.0 when the candidate has none), and the counts.
    """
    if len(reference_results) != len(candidate_results):
        raise BadInputError(f"{len(reference_results)} reference images but {len(candidate_results)} candidate images")
    ious: list[float] = []
    diffs: list[float] = []
    n_ref = n_cand = 0
    for ref, cand in zip(reference_results, candidate_results):
        r_boxes, r_scores, r_labels = _arrays(ref)
        c_boxes, c_scores, c_labels = _arrays(cand)
        n_ref += len(r_labels)
        n_cand += len(c_labels)
        if not len(r_labels) or not len(c_labels):
            continue
        overlap = box_iou(r_boxes, c_boxes)
        overlap[r_labels[:, None] != c_labels[None, :]] = -1.0
        used = np.zeros(len(c_labels), dtype=bool)
        for i in np.argsort(-r_scores, kind="stable"):
            row = np.where(used, -1.0, overlap[i])
            j = int(row.argmax())
            if row[j] >= iou:
                used[j] = True
                ious.append(float(row[j]))
                diffs.append(abs(float(r_scores[i]) - float(c_scores[j])))
    matched = len(ious)
    return {
        "matched_iou_mean": float(np.mean(ious)) if ious else None,
        "score_abs_diff_mean": float(np.mean(diffs)) if diffs else None,
        "recall_of_reference": matched / n_ref if n_ref else 1.0,
        "precision_vs_reference": matched / n_cand if n_cand else 1.0,
        "reference_boxes": n_ref,
        "candidate_boxes": n_cand,
        "matched": matched,
        "iou": iou,
    }


def _arrays(item: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.asarray(item.boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(item.labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(getattr(item, "scores", np.ones(len(labels))), dtype=np.float64).reshape(-1)
    return boxes, scores, labels


def detection_metrics(
    reference: Sequence[Any],
    candidate: Sequence[Any],
    ground_truth: Sequence[Any],
    classes: Sequence[str],
    *,
    max_map_drop: float | None = None,
    iou: float = 0.5,
) -> dict[str, Any]:
    """mAP of both models on the same images, the delta, box agreement, and the ``max_map_drop`` gate.

    Args:
        reference, candidate: per image detection results (original pixels) of the two models.
        ground_truth: per image `DetSample`-like objects (``boxes``, ``labels``).
        classes: class names.
        max_map_drop: largest allowed drop of mAP@0.5:0.95 in points (0-100 scale); None: no gate.
        iou: IoU for box agreement matching.

    Returns:
        ``{"reference": coco_map, "candidate": coco_map, "deltas": {"map", "map50"} (candidate - reference,
        in points), "agreement": box_agreement, "gate": {"max_map_drop", "map_drop", "passed", "reasons"}}``.
    """
    ref_map = coco_map(reference, ground_truth, classes)
    cand_map = coco_map(candidate, ground_truth, classes)
    deltas = {
        key: (cand_map[key] - ref_map[key]) * 100.0 if ref_map[key] is not None else None for key in ("map", "map50")
    }
    drop = -deltas["map"] if deltas["map"] is not None else None
    reasons = []
    if max_map_drop is not None and drop is not None and drop > max_map_drop:
        reasons.append(f"mAP@0.5:0.95 dropped {drop:.2f} points (> {max_map_drop:g} allowed)")
    return {
        "reference": ref_map,
        "candidate": cand_map,
        "deltas": deltas,
        "agreement": box_agreement(reference, candidate, iou=iou),
        "gate": {"max_map_drop": max_map_drop, "map_drop": drop, "passed": not reasons, "reasons": reasons},
    }


def ground_truth_for(paths: Sequence[str | Path], data: str | Path, labels: Sequence[str]) -> list[Any]:
    """The labelled `DetSample` of each image in ``paths`` (same order), read from the dataset ``data``.

    Args:
        paths: image files, as `edgetl.data.imagesets.find_images` listed them from ``data``.
        data: a data.yaml / COCO JSON (or a folder holding one).
        labels: the model's class names; the dataset's classes must be the same, in the same order.

    Raises:
        BadInputError: the dataset has no labels, other classes, or no labels for some of ``paths``.
    """
    dataset = load_detection_data(data)
    if list(dataset.classes) != list(labels):
        raise BadInputError(
            f"{data}: dataset classes {list(dataset.classes)} differ from the model's labels {list(labels)}",
            hint="validate on data with the classes the model was trained on, in the same order",
        )
    by_path = {Path(s.path).resolve(): s for s in list(dataset.train) + list(dataset.val)}
    missing = [str(p) for p in paths if Path(p).resolve() not in by_path]
    if missing:
        raise BadInputError(
            f"{len(missing)} image(s) have no labels in {data} (first: {missing[0]})",
            hint="detector validation needs labelled images: pass --data with a data.yaml or COCO JSON",
        )
    return [by_path[Path(p).resolve()] for p in paths]


def map_postprocess(postprocess: dict[str, Any]) -> dict[str, Any]:
    """The bundle's post-processing with mAP-evaluation thresholds, as `edgetl evaluate` scores checkpoints.

    A graph with NMS inside keeps its layout (its own thresholds already applied in the graph); only the
    host-side score threshold is lowered.
    """
    if postprocess.get("outputs", "boxes_scores") == "nms":
        return {**postprocess, "score_threshold": EVAL_SCORE_THRESHOLD}
    return eval_postprocess(postprocess)


def output_error(reference: dict[str, np.ndarray], candidate: dict[str, np.ndarray]) -> float:
    """Sum over outputs of mean |candidate - reference| / mean |reference|: a smooth distance between two
    detectors' raw outputs, for ranking layers when mAP on a small sample moves in coarse steps."""
    total = 0.0
    for name, ref in reference.items():
        ref = np.asarray(ref, dtype=np.float64)
        diff = np.abs(np.asarray(candidate[name], dtype=np.float64) - ref).mean()
        total += float(diff / (np.abs(ref).mean() + 1e-12))
    return total


def budget_scorer(truth: Sequence[Any], infos: Sequence[Any], postprocess: dict[str, Any],
                  labels: Sequence[str]) -> Any:
    """The detector scorer of the INT8 accuracy budget (`edgetl.quantize.budget.search`).

    Args:
        truth: ground truth (`DetSample`) of every image of the budget sample, in sample order.
        infos: letterbox info of every image of the sample.
        postprocess: the bundle's postprocess section.
        labels: class names.

    Returns:
        ``scorer(outputs, sample) -> {"drop", "agreement", "sensitivity", "map", "map50", "reference_map",
        "reference_map50"}``: ``drop`` is the mAP@0.5:0.95 drop in points on the sample's images,
        ``agreement`` the fraction of the reference's deployed detections the candidate matches, and
        ``sensitivity`` the `output_error`.
    """
    scoring = map_postprocess(postprocess)
    reference_maps: dict[tuple[int, ...], dict[str, Any]] = {}

    def scorer(outputs: dict[str, np.ndarray], sample: Any) -> dict[str, Any]:
        index = [int(i) for i in sample.index]
        gt, inf = [truth[i] for i in index], [infos[i] for i in index]
        key = tuple(index)
        if key not in reference_maps:  # the reference is the same for every candidate on these images
            reference_maps[key] = coco_map(postprocess_detections(sample.reference, scoring, inf, labels), gt, labels)
        ref_map = reference_maps[key]
        cand_map = coco_map(postprocess_detections(outputs, scoring, inf, labels), gt, labels)
        agree = box_agreement(postprocess_detections(sample.reference, postprocess, inf, labels),
                              postprocess_detections(outputs, postprocess, inf, labels))
        drop = 100.0 * (ref_map["map"] - cand_map["map"]) if ref_map["map"] is not None else 0.0
        return {"drop": drop, "agreement": agree["recall_of_reference"],
                "sensitivity": output_error(sample.reference, outputs), "map": cand_map["map"],
                "map50": cand_map["map50"], "reference_map": ref_map["map"], "reference_map50": ref_map["map50"],
                "matched_iou": agree["matched_iou_mean"]}

    return scorer
