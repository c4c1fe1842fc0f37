"""Discover a detection dataset (YOLO ``data.yaml`` or COCO JSON), read it, split it, convert it.

Torch-free: training, calibration, validation and ``edgetl data check`` share it. The label records and
every check on them (the issue kinds and what happens to each) are `edgetl.data.labels`; the formats
are `edgetl.data.yolo` and `edgetl.data.coco`; this module chooses between them. `load_detection_data`
applies the label checks non-strictly (clipping and dropping, with a report) unless ``strict=True``
makes any problem an error (`BadInputError`, exit code 2) listing counts and files.
"""

from __future__ import annotations

import random
from pathlib import Path

from edgetl.data import coco, yolo
from edgetl.data.labels import (  # noqa: F401  (re-exported: the records importers know from here)
    ISSUE_KINDS,
    OUTSIDE_TOLERANCE_PX,
    DetectionData,
    DetSample,
    LabelIssue,
    check_boxes,
    read_image_size,
)
from edgetl.errors import BadInputError


def load_detection_data(
    path: str | Path,
    *,
    strict: bool = False,
    verify_images: bool = True,
    val_fraction: float = 0.2,
    seed: int = 0,
) -> DetectionData:
    """Read a detection dataset and check its labels.

    Args:
        path: an Ultralytics-style ``data.yaml`` (or a folder holding one), a COCO JSON file (the train
            split; a sibling whose name has ``val`` for ``train`` is the val split), or a folder with
            ``annotations/*.json`` as `edgetl data convert --to coco` writes it.
        strict: raise `BadInputError` when any label problem is found, instead of clipping/dropping.
        verify_images: decode every image fully (finds truncated files; slower on big datasets).
        val_fraction, seed: without a val split, a seeded random ``val_fraction`` of train becomes val.

    Raises:
        BadInputError: the dataset cannot be read (missing files, bad YAML/JSON, no images), or
            ``strict`` and any label problem.
    """
    data = read_detection_dataset(path, verify_images=verify_images)
    path = data.root or Path(path)
    if not data.val and data.train:
        data.train, data.val = split_samples(data.train, val_fraction, seed)
        data.val_source = "split"
    if strict and data.issues:
        raise BadInputError(
            f"{path}: {len(data.issues)} label problem(s) found (strict mode)\n{data.report(max_files=10)}",
            hint="fix the files listed, or run without --strict to clip/drop them with this report",
        )
    if not data.train:
        raise BadInputError(f"{path}: no usable training images", hint=data.report(max_files=5))
    return data


def read_detection_dataset(path: str | Path, *, verify_images: bool = True) -> DetectionData:
    """Read a YOLO or COCO dataset as it is: issues collected, no val split carved, never strict.

    Args:
        path: data.yaml, a COCO JSON, or a folder holding either (see `load_detection_data`).
        verify_images: decode every image fully.
    """
    path = Path(path)
    if path.is_dir():
        found = _find_dataset_file(path)
        if found is None:
            raise BadInputError(
                f"{path}: no data.yaml and no annotations/*.json found",
                hint="pass the data.yaml of a YOLO dataset or a COCO instances JSON",
            )
        path = found
    if not path.is_file():
        raise BadInputError(f"dataset not found: {path}", hint="pass a data.yaml or a COCO JSON file")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return yolo.read_yolo_dataset(path, verify_images=verify_images)
    if suffix == ".json":
        return coco.read_coco_dataset(path, verify_images=verify_images)
    raise BadInputError(f"{path}: expected a .yaml (YOLO) or .json (COCO) dataset file")


def _find_dataset_file(folder: Path) -> Path | None:
    for name in ("data.yaml", "data.yml", "dataset.yaml"):
        if (folder / name).is_file():
            return folder / name
    jsons = sorted((folder / "annotations").glob("*.json")) if (folder / "annotations").is_dir() else []
    trains = [p for p in jsons if "train" in p.stem]
    return trains[0] if trains else (jsons[0] if jsons else None)


def split_samples(samples: list[DetSample], val_fraction: float, seed: int) -> tuple[list[DetSample], list[DetSample]]:
    """Seeded random split; keeps at least one training image."""
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    n_val = min(len(samples) - 1, max(1, round(len(samples) * val_fraction))) if len(samples) > 1 else 0
    val_idx = set(order[:n_val])
    train = [s for i, s in enumerate(samples) if i not in val_idx]
    val = [s for i, s in enumerate(samples) if i in val_idx]
    return train, val


def convert_dataset(
    src: str | Path, to: str, out_dir: str | Path, *, overwrite: bool = False, verify_images: bool = True
) -> tuple[Path, DetectionData]:
    """Convert a YOLO or COCO dataset to ``to`` (``"coco"`` or ``"yolo"``).

    Boxes with problems are clipped/dropped as the label checks say; the returned data's ``issues``
    lists them, so the caller can show or refuse them.

    Returns:
        ``(written dataset file, the data read from src)``.
    """
    if to not in ("coco", "yolo"):
        raise BadInputError(f"unknown target format {to!r}; expected 'coco' or 'yolo'")
    data = read_detection_dataset(src, verify_images=verify_images)
    if not data.train:
        raise BadInputError(f"{src}: no usable images to convert", hint=data.report(max_files=5))
    writer = coco.write_coco_dataset if to == "coco" else yolo.write_yolo_dataset
    return writer(data, out_dir, overwrite=overwrite), data
