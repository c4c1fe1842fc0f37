"""COCO instances JSON: read (with the same label checks as YOLO), write, and convert YOLO <-> COCO.

Layout written by `write_coco_dataset` (and found by the reader)::

    annotations/instances_train.json   # images, annotations (bbox = [x, y, w, h] pixels), categories
    annotations/instances_val.json
    images/train/*.jpg                 # file_name in the JSON is relative to images/<split>/
    images/val/*.jpg

Category ids may be any integers; classes are ordered by category id (label ``i`` is the i-th
category). Crowd annotations (``iscrowd: 1``) are regions to ignore, not objects, and are skipped.
Conversion keeps every box exactly (pixels -> normalised -> pixels within float rounding), the class
names and order, and the images; COCO category ids become ``1..C``. Torch-free.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.labels import DetectionData, DetSample, LabelIssue, check_boxes, read_image_size
from edgetl.data.yolo import _check_out_dir, place_image, unique_names
from edgetl.errors import BadInputError
from edgetl.fileio import write_json


def _split_of(json_path: Path) -> str:
    return "val" if "val" in json_path.stem.lower() else "train"


def _image_root_candidates(json_path: Path, split: str) -> list[Path]:
    base = json_path.parent
    return [
        base.parent / "images" / split,
        base.parent / "images",
        base / "images" / split,
        base / "images",
        base.parent / split,
        base / split,
        base.parent,
        base,
    ]


def _pick_image_root(json_path: Path, split: str, file_names: list[str]) -> Path:
    candidates = _image_root_candidates(json_path, split)
    probe = file_names[: min(len(file_names), 5)]
    for root in candidates:
        if probe and any((root / name).is_file() for name in probe):
            return root
    return next((c for c in candidates if c.is_dir()), json_path.parent)


def read_coco_json(
    json_path: str | Path,
    *,
    image_root: str | Path | None = None,
    verify_images: bool = True,
    classes: list[str] | None = None,
) -> tuple[list[str], list[DetSample], list[LabelIssue]]:
    """Read one COCO instances file.

    Args:
        json_path: the JSON file.
        image_root: folder that ``file_name`` is relative to; found automatically when None.
        verify_images: decode every image fully.
        classes: class names of the train split; a val file must use the same category names.

    Returns:
        ``(classes, samples, issues)``.

    Raises:
        BadInputError: unreadable JSON or missing ``images``/``categories``.
    """
    json_path = Path(json_path)
    split = _split_of(json_path)
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BadInputError(f"cannot read COCO file {json_path}: {exc}") from exc
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("images"), list)
        or not isinstance(doc.get("categories"), list)
    ):
        raise BadInputError(f"{json_path}: not a COCO instances file (needs 'images' and 'categories' lists)")
    try:
        categories = sorted(((int(c["id"]), str(c["name"])) for c in doc["categories"]), key=lambda c: c[0])
    except (KeyError, TypeError, ValueError) as exc:
        raise BadInputError(f"{json_path}: bad category entry ({exc})") from exc
    names = [name for _, name in categories]
    if len(set(names)) != len(names):
        raise BadInputError(f"{json_path}: duplicate category names {names}")
    index_of = {cat_id: i for i, (cat_id, _) in enumerate(categories)}
    if classes is not None:
        if set(names) - set(classes):
            raise BadInputError(
                f"{json_path}: categories {sorted(set(names) - set(classes))} are not in the train split"
            )
        remap = {cat_id: classes.index(name) for cat_id, name in categories}
        index_of, names = remap, list(classes)
    issues: list[LabelIssue] = []
    images = doc["images"]
    root = (
        Path(image_root)
        if image_root
        else _pick_image_root(json_path, split, [str(i.get("file_name", "")) for i in images])
    )
    by_image: dict[Any, list[dict]] = {}
    image_ids = {img.get("id") for img in images}
    for ann in doc.get("annotations", []) or []:
        if ann.get("image_id") not in image_ids:
            issues.append(
                LabelIssue(
                    "bad_label",
                    str(json_path),
                    f"annotation {ann.get('id')}: unknown image_id {ann.get('image_id')}",
                    split,
                )
            )
            continue
        by_image.setdefault(ann.get("image_id"), []).append(ann)
    samples = []
    for img in images:
        file_name = str(img.get("file_name", ""))
        path = root / file_name
        size = read_image_size(path, verify_images)
        if size == "missing":
            issues.append(
                LabelIssue("missing_image", str(path), f"image id {img.get('id')} does not exist; skipped", split)
            )
            continue
        if isinstance(size, str):
            issues.append(LabelIssue("corrupt_image", str(path), f"{size}; skipped", split))
            continue
        width, height = int(img.get("width") or size[0]), int(img.get("height") or size[1])
        boxes, labels = [], []
        where = f"{json_path.name}:{file_name}"
        for ann in by_image.get(img.get("id"), []):
            if ann.get("iscrowd"):
                continue
            bbox = ann.get("bbox")
            try:
                x, y, w, h = (float(v) for v in bbox)
            except (TypeError, ValueError):
                issues.append(
                    LabelIssue(
                        "bad_label", where, f"annotation {ann.get('id')}: bbox {bbox!r} is not [x, y, w, h]", split
                    )
                )
                continue
            boxes.append([x, y, x + w, y + h])
            labels.append(index_of.get(ann.get("category_id"), -1))
        raw_labels = np.asarray(labels, dtype=np.int64)
        for i in np.flatnonzero(raw_labels < 0):
            issues.append(LabelIssue("unknown_class", where, f"box {i}: category id not in 'categories'", split))
        good = raw_labels >= 0
        checked_boxes, checked_labels = check_boxes(
            np.asarray(boxes, dtype=np.float64).reshape(-1, 4)[good],
            raw_labels[good],
            width,
            height,
            len(names),
            where,
            split,
            issues,
        )
        samples.append(DetSample(path, checked_boxes, checked_labels, width, height))
    return names, samples, issues


def _val_sibling(train_json: Path) -> Path | None:
    name = train_json.name
    if "train" not in name:
        return None
    for replacement in ("val", "valid", "validation"):
        candidate = train_json.with_name(name.replace("train", replacement))
        if candidate.is_file():
            return candidate
    return None


def read_coco_dataset(json_path: str | Path, *, verify_images: bool = True) -> DetectionData:
    """Read a COCO dataset: ``json_path`` is the train split; a sibling named with ``val`` is the val split."""
    json_path = Path(json_path)
    classes, train, issues = read_coco_json(json_path, verify_images=verify_images)
    val: list[DetSample] = []
    val_json = _val_sibling(json_path)
    if val_json is not None:
        _, val, val_issues = read_coco_json(val_json, verify_images=verify_images, classes=classes)
        issues += val_issues
    return DetectionData(classes, train, val, issues, source="coco", root=json_path)


def to_coco_dict(
    samples: list[DetSample],
    classes: list[str],
    *,
    file_names: list[str] | None = None,
    scores: list[np.ndarray] | None = None,
) -> dict[str, Any]:
    """A COCO instances document for ``samples`` (image ids ``1..N``, category ids ``1..C``).

    Args:
        file_names: ``file_name`` per sample (default: the image file name).
        scores: optional per-sample score arrays, written as ``score`` (detections in COCO form).
    """
    images, annotations = [], []
    ann_id = 0
    for index, sample in enumerate(samples):
        image_id = index + 1
        images.append(
            {
                "id": image_id,
                "file_name": file_names[index] if file_names else sample.path.name,
                "width": int(sample.width),
                "height": int(sample.height),
            }
        )
        for j, ((x1, y1, x2, y2), cls) in enumerate(zip(sample.boxes.astype(np.float64), sample.labels)):
            ann_id += 1
            w, h = x2 - x1, y2 - y1
            ann = {
                "id": ann_id,
                "image_id": image_id,
                "category_id": int(cls) + 1,
                "bbox": [float(x1), float(y1), float(w), float(h)],
                "area": float(w * h),
                "iscrowd": 0,
            }
            if scores is not None:
                ann["score"] = float(scores[index][j])
            annotations.append(ann)
    categories = [{"id": i + 1, "name": name, "supercategory": "object"} for i, name in enumerate(classes)]
    return {"images": images, "annotations": annotations, "categories": categories}


def write_coco_dataset(data: DetectionData, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``data`` in the COCO layout above (images linked or copied); returns the train JSON path."""
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for split, samples in (("train", data.train), ("val", data.val)):
        if not samples and split == "val":
            continue
        names = unique_names([s.path for s in samples])
        for sample, name in zip(samples, names):
            place_image(sample.path, tmp / "images" / split / name)
        fixed = [_with_size(s) for s in samples]
        write_json(tmp / "annotations" / f"instances_{split}.json", to_coco_dict(fixed, data.classes, file_names=names))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir / "annotations" / "instances_train.json"


def _with_size(sample: DetSample) -> DetSample:
    if sample.width > 0 and sample.height > 0:
        return sample
    size = read_image_size(sample.path, verify=False)
    if isinstance(size, str):
        raise BadInputError(f"{sample.path}: {size}")
    return DetSample(sample.path, sample.boxes, sample.labels, size[0], size[1])
