"""Dataset discovery edge cases and the bad-file-tolerant torch dataset."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from edgetl.data import load_classification_data
from edgetl.errors import BadInputError


def _png(path: Path, value: int = 128, size: int = 24) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, dtype=np.uint8)).save(path)
    return path


def _folder(root: Path, classes: dict[str, int], split: str = "train") -> Path:
    for name, count in classes.items():
        for i in range(count):
            _png(root / split / name / f"{i}.png", value=20 * i)
    return root


def test_corrupt_truncated_and_non_image_files_are_skipped_with_names(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"cat": 4, "dog": 4})
    good = (root / "train" / "cat" / "0.png").read_bytes()
    (root / "train" / "cat" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "train" / "dog" / "garbage.jpg").write_bytes(b"this is not a jpeg")
    (root / "train" / "dog" / "notes.txt").write_text("hello")
    data = load_classification_data(root, seed=0)
    names = sorted(Path(p).name for p, _ in data.skipped)
    assert names == ["garbage.jpg", "notes.txt", "truncated.png"]
    assert data.summary()["skipped"] == 3
    assert len(data.train) + len(data.val) == 8


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({"cat": 3, "dog": 0}, "no usable images"),
        ({"cat": 3}, "at least 2"),
    ],
    ids=["empty-class", "single-class"],
)
def test_empty_or_single_class_is_a_clear_error(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    root = _folder(tmp_path / "ds", layout)
    for name in layout:
        (root / "train" / name).mkdir(parents=True, exist_ok=True)
    with pytest.raises(BadInputError, match=message):
        load_classification_data(root)


def test_mismatched_train_val_classes_are_refused(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"cat": 3, "dog": 3})
    _folder(root, {"cat": 2, "bird": 2}, split="val")
    with pytest.raises(BadInputError, match=r"extra \['bird'\], missing \['dog'\]"):
        load_classification_data(root)


def test_csv_layout_with_relative_paths(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / "img" / f"{i}.png", value=10 * i)
    rows = ["path,label"] + [f"img/{i}.png,{'a' if i % 2 else 'b'}" for i in range(6)]
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n")
    data = load_classification_data(tmp_path / "list.csv", val_fraction=0.34, seed=0)
    assert data.classes == ["a", "b"] and data.val_source == "split"
    assert len(data.train) == 4 and len(data.val) == 2
    assert {s.label for s in data.val} == {0, 1}  # stratified


def test_seeded_split_is_reproducible_and_seed_dependent(tmp_path: Path) -> None:
    root = _folder(tmp_path / "ds", {"a": 10, "b": 10})
    shutil.rmtree(root / "val", ignore_errors=True)

    def val_names(seed: int) -> list[str]:
        return sorted(str(s.path) for s in load_classification_data(root, seed=seed).val)

    assert val_names(1) == val_names(1)
    assert val_names(1) != val_names(2)
    assert len(val_names(1)) == 4


def test_torch_dataset_survives_a_file_that_breaks_mid_epoch(tmp_path: Path) -> None:
    torch = pytest.importorskip("torch")
    from edgetl.data.torch_datasets import BadItem, ImageDataset, make_loader
    from edgetl.data.transforms import SpecTransform
    from edgetl.preprocess import PreprocessSpec

    root = _folder(tmp_path / "ds", {"a": 3, "b": 3})
    data = load_classification_data(root, val_fraction=0.34)
    broken = data.train[0].path
    Path(broken).write_bytes(b"\x89PNG broken after discovery")  # discovery saw a good file
    dataset = ImageDataset(data.train, SpecTransform(PreprocessSpec(size=(16, 16))))
    assert isinstance(dataset[0], BadItem) and "cannot decode" in dataset[0].reason
    batches = list(make_loader(dataset, batch_size=2, shuffle=False))
    images = sum(len(x) for x, _, _ in batches if x is not None)
    bad = [b for _, _, failed in batches for b in failed]
    assert images == len(data.train) - 1
    assert [b.path for b in bad] == [str(broken)]
    assert batches[-1][0].dtype == torch.float32
