"""Detection labels: the records every dataset format reads into, and the checks on them.

Torch-free: training, calibration, validation and ``edgetl data check`` share it. Every problem a
label file can have is found here, once, with the file it came from:

==================  ================================================  ==========================
kind                meaning                                           what happens (non-strict)
==================  ================================================  ==========================
``missing_image``   a label (or COCO image entry) whose image is gone  sample dropped
``missing_label``   an image without a label file                     kept as a background image
``corrupt_image``   the image does not decode                         sample dropped
``bad_label``       a label line that does not parse, or NaN values   line dropped
``unknown_class``   a class id outside ``0..nc-1`` (COCO: category)   box dropped
``box_outside``     a box that leaves the image                       box clipped to the image
``zero_area``       a box with no width or height (after clipping)    box dropped
==================  ================================================  ==========================

With ``strict=True`` any of them is an error (`BadInputError`, exit code 2) listing counts and files.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ISSUE_KINDS = (
    "missing_image",
    "missing_label",
    "corrupt_image",
    "bad_label",
    "unknown_class",
    "box_outside",
    "zero_area",
)
#: A box may overshoot the image by this many pixels (rounding in normalised labels) before it is reported.
OUTSIDE_TOLERANCE_PX = 0.5


@dataclass(frozen=True, eq=False)
class DetSample:
    """One image and its boxes.

    Attributes:
        path: image file.
        boxes: ``(M, 4)`` float32, ``x1, y1, x2, y2`` in original image pixels.
        labels: ``(M,)`` int64 class indices into `DetectionData.classes`.
        width, height: image size in pixels (read from the header during discovery).
    """

    path: Path
    boxes: np.ndarray
    labels: np.ndarray
    width: int = 0
    height: int = 0

    def __post_init__(self) -> None:
        boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(boxes) != len(labels):
            raise ValueError(f"{self.path}: {len(boxes)} boxes but {len(labels)} labels")
        object.__setattr__(self, "path", Path(self.path))
        object.__setattr__(self, "boxes", boxes)
        object.__setattr__(self, "labels", labels)


@dataclass(frozen=True)
class LabelIssue:
    """One problem found in the dataset: what, in which file, and what was done about it."""

    kind: str
    file: str
    detail: str
    split: str = ""

    def __str__(self) -> str:
        where = f"[{self.split}] " if self.split else ""
        return f"{where}{self.file}: {self.kind}: {self.detail}"


@dataclass
class DetectionData:
    """Train and validation samples over one list of class names (the labels saved with the model).

    Attributes:
        classes: class names; a label ``i`` means ``classes[i]``.
        train, val: the usable samples after the checks (boxes clipped, bad ones dropped).
        issues: every problem found, in discovery order.
        source: ``"yolo"`` or ``"coco"``.
        root: the dataset file (data.yaml or the train JSON) it was read from.
        val_source: ``"val"`` (given by the dataset) or ``"split"`` (carved from train with a seed).
    """

    classes: list[str]
    train: list[DetSample]
    val: list[DetSample]
    issues: list[LabelIssue] = field(default_factory=list)
    source: str = "yolo"
    root: Path | None = None
    val_source: str = "val"

    def issue_counts(self) -> dict[str, int]:
        counts = Counter(issue.kind for issue in self.issues)
        return {kind: counts[kind] for kind in ISSUE_KINDS if counts[kind]}

    def summary(self, max_files: int = 50) -> dict[str, Any]:
        """A JSON-friendly description (``edgetl data check --json``)."""
        boxes = {
            split: int(sum(len(s.labels) for s in samples))
            for split, samples in (("train", self.train), ("val", self.val))
        }
        per_class = np.zeros(len(self.classes), dtype=np.int64)
        for sample in [*self.train, *self.val]:
            per_class += np.bincount(sample.labels, minlength=len(self.classes))[: len(self.classes)]
        return {
            "source": self.source,
            "root": str(self.root) if self.root else None,
            "classes": list(self.classes),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "val_source": self.val_source,
            "train_boxes": boxes["train"],
            "val_boxes": boxes["val"],
            "boxes_per_class": {name: int(n) for name, n in zip(self.classes, per_class)},
            "issue_counts": self.issue_counts(),
            "issues": [
                {"kind": i.kind, "file": i.file, "detail": i.detail, "split": i.split} for i in self.issues[:max_files]
            ],
            "issues_listed": min(len(self.issues), max_files),
            "issues_total": len(self.issues),
        }

    def report(self, max_files: int = 20) -> str:
        """Human-readable issue report: counts per kind, then the first files of each kind."""
        if not self.issues:
            return "no label problems found"
        lines = ["label problems: " + ", ".join(f"{k} {n}" for k, n in self.issue_counts().items())]
        for kind in ISSUE_KINDS:
            found = [i for i in self.issues if i.kind == kind]
            for issue in found[:max_files]:
                lines.append(f"  {issue}")
            if len(found) > max_files:
                lines.append(f"  ... and {len(found) - max_files} more {kind}")
        return "\n".join(lines)


def read_image_size(path: Path, verify: bool) -> tuple[int, int] | str:
    """``(width, height)`` of an image, or why it is not usable. ``verify`` decodes all pixels."""
    try:
        with Image.open(path) as image:
            size = image.size
            if verify:
                image.load()
    except FileNotFoundError:
        return "missing"
    except Exception as exc:  # PIL raises many types for damaged files
        return f"cannot decode ({type(exc).__name__}: {exc})"
    if size[0] < 1 or size[1] < 1:
        return "empty image"
    return size


def check_boxes(
    boxes: np.ndarray,
    labels: np.ndarray,
    width: int,
    height: int,
    num_classes: int,
    file: str,
    split: str,
    issues: list[LabelIssue],
    class_names: list[str] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Apply the box checks to one image's pixel boxes; append issues; return the usable boxes.

    Args:
        boxes: ``(M, 4)`` xyxy pixels (any float dtype).
        labels: ``(M,)`` class ids as given by the file (may be out of range).
        width, height: image size in pixels.
        num_classes: valid ids are ``0..num_classes-1``.
        file: label file name for the report.
        class_names: only for nicer messages.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    keep = np.ones(len(labels), dtype=bool)
    for i in np.flatnonzero(~np.isfinite(boxes).all(axis=1)):
        issues.append(LabelIssue("bad_label", file, f"box {i}: non-finite coordinates {boxes[i].tolist()}", split))
        keep[i] = False
    for i in np.flatnonzero(keep & ((labels < 0) | (labels >= num_classes))):
        issues.append(
            LabelIssue("unknown_class", file, f"box {i}: class id {labels[i]} not in 0..{num_classes - 1}", split)
        )
        keep[i] = False
    tol = OUTSIDE_TOLERANCE_PX
    outside = keep & (
        (boxes[:, 0] < -tol) | (boxes[:, 1] < -tol) | (boxes[:, 2] > width + tol) | (boxes[:, 3] > height + tol)
    )
    safe = np.where(np.isfinite(boxes), boxes, 0.0)
    clipped = np.empty_like(safe)
    clipped[:, 0::2] = np.clip(safe[:, 0::2], 0.0, width)
    clipped[:, 1::2] = np.clip(safe[:, 1::2], 0.0, height)
    zero = keep & ((clipped[:, 2] - clipped[:, 0] <= 0) | (clipped[:, 3] - clipped[:, 1] <= 0))
    for i in np.flatnonzero(outside & ~zero):
        issues.append(
            LabelIssue(
                "box_outside",
                file,
                f"box {i} {_fmt_box(boxes[i])} leaves the {width}x{height} image; clipped to {_fmt_box(clipped[i])}",
                split,
            )
        )
    for i in np.flatnonzero(zero):
        why = "lies outside the image" if outside[i] else "has zero width or height"
        issues.append(LabelIssue("zero_area", file, f"box {i} {_fmt_box(boxes[i])} {why}; dropped", split))
    keep &= ~zero
    return clipped[keep].astype(np.float32), labels[keep]


def _fmt_box(box: np.ndarray) -> str:
    return "[" + ", ".join(f"{v:.1f}" for v in box) + "]"
