"""Image samples for parity, calibration and validation, all decoded by `edgetl.preprocess`.

Export parity, INT8 calibration and validation must see the pixels deployment sees, so they share this
module: it finds images (a classification dataset, a flat folder, or a list of files), draws seeded
class-balanced subsets, and preprocesses them while *counting* files that fail to decode instead of
crashing on the first one.
"""

from __future__ import annotations

import logging
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.preprocess import PreprocessSpec, preprocess

log = logging.getLogger(__name__)

#: A folder holding one of these is a detection dataset (Ultralytics layout).
DETECTION_FILES = ("data.yaml", "data.yml", "dataset.yaml")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


@dataclass
class ImageSet:
    """Image files with optional integer labels over ``classes``.

    Args:
        paths: image files.
        labels: one label per path, or ``None`` entries when the source has no labels.
        classes: class names the labels index, or ``None``.
        source: where the images came from, for reports.
        skipped: ``(file, reason)`` for files dropped before decoding (bad extension...).
    """

    paths: list[Path]
    labels: list[int | None]
    classes: list[str] | None
    source: str
    skipped: list[tuple[str, str]] = field(default_factory=list)

    @property
    def labelled(self) -> bool:
        return bool(self.labels) and all(v is not None for v in self.labels)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        return ImageSet([self.paths[i] for i in indices], [self.labels[i] for i in indices], self.classes,
                        self.source, list(self.skipped))


@dataclass
class Decoded:
    """A preprocessed batch and what could not be decoded.

    ``infos`` holds each image's `LetterboxInfo` (``None`` for other resize modes), so detections can be
    mapped back to original pixels without decoding the files again.
    """

    batch: np.ndarray
    paths: list[Path]
    labels: list[int | None]
    failures: list[tuple[str, str]]
    infos: list[Any] = field(default_factory=list)


def _detection_images(path: Path, split: str) -> ImageSet:
    """The images of a detection dataset (data.yaml / COCO JSON); detection labels are not class labels."""
    from edgetl.data.detection import load_detection_data

    data = load_detection_data(path)
    groups = {"train": data.train, "val": data.val, "all": data.train + data.val}
    if split not in groups:
        raise BadInputError(f"unknown split {split!r}; expected train, val or all")
    paths = [Path(s.path) for s in groups[split]]
    return ImageSet(paths, [None] * len(paths), None, f"{path} ({split})")


def find_images(source: str | Path | Sequence[str | Path], *, split: str = "train",
                labels: Sequence[str] | None = None) -> ImageSet:
    """Find images in a dataset folder, a flat folder, a ``.txt`` list, or a list of paths.

    Args:
        source: a classification dataset (``train/<class>/*``, ``<class>/*`` or a CSV), a detection dataset
            (data.yaml / COCO JSON, or a folder holding data.yaml), any folder of images (searched
            recursively), a text file with one path per line, or a list of paths.
        split: ``train`` or ``val`` of a dataset; ``all`` for both.
        labels: the model's class names; dataset labels are mapped onto them so that label ``i`` means
            the model's output ``i`` (classes the model does not know are dropped with a reason).

    Raises:
        BadInputError: the source does not exist or holds no image files.
    """
    if isinstance(source, (list, tuple)):
        paths = [Path(p) for p in source]
        return ImageSet(paths, [None] * len(paths), None, f"{len(paths)} files")
    root = Path(source)
    if not root.exists():
        raise BadInputError(f"image source not found: {root}", hint="pass a dataset folder or a folder of images")
    if root.is_file() and root.suffix.lower() == ".txt":
        lines = [ln.strip() for ln in root.read_text(encoding="utf-8").splitlines()]
        paths = [Path(ln) if Path(ln).is_absolute() else root.parent / ln for ln in lines if ln and ln[0] != "#"]
        return ImageSet(paths, [None] * len(paths), None, str(root))
    if root.is_file() and root.suffix.lower() in (".yaml", ".yml", ".json"):
        return _detection_images(root, split)
    marker = next((root / n for n in DETECTION_FILES if (root / n).is_file()), None) if root.is_dir() else None
    if marker is not None:  # a YOLO dataset folder: its split, not every image below it
        return _detection_images(marker, split)
    dataset = _try_classification(root)
    if dataset is not None:
        groups = {"train": dataset.train, "val": dataset.val, "all": dataset.train + dataset.val}
        if split not in groups:
            raise BadInputError(f"unknown split {split!r}; expected train, val or all")
        samples = groups[split]
        classes = list(dataset.classes)
        skipped = list(dataset.skipped)
        mapped: list[int | None] = [s.label for s in samples]
        if labels is not None and list(labels) != classes:
            index = {name: i for i, name in enumerate(labels)}
            unknown = sorted(set(classes) - set(index))
            if unknown:
                skipped += [(str(s.path), f"class {classes[s.label]!r} unknown to the model")
                            for s in samples if classes[s.label] in unknown]
            keep = [s for s in samples if classes[s.label] in index]
            mapped = [index[classes[s.label]] for s in keep]
            samples, classes = keep, list(labels)
        return ImageSet([s.path for s in samples], mapped, classes, f"{root} ({split})", skipped)
    if root.is_dir():
        files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
        skipped = [(str(p), "not an image file extension") for p in files if p.suffix.lower() not in IMAGE_SUFFIXES]
        if not images:
            raise BadInputError(f"{root}: no image files found ({len(files)} other files)",
                                hint=f"expected files ending in {', '.join(IMAGE_SUFFIXES[:5])}...")
        return ImageSet(images, [None] * len(images), None, str(root), skipped)
    if root.suffix.lower() in IMAGE_SUFFIXES:
        return ImageSet([root], [None], None, str(root))
    raise BadInputError(f"{root}: not a folder, an image, a CSV dataset or a .txt list of images")


def _try_classification(root: Path):
    """A `ClassificationData` when ``root`` is laid out as one, else None (a flat folder of images)."""
    from edgetl.data.imagefolder import load_classification_data

    if root.is_file() and root.suffix.lower() != ".csv":
        return None
    try:
        # verify=False: decoding failures are counted by `decode` with the rest of the pipeline.
        return load_classification_data(root, verify=False)
    except BadInputError:
        return None


def balanced_indices(labels: Sequence[int | None], n: int, seed: int) -> list[int]:
    """Pick ``n`` indices round-robin over classes (seeded shuffle within each), so no class dominates."""
    by_class: dict[object, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        by_class[label].append(i)
    rng = random.Random(seed)
    queues = []
    for key in sorted(by_class, key=lambda k: (k is None, k if k is not None else -1)):
        items = by_class[key]
        rng.shuffle(items)
        queues.append(items)
    chosen: list[int] = []
    while len(chosen) < n and any(queues):
        for queue in queues:
            if queue and len(chosen) < n:
                chosen.append(queue.pop())
    return sorted(chosen)


def decode(images: ImageSet, spec: PreprocessSpec, *, progress: bool = False, what: str = "images") -> Decoded:
    """Preprocess every image with the deployment spec; undecodable files are counted, not fatal."""
    arrays, paths, labels, failures, infos = [], [], [], [], []
    iterator = zip(images.paths, images.labels)
    if progress:
        from tqdm import tqdm

        iterator = tqdm(iterator, total=len(images.paths), desc=f"preprocess {what}", unit="img", leave=False)
    for path, label in iterator:
        try:
            chw, info = preprocess(path, spec)
        except BadInputError as exc:
            failures.append((str(path), exc.message))
            continue
        arrays.append(chw)
        infos.append(info)
        paths.append(Path(path))
        labels.append(label)
    if failures:
        log.warning("%d of %d %s could not be decoded and were skipped (first: %s)",
                    len(failures), len(images.paths), what, failures[0][0])
    h, w = spec.size
    batch = np.stack(arrays) if arrays else np.zeros((0, 3, h, w), np.float32)
    return Decoded(np.ascontiguousarray(batch, dtype=np.float32), paths, labels, failures, infos)


def describe_failures(failures: Sequence[tuple[str, str]], limit: int = 5) -> str:
    """``"3 files: a.jpg (why); b.png (why); ..."`` for messages."""
    shown = "; ".join(f"{Path(p).name} ({why})" for p, why in failures[:limit])
    more = f"; and {len(failures) - limit} more" if len(failures) > limit else ""
    return f"{len(failures)} file(s): {shown}{more}"
