"""YOLO txt layout with an Ultralytics-style ``data.yaml``: read (with label checks) and write.

Layout::

    data.yaml            # path (optional root), train, val, names (list or {id: name}), nc
    images/train/*.jpg   # or any folder / a .txt list of image paths / a list of those
    labels/train/*.txt   # one line per box: "class cx cy w h", normalised to 0..1

The label file of ``.../images/<sub>/x.jpg`` is ``.../labels/<sub>/x.txt`` (the last ``images``
folder in the path becomes ``labels``); without an ``images`` folder the label sits beside the image.
Lines with more than five numbers are polygons (``class x1 y1 x2 y2 ...``); their bounding box is used.
Torch-free.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from edgetl.data.imagefolder import IMAGE_EXTENSIONS
from edgetl.data.labels import DetectionData, DetSample, LabelIssue, check_boxes, read_image_size
from edgetl.errors import BadInputError
from edgetl.fileio import write_text

SPLITS = ("train", "val")


def image_to_label_path(image: Path) -> Path:
    """Where the label file of ``image`` lives (Ultralytics convention)."""
    parts = list(image.parts)
    for i in range(len(parts) - 2, -1, -1):
        if parts[i] == "images":
            parts[i] = "labels"
            return Path(*parts).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_names(config: dict[str, Any], where: str) -> list[str]:
    """Class names from ``names`` (a list, or a dict ``{id: name}`` with ids ``0..nc-1``), checked against ``nc``."""
    names = config.get("names")
    nc = config.get("nc")
    if names is None:
        if nc is None:
            raise BadInputError(f"{where}: neither 'names' nor 'nc' is given", hint="add names: [cat, dog, ...]")
        names = [str(i) for i in range(int(nc))]
    elif isinstance(names, dict):
        try:
            by_id = {int(k): str(v) for k, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise BadInputError(f"{where}: 'names' keys must be integer class ids ({exc})") from exc
        if sorted(by_id) != list(range(len(by_id))):
            raise BadInputError(
                f"{where}: 'names' ids must be 0..{len(by_id) - 1} without gaps, got {sorted(by_id)}",
            )
        names = [by_id[i] for i in range(len(by_id))]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise BadInputError(f"{where}: 'names' must be a list or a mapping, got {type(names).__name__}")
    if nc is not None and int(nc) != len(names):
        raise BadInputError(f"{where}: nc is {nc} but {len(names)} names are given")
    if not names:
        raise BadInputError(f"{where}: no classes")
    if len(set(names)) != len(names):
        raise BadInputError(f"{where}: duplicate class names in {names}")
    return names


def _list_images(root: Path, entry: Any, where: str) -> list[Path]:
    entries = entry if isinstance(entry, list) else [entry]
    images: list[Path] = []
    for item in entries:
        target = Path(str(item))
        target = target if target.is_absolute() else root / target
        if target.is_dir():
            images += sorted(
                p for p in target.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")
            )
        elif target.is_file() and target.suffix.lower() == ".txt":
            for line in target.read_text(encoding="utf-8").splitlines():
                line = line.strip()
                if line and not line.startswith("#"):
                    p = Path(line)
                    images.append(p if p.is_absolute() else (target.parent / p))
        else:
            raise BadInputError(
                f"{where}: split path {target} does not exist",
                hint="train/val must name an image folder or a .txt list of images, relative to 'path'",
            )
    return images


def parse_label_text(text: str, file: str, split: str, issues: list[LabelIssue]) -> tuple[np.ndarray, np.ndarray]:
    """Parse YOLO label lines into ``(normalised cxcywh or polygon-bbox rows (M,4), class ids (M,))``.

    Returns boxes as normalised ``x1, y1, x2, y2``. Unparseable lines become ``bad_label`` issues.
    """
    boxes, labels = [], []
    for line_no, line in enumerate(text.splitlines(), start=1):
        fields = line.split()
        if not fields:
            continue
        try:
            values = [float(v) for v in fields]
        except ValueError:
            issues.append(LabelIssue("bad_label", file, f"line {line_no}: not numbers: {line.strip()!r}", split))
            continue
        cls = values[0]
        if cls != int(cls):
            issues.append(
                LabelIssue("bad_label", file, f"line {line_no}: class id {fields[0]} is not an integer", split)
            )
            continue
        if len(values) == 5:
            cx, cy, w, h = values[1:]
            boxes.append([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])
        elif len(values) >= 7 and len(values) % 2 == 1:
            xy = np.asarray(values[1:]).reshape(-1, 2)
            boxes.append([xy[:, 0].min(), xy[:, 1].min(), xy[:, 0].max(), xy[:, 1].max()])
        else:
            issues.append(
                LabelIssue(
                    "bad_label", file, f"line {line_no}: expected 'class cx cy w h', got {len(values)} values", split
                )
            )
            continue
        labels.append(int(cls))
    return np.asarray(boxes, dtype=np.float64).reshape(-1, 4), np.asarray(labels, dtype=np.int64)


def _read_split(
    images: list[Path], names: list[str], split: str, verify: bool, issues: list[LabelIssue]
) -> list[DetSample]:
    samples = []
    seen: set[Path] = set()
    for image in images:
        if image in seen:
            continue
        seen.add(image)
        label_path = image_to_label_path(image)
        size = read_image_size(image, verify)
        if size == "missing":
            issues.append(LabelIssue("missing_image", str(image), "listed image does not exist; skipped", split))
            continue
        if isinstance(size, str):
            issues.append(LabelIssue("corrupt_image", str(image), f"{size}; skipped", split))
            continue
        width, height = size
        if not label_path.is_file():
            issues.append(
                LabelIssue(
                    "missing_label", str(image), f"no label file {label_path.name}; used as a background image", split
                )
            )
            samples.append(DetSample(image, np.zeros((0, 4)), np.zeros(0), width, height))
            continue
        try:
            text = label_path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            issues.append(LabelIssue("bad_label", str(label_path), f"cannot read ({exc}); image skipped", split))
            continue
        norm, labels = parse_label_text(text, str(label_path), split, issues)
        pixels = norm * np.array([width, height, width, height], dtype=np.float64)
        boxes, labels = check_boxes(pixels, labels, width, height, len(names), str(label_path), split, issues)
        samples.append(DetSample(image, boxes, labels, width, height))
    if images:
        _report_orphan_labels(images, split, issues)
    return samples


def _report_orphan_labels(images: list[Path], split: str, issues: list[LabelIssue]) -> None:
    """Label files in the split's label folders whose image does not exist."""
    label_dirs = {image_to_label_path(p).parent for p in images}
    stems = {image_to_label_path(p) for p in images}
    for folder in sorted(label_dirs):
        if not folder.is_dir():
            continue
        for label in sorted(folder.glob("*.txt")):
            if label not in stems and label.name != "classes.txt":
                issues.append(LabelIssue("missing_image", str(label), "label file without an image; ignored", split))


def read_yolo_dataset(yaml_path: str | Path, *, verify_images: bool = True) -> DetectionData:
    """Read a YOLO dataset described by ``yaml_path``; problems go to ``DetectionData.issues``.

    Args:
        yaml_path: Ultralytics-style data.yaml. A relative ``path`` is relative to the YAML's folder;
            without ``path`` the YAML's folder is the root.
        verify_images: decode every image fully.

    Raises:
        BadInputError: unreadable YAML, bad names/nc, a split folder that does not exist, no train key.
    """
    yaml_path = Path(yaml_path)
    try:
        config = yaml.safe_load(yaml_path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise BadInputError(f"cannot read {yaml_path}: {exc}") from exc
    if not isinstance(config, dict):
        raise BadInputError(f"{yaml_path}: expected a mapping with train, val and names")
    names = read_names(config, str(yaml_path))
    root = Path(str(config.get("path") or "."))
    root = root if root.is_absolute() else (yaml_path.parent / root)
    if "train" not in config:
        raise BadInputError(f"{yaml_path}: no 'train' entry", hint="add train: images/train")
    issues: list[LabelIssue] = []
    splits: dict[str, list[DetSample]] = {}
    for split in SPLITS:
        if config.get(split) is None:
            splits[split] = []
            continue
        images = _list_images(root, config[split], str(yaml_path))
        if not images:
            raise BadInputError(f"{yaml_path}: split {split!r} ({config[split]}) holds no images")
        splits[split] = _read_split(images, names, split, verify_images, issues)
    return DetectionData(names, splits["train"], splits["val"], issues, source="yolo", root=yaml_path)


def format_label_lines(sample: DetSample) -> str:
    """YOLO label text for one sample (normalised ``class cx cy w h``, one box per line)."""
    w, h = _sample_size(sample)
    lines = []
    for (x1, y1, x2, y2), cls in zip(sample.boxes.astype(np.float64), sample.labels):
        cx, cy, bw, bh = (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h
        lines.append(f"{int(cls)} {cx:.7g} {cy:.7g} {bw:.7g} {bh:.7g}")
    return "\n".join(lines) + ("\n" if lines else "")


def _sample_size(sample: DetSample) -> tuple[int, int]:
    if sample.width > 0 and sample.height > 0:
        return sample.width, sample.height
    size = read_image_size(sample.path, verify=False)
    if isinstance(size, str):
        raise BadInputError(f"{sample.path}: {size}")
    return size


def unique_names(paths: list[Path]) -> list[str]:
    """File names for ``paths`` inside one folder: the original name, suffixed on collision."""
    used: set[str] = set()  # stems: a.jpg and a.png would share the label file a.txt
    out = []
    for path in paths:
        stem, n = path.stem, 1
        while stem.lower() in used:
            stem = f"{path.stem}_{n}"
            n += 1
        used.add(stem.lower())
        out.append(stem + path.suffix)
    return out


def place_image(src: Path, dst: Path) -> None:
    """Hard-link (same filesystem) or copy an image into an output dataset."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def write_yolo_dataset(data: DetectionData, out_dir: str | Path, *, overwrite: bool = False) -> Path:
    """Write ``data`` as a YOLO dataset (images linked or copied); returns the new ``data.yaml``.

    The whole folder is built under a temporary name and renamed into place, so an interrupted
    conversion leaves nothing half-written.

    Raises:
        BadInputError: ``out_dir`` exists and is not empty (and not ``overwrite``).
    """
    out_dir = Path(out_dir)
    _check_out_dir(out_dir, overwrite)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config: dict[str, Any] = {}
    for split, samples in (("train", data.train), ("val", data.val)):
        if not samples:
            continue
        for sample, name in zip(samples, unique_names([s.path for s in samples])):
            place_image(sample.path, tmp / "images" / split / name)
            write_text(tmp / "labels" / split / (Path(name).stem + ".txt"), format_label_lines(sample))
        config[split] = f"images/{split}"
    config["nc"] = len(data.classes)
    config["names"] = list(data.classes)
    write_text(tmp / "data.yaml", yaml.safe_dump(config, sort_keys=False))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    tmp.rename(out_dir)
    return out_dir / "data.yaml"


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise BadInputError(f"{out_dir} exists and is not empty", hint="choose a new folder or pass --overwrite")
