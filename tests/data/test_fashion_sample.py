"""The shipped Fashion-MNIST sample: the asset, the ImageFolder writer and ``edgetl data sample fashion``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.cli.main import cli
from edgetl.data import load_classification_data
from edgetl.data.samples import FASHION_NAMES, fashion_shipped_counts, load_fashion_asset, write_fashion
from edgetl.errors import BadInputError


def _digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.png")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def test_asset_is_a_balanced_subset_of_the_training_split() -> None:
    asset = load_fashion_asset()
    assert asset["images"].shape == (1300, 28, 28) and asset["images"].dtype == np.uint8
    assert np.bincount(asset["labels"], minlength=10).tolist() == [130] * 10
    assert len(np.unique(asset["indices"])) == 1300 and int(asset["indices"].max()) < 60_000
    assert fashion_shipped_counts() == {"train": 100, "val": 30}
    assets = Path(__file__).parents[2] / "edgetl" / "data" / "assets"
    assert (assets / "fashion_mnist.LICENSE").is_file() and (assets / "fashion_mnist.md").is_file()


def test_writer_counts_classes_and_pixels(tmp_path: Path) -> None:
    summary = write_fashion(tmp_path / "fm", train_per_class=3, val_per_class=2)
    assert summary["train_images"] == 30 and summary["val_images"] == 20 and summary["classes"] == 10
    data = load_classification_data(tmp_path / "fm")
    assert data.classes == sorted(FASHION_NAMES) and data.val_source == "val"
    assert len(data.train) == 30 and len(data.val) == 20 and not data.skipped
    with Image.open(data.train[0].path) as image:
        assert image.mode == "L" and image.size == (28, 28)
    # file names are the images' indices in the official training split, pixels unchanged at 28 px
    asset = load_fashion_asset()
    index = int(Path(data.train[0].path).stem)
    row = int(np.flatnonzero(asset["indices"] == index)[0])
    assert np.array_equal(np.asarray(Image.open(data.train[0].path)), asset["images"][row])
    assert FASHION_NAMES[int(asset["labels"][row])] == data.classes[data.train[0].label]


def test_writer_is_deterministic_nested_and_upscales(tmp_path: Path) -> None:
    write_fashion(tmp_path / "a", train_per_class=4, val_per_class=2, size=40)
    write_fashion(tmp_path / "b", train_per_class=4, val_per_class=2, size=40)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    write_fashion(tmp_path / "c", train_per_class=8, val_per_class=2, size=40)
    small = {p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png")}
    large = {p.relative_to(tmp_path / "c") for p in (tmp_path / "c").rglob("*.png")}
    assert small < large  # a smaller sample is contained in a larger one
    with Image.open(next((tmp_path / "a").rglob("*.png"))) as image:
        assert image.size == (40, 40)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"train_per_class": 101}, "ships 100"), ({"val_per_class": 31}, "ships 30"),
     ({"train_per_class": 0}, "0 train"), ({"size": 4}, "too small")],
    ids=["train-over", "val-over", "zero", "tiny"],
)
def test_writer_refuses_what_is_not_shipped(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(BadInputError, match=message):
        write_fashion(tmp_path / "fm", **kwargs)
    assert not (tmp_path / "fm").exists()


def test_cli_writes_the_sample_and_exits_2_on_bad_counts(tmp_path: Path) -> None:
    runner = CliRunner()
    ok = runner.invoke(cli, ["data", "sample", "fashion", str(tmp_path / "fm"), "--per-class", "2",
                             "--val-per-class", "1", "--size", "32", "--json"])
    assert ok.exit_code == 0, ok.output
    assert sorted(p.name for p in (tmp_path / "fm" / "train").iterdir()) == sorted(FASHION_NAMES)
    assert len(list((tmp_path / "fm" / "val").rglob("*.png"))) == 10
    too_many = runner.invoke(cli, ["data", "sample", "fashion", str(tmp_path / "more"), "--per-class", "500"])
    assert too_many.exit_code == 2 and "ships 100" in too_many.output
    exists = runner.invoke(cli, ["data", "sample", "fashion", str(tmp_path / "fm")])
    assert exists.exit_code == 2 and "--overwrite" in exists.output
