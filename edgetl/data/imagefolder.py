"""Discover a classification dataset: ImageFolder layout or a CSV list, with checks and a seeded split.

Torch-free: calibration, validation and the runtime tools share it. Corrupt or non-image files are
skipped and reported (count and names) instead of crashing an epoch later.
"""

from __future__ import annotations

import csv
import random
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from edgetl.errors import BadInputError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


@dataclass
class ClassificationData:
    """Train and validation samples over one list of class names (the labels saved with the model)."""

    classes: list[str]
    train: list[Sample]
    val: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)
    val_source: str = "val"  # "val" folder/CSV column, or "split" when carved from train

    def summary(self) -> dict:
        return {
            "classes": len(self.classes),
            "train_images": len(self.train),
            "val_images": len(self.val),
            "val_source": self.val_source,
            "skipped": len(self.skipped),
            "skipped_files": [f"{p}: {why}" for p, why in self.skipped[:50]],
        }


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def check_image(path: Path) -> str | None:
    """Return why the file is not a usable image, or None when it decodes fully."""
    try:
        with Image.open(path) as image:
            image.load()
            if image.width < 1 or image.height < 1:
                return "empty image"
    except Exception as exc:  # PIL raises many types for bad files
        return f"cannot decode ({type(exc).__name__}: {exc})"
    return None


def _scan_class_dirs(root: Path, classes: list[str] | None) -> dict[str, list[Path]]:
    found: dict[str, list[Path]] = {}
    for class_dir in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        found[class_dir.name] = sorted(p for p in class_dir.rglob("*") if p.is_file())
    if classes is not None:
        extra = sorted(set(found) - set(classes))
        missing = sorted(set(classes) - set(found))
        if extra or missing:
            raise BadInputError(
                f"{root}: classes differ from the training set (extra {extra}, missing {missing})",
                hint="train/ and val/ must have the same class folders",
            )
    return found


def _filter(
    files_by_class: dict[str, list[Path]], classes: list[str], skipped: list[tuple[str, str]], verify: bool
) -> list[Sample]:
    samples = []
    for name in classes:
        for path in files_by_class.get(name, []):
            if not is_image_file(path):
                skipped.append((str(path), "not an image file extension"))
                continue
            reason = check_image(path) if verify else None
            if reason:
                skipped.append((str(path), reason))
                continue
            samples.append(Sample(path, classes.index(name)))
    return samples


def _check_classes(classes: list[str], samples: list[Sample], where: str) -> None:
    if len(classes) < 2:
        raise BadInputError(
            f"{where}: found {len(classes)} class(es) {classes}; a classifier needs at least 2",
            hint="use the layout train/<class>/*.jpg with one folder per class",
        )
    counts = defaultdict(int)
    for sample in samples:
        counts[sample.label] += 1
    empty = [c for i, c in enumerate(classes) if counts[i] == 0]
    if empty:
        raise BadInputError(
            f"{where}: class(es) with no usable images: {empty}",
            hint="add images to these folders or remove them",
        )


def stratified_split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Split per class with a seeded shuffle; every class keeps at least one training image."""
    by_class: dict[int, list[Sample]] = defaultdict(list)
    for sample in samples:
        by_class[sample.label].append(sample)
    rng = random.Random(seed)
    train, val = [], []
    for label in sorted(by_class):
        items = list(by_class[label])
        rng.shuffle(items)
        n_val = min(len(items) - 1, max(1, round(len(items) * val_fraction))) if len(items) > 1 else 0
        val += items[:n_val]
        train += items[n_val:]
    return train, val


def _from_csv(path: Path, skipped: list[tuple[str, str]], verify: bool) -> tuple[list[str], list[tuple[Path, str]]]:
    rows: list[tuple[Path, str]] = []
    with path.open(newline="", encoding="utf-8") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or row[0].startswith("#"):
                continue
            if line_no == 1 and [c.strip().lower() for c in row[:2]] == ["path", "label"]:
                continue
            if len(row) < 2:
                raise BadInputError(f"{path}:{line_no}: expected 'path,label', got {row}")
            file = Path(row[0].strip())
            rows.append((file if file.is_absolute() else path.parent / file, row[1].strip()))
    classes = sorted({label for _, label in rows})
    return classes, rows


def load_classification_data(
    root: str | Path,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    verify: bool = True,
    val_csv: str | Path | None = None,
) -> ClassificationData:
    """Discover a dataset.

    Layouts:
        - ``root/train/<class>/*`` and optionally ``root/val/<class>/*``;
        - ``root/<class>/*`` (no split folders);
        - a CSV file ``path,label`` (paths relative to the CSV), with an optional ``val_csv``.
        Without validation data, a seeded stratified split of ``val_fraction`` is carved out.

    Raises:
        BadInputError: missing folder, fewer than two classes, an empty class, or train/val classes
            that differ.
    """
    root = Path(root)
    skipped: list[tuple[str, str]] = []
    if root.is_file() and root.suffix.lower() == ".csv":
        classes, rows = _from_csv(root, skipped, verify)
        train = _filter(_group(rows), classes, skipped, verify)
        val: list[Sample] = []
        source = "split"
        if val_csv is not None:
            val_classes, val_rows = _from_csv(Path(val_csv), skipped, verify)
            if set(val_classes) - set(classes):
                unknown = sorted(set(val_classes) - set(classes))
                raise BadInputError(f"{val_csv}: labels not in the training CSV: {unknown}")
            val = _filter(_group(val_rows), classes, skipped, verify)
            source = "val"
    elif root.is_dir():
        train_dir = root / "train" if (root / "train").is_dir() else root
        files = _scan_class_dirs(train_dir, None)
        classes = sorted(files)
        if len(classes) >= 2:
            train = _filter(files, classes, skipped, verify)
        else:
            train = []
        val, source = [], "split"
        for val_name in ("val", "valid", "validation"):
            if train_dir is not root or not (root / val_name).is_dir():
                val_dir = root / val_name
                if val_dir.is_dir() and train_dir is not root:
                    val = _filter(_scan_class_dirs(val_dir, classes), classes, skipped, verify)
                    source = "val"
                    break
    else:
        what = f"{root} is not a dataset (a file, but not a .csv)" if root.exists() else f"dataset not found: {root}"
        raise BadInputError(what, hint="pass a folder (train/<class>/*) or a CSV file (path,label)")
    _check_classes(classes, train, str(root))
    if source == "split":
        train, val = stratified_split(train, val_fraction, seed)
    if not val:
        raise BadInputError(f"{root}: no validation images (too few images to split)")
    return ClassificationData(classes, train, val, skipped, source)


def _group(rows: list[tuple[Path, str]]) -> dict[str, list[Path]]:
    grouped: dict[str, list[Path]] = defaultdict(list)
    for path, label in rows:
        grouped[label].append(path)
    return grouped
