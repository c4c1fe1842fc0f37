"""Fixtures for the detection data tests: a small shapes sample and hand-made YOLO datasets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The shapes sample, tiny: 12 train and 4 val images at 96 px."""
    from edgetl.data.shapes import write_shapes

    out = tmp_path_factory.mktemp("det") / "shapes"
    write_shapes(out, n_train=12, n_val=4, size=96, seed=3)
    return out


def _write_image(path: Path, width: int, height: int, colour: tuple[int, int, int] = (40, 80, 120)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((height, width, 3), colour, dtype=np.uint8)).save(path)
    return path


def _make_yolo(root: Path, labels: dict[str, str], sizes: dict[str, tuple[int, int]], names=("cat", "dog")) -> Path:
    """A YOLO dataset with train images ``sizes`` and label texts ``labels`` (by stem); returns data.yaml."""
    for stem, (w, h) in sizes.items():
        _write_image(root / "images" / "train" / f"{stem}.png", w, h)
    for stem, text in labels.items():
        path = root / "labels" / "train" / f"{stem}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (root / "data.yaml").write_text(f"train: images/train\nnames: {list(names)}\n")
    return root / "data.yaml"


@pytest.fixture
def make_yolo():
    """Builder of hand-made YOLO datasets: ``make_yolo(root, labels_by_stem, sizes_by_stem, names)``."""
    return _make_yolo


@pytest.fixture
def write_image():
    """Writer of a plain-colour PNG: ``write_image(path, width, height, colour)``."""
    return _write_image
