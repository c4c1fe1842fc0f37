"""Detector post-processing on the host: score filter, NMS, un-letterboxing. Numpy only, never torch.

The detector graph decodes boxes itself, so its outputs are one of two layouts (manifest
``postprocess.outputs``):

``"boxes_scores"`` (default)
    ``boxes`` float32 ``(N, A, 4)`` xyxy in letterboxed input pixels and ``scores`` float32
    ``(N, A, C)`` per-class probabilities. This module thresholds, runs NMS and keeps the best
    ``max_detections``.
``"nms"``
    TensorRT EfficientNMS layout, NMS already done in the graph: ``num_detections`` ``(N, 1)``,
    ``det_boxes`` ``(N, K, 4)``, ``det_scores`` ``(N, K)``, ``det_classes`` ``(N, K)``.

Either way the boxes are mapped back to original image pixels with the `LetterboxInfo` that
`edgetl.preprocess.preprocess` returned for each image, and clipped to the image.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.preprocess import LetterboxInfo

DEFAULT_POSTPROCESS: dict[str, Any] = {
    "type": "detect",
    "outputs": "boxes_scores",
    "score_threshold": 0.25,
    "iou_threshold": 0.5,
    "max_detections": 100,
    "class_agnostic": False,
}
#: Candidates kept (by score) before NMS; bounds the NMS cost on a model that is not trained yet.
PRE_NMS_TOP_K = 4096


@dataclass(frozen=True, eq=False)
class DetectionResult:
    """Detections of one image, best score first.

    Args:
        boxes: ``(K, 4)`` float32 ``x1, y1, x2, y2`` in original image pixels.
        scores: ``(K,)`` float32 confidence.
        labels: ``(K,)`` int64 class indices.
        label_names: ``K`` class names (``str(index)`` when the bundle has no name for it).
    """

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    label_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        object.__setattr__(self, "boxes", np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4))
        object.__setattr__(self, "scores", np.asarray(self.scores, dtype=np.float32).reshape(-1))
        object.__setattr__(self, "labels", np.asarray(self.labels, dtype=np.int64).reshape(-1))
        if not (len(self.boxes) == len(self.scores) == len(self.labels)):
            raise ValueError(
                f"boxes/scores/labels lengths differ: {len(self.boxes)}, {len(self.scores)}, {len(self.labels)}"
            )
        if not self.label_names:
            object.__setattr__(self, "label_names", [str(int(i)) for i in self.labels])

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def empty(cls) -> DetectionResult:
        return cls(np.zeros((0, 4)), np.zeros(0), np.zeros(0), [])

    def to_dict(self) -> dict[str, Any]:
        """JSON form: ``{"detections": [{"box": [x1, y1, x2, y2], "score", "label", "index"}], "count"}``."""
        return {
            "count": len(self),
            "detections": [
                {
                    "box": [round(float(v), 2) for v in box],
                    "score": round(float(score), 5),
                    "label": name,
                    "index": int(index),
                }
                for box, score, index, name in zip(self.boxes, self.scores, self.labels, self.label_names)
            ],
        }


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: ``(len(a), len(b))``."""
    a = np.asarray(a, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(b, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1.0), 0.0)


def nms_numpy(
    boxes: np.ndarray,
    scores: np.ndarray,
    iou_threshold: float,
    classes: np.ndarray | None = None,
    max_detections: int | None = None,
) -> np.ndarray:
    """Greedy non-maximum suppression, per class when ``classes`` is given; same keeps as torchvision.

    Per-class NMS runs as one pass: each class's boxes are shifted by ``class * (max coordinate + 1)``
    so boxes of different classes never overlap (torchvision's ``batched_nms`` trick). A box is
    suppressed when its IoU with a kept, higher-scoring box is above ``iou_threshold``.

    Args:
        boxes: ``(K, 4)`` xyxy.
        scores: ``(K,)``.
        iou_threshold: suppression threshold.
        classes: ``(K,)`` integer class per box, or None for class-agnostic NMS.
        max_detections: stop after this many keeps.

    Returns:
        indices of the kept boxes, highest score first (int64).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    if classes is not None:
        offsets = np.asarray(classes, dtype=np.float64).reshape(-1) * (boxes.max() + 1.0)
        boxes = boxes + offsets[:, None]
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1) * (y2 - y1)
    order = np.argsort(-scores, kind="stable")
    limit = len(order) if max_detections is None else int(max_detections)
    keep: list[int] = []
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        w = np.clip(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        order = rest[~(iou > iou_threshold)]  # NaN (degenerate boxes) never suppresses, as in torchvision
    return np.asarray(keep, dtype=np.int64)


def unletterbox(boxes: np.ndarray, info: LetterboxInfo | None) -> np.ndarray:
    """Map xyxy boxes from letterboxed input pixels to original image pixels, clipped to the image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4).copy()
    if info is None:
        return boxes
    boxes[:, 0::2] = (boxes[:, 0::2] - info.pad_x) / info.scale
    boxes[:, 1::2] = (boxes[:, 1::2] - info.pad_y) / info.scale
    boxes[:, 0::2] = np.clip(boxes[:, 0::2], 0, info.orig_w)
    boxes[:, 1::2] = np.clip(boxes[:, 1::2], 0, info.orig_h)
    return boxes


def _select(
    boxes: np.ndarray, scores: np.ndarray, score_threshold: float, iou_threshold: float, max_det: int, agnostic: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Threshold + NMS for one image of the ``boxes_scores`` layout."""
    if agnostic:
        cls = scores.argmax(axis=1)
        conf = scores[np.arange(len(scores)), cls]
        anchor = np.flatnonzero(conf > score_threshold)
        cls, conf = cls[anchor], conf[anchor]
    else:  # every (anchor, class) pair above the threshold is a candidate, as EfficientNMS does
        anchor, cls = np.nonzero(scores > score_threshold)
        conf = scores[anchor, cls]
    if len(conf) > PRE_NMS_TOP_K:
        top = np.argpartition(-conf, PRE_NMS_TOP_K)[:PRE_NMS_TOP_K]
        anchor, cls, conf = anchor[top], cls[top], conf[top]
    cand = boxes[anchor]
    keep = nms_numpy(cand, conf, iou_threshold, None if agnostic else cls, max_det)
    return cand[keep], conf[keep], cls[keep]


def _names(labels: np.ndarray, names: Sequence[str] | None) -> list[str]:
    names = list(names or [])
    return [names[i] if 0 <= i < len(names) else str(int(i)) for i in labels]


def _require(outputs: Mapping[str, np.ndarray], keys: Sequence[str], layout: str) -> list[np.ndarray]:
    missing = [k for k in keys if k not in outputs]
    if missing:
        raise BadInputError(
            f"detector outputs {sorted(outputs)} lack {missing} for postprocess outputs={layout!r}",
            hint="the bundle's manifest postprocess.outputs must match the model's output names",
        )
    return [np.asarray(outputs[k]) for k in keys]


def postprocess_detections(
    outputs: Mapping[str, np.ndarray],
    postprocess: Mapping[str, Any] | None,
    infos: Sequence[LetterboxInfo | None],
    labels: Sequence[str] | None = None,
) -> list[DetectionResult]:
    """Turn a batch of raw detector outputs into one `DetectionResult` per image, in original pixels.

    Args:
        outputs: the backend's outputs by name (see the module docstring for the two layouts).
        postprocess: the manifest's ``postprocess`` section (thresholds, layout); missing keys take
            the defaults in `DEFAULT_POSTPROCESS`.
        infos: one `LetterboxInfo` per image, as returned by `edgetl.preprocess.preprocess`; ``None``
            leaves that image's boxes in input pixels.
        labels: class names, for ``label_names``.

    Raises:
        BadInputError: outputs missing for the layout, or batch sizes that do not match ``infos``.
    """
    cfg = {**DEFAULT_POSTPROCESS, **dict(postprocess or {})}
    layout = cfg["outputs"]
    score_thr, iou_thr = float(cfg["score_threshold"]), float(cfg["iou_threshold"])
    max_det = int(cfg["max_detections"])
    results: list[DetectionResult] = []
    if layout == "boxes_scores":
        boxes, scores = _require(outputs, ("boxes", "scores"), layout)
        if boxes.ndim != 3 or scores.ndim != 3 or boxes.shape[:2] != scores.shape[:2]:
            raise BadInputError(f"expected boxes (N, A, 4) and scores (N, A, C), got {boxes.shape} and {scores.shape}")
        _check_batch(len(boxes), infos)
        for n, info in enumerate(infos):
            b, s, c = _select(
                boxes[n].astype(np.float64), scores[n], score_thr, iou_thr, max_det, bool(cfg["class_agnostic"])
            )
            results.append(DetectionResult(unletterbox(b, info), s, c, _names(c, labels)))
    elif layout == "nms":
        num, det_boxes, det_scores, det_classes = _require(
            outputs, ("num_detections", "det_boxes", "det_scores", "det_classes"), layout
        )
        _check_batch(len(det_boxes), infos)
        for n, info in enumerate(infos):
            k = int(np.asarray(num[n]).reshape(-1)[0])
            s = det_scores[n, :k].astype(np.float32)
            ok = s > score_thr
            b, s, c = det_boxes[n, :k][ok], s[ok], det_classes[n, :k][ok].astype(np.int64)
            order = np.argsort(-s, kind="stable")[:max_det]
            b, s, c = b[order], s[order], c[order]
            results.append(DetectionResult(unletterbox(b, info), s, c, _names(c, labels)))
    else:
        raise BadInputError(f"unknown detection postprocess outputs {layout!r}; expected 'boxes_scores' or 'nms'")
    return results


def _check_batch(n: int, infos: Sequence[LetterboxInfo | None]) -> None:
    if n != len(infos):
        raise BadInputError(f"detector returned {n} images but {len(infos)} letterbox infos were given")
