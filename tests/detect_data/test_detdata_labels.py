"""Label checks, YOLO <-> COCO conversion, the shapes sample and the data CLI commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from edgetl.data.detection import convert_dataset, load_detection_data, read_detection_dataset
from edgetl.errors import BadInputError


def _kinds(data) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for issue in data.issues:
        out.setdefault(issue.kind, []).append(Path(issue.file).name)
    return out


@pytest.fixture
def messy(tmp_path: Path, make_yolo, write_image) -> Path:
    """One dataset with each kind of label problem, each in its own file."""
    yaml_path = make_yolo(
        tmp_path / "messy",
        labels={
            "good": "0 0.5 0.5 0.2 0.4\n1 0.25 0.25 0.1 0.1\n",
            "outside": "0 0.95 0.5 0.2 0.2\n",  # x2 = 1.05 -> clipped to the image
            "zero": "1 0.5 0.5 0.0 0.3\n0 0.5 0.5 0.2 0.2\n",
            "unknown": "7 0.5 0.5 0.2 0.2\n",
            "garbage": "0 0.5 abc 0.2 0.2\n0 0.5\n",
            "orphan": "0 0.5 0.5 0.2 0.2\n",  # no image
        },
        sizes={
            "good": (100, 50),
            "outside": (100, 50),
            "zero": (100, 50),
            "unknown": (80, 80),
            "garbage": (64, 64),
            "nolabel": (64, 64),
            "broken": (64, 64),
        },
    )
    (tmp_path / "messy" / "images" / "train" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    (tmp_path / "messy" / "labels" / "train" / "broken.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    return yaml_path


def test_each_problem_is_reported_with_its_file(messy: Path) -> None:
    data = read_detection_dataset(messy)
    kinds = _kinds(data)
    assert kinds["box_outside"] == ["outside.txt"]
    assert kinds["zero_area"] == ["zero.txt"]
    assert kinds["unknown_class"] == ["unknown.txt"]
    assert kinds["bad_label"] == ["garbage.txt", "garbage.txt"]
    assert kinds["missing_image"] == ["orphan.txt"]
    assert kinds["missing_label"] == ["nolabel.png"]
    assert kinds["corrupt_image"] == ["broken.png"]
    assert data.issue_counts() == {
        "missing_image": 1,
        "missing_label": 1,
        "corrupt_image": 1,
        "bad_label": 2,
        "unknown_class": 1,
        "box_outside": 1,
        "zero_area": 1,
    }
    by_name = {s.path.stem: s for s in data.train}
    assert "broken" not in by_name  # corrupt images are dropped, background images kept
    assert len(by_name["nolabel"].labels) == 0
    np.testing.assert_allclose(by_name["good"].boxes, [[40, 15, 60, 35], [20, 10, 30, 15]], atol=1e-4)
    np.testing.assert_allclose(by_name["outside"].boxes, [[85, 20, 100, 30]], atol=1e-4)  # clipped
    np.testing.assert_array_equal(by_name["zero"].labels, [0])  # zero-area box dropped, the other kept
    assert len(by_name["unknown"].labels) == 0
    report = data.report()
    assert "outside.txt" in report and "box_outside 1" in report


def test_strict_mode_is_an_error_naming_files(messy: Path) -> None:
    with pytest.raises(BadInputError) as err:
        load_detection_data(messy, strict=True)
    text = str(err.value)
    assert "8 label problem(s)" in text
    for name in ("outside.txt", "zero.txt", "unknown.txt", "orphan.txt", "broken.png"):
        assert name in text


def test_clean_dataset_passes_strict_and_carves_val(tmp_path: Path, make_yolo) -> None:
    yaml_path = make_yolo(
        tmp_path / "clean",
        labels={f"im{i}": "0 0.5 0.5 0.2 0.2\n" for i in range(5)},
        sizes={f"im{i}": (64, 48) for i in range(5)},
    )
    data = load_detection_data(yaml_path, strict=True)
    assert not data.issues and data.val_source == "split"
    assert len(data.train) == 4 and len(data.val) == 1


def test_names_dict_and_nc_mismatch(tmp_path: Path, make_yolo) -> None:
    yaml_path = make_yolo(tmp_path / "d", labels={"a": "1 0.5 0.5 0.2 0.2\n"}, sizes={"a": (32, 32), "b": (32, 32)})
    yaml_path.write_text("train: images/train\nval: images/train\nnames: {0: cat, 1: dog}\nnc: 2\n")
    data = load_detection_data(yaml_path)
    assert data.classes == ["cat", "dog"]
    yaml_path.write_text("train: images/train\nnames: [cat, dog]\nnc: 3\n")
    with pytest.raises(BadInputError, match="nc is 3 but 2 names"):
        load_detection_data(yaml_path)


def test_yolo_coco_round_trip_is_lossless(shapes_dir: Path, tmp_path: Path) -> None:
    original = load_detection_data(shapes_dir / "data.yaml", strict=True)
    coco_json, _ = convert_dataset(shapes_dir / "data.yaml", "coco", tmp_path / "coco")
    as_coco = load_detection_data(coco_json, strict=True)
    back_yaml, _ = convert_dataset(coco_json, "yolo", tmp_path / "yolo")
    back = load_detection_data(back_yaml, strict=True)
    for other in (as_coco, back):
        assert other.classes == original.classes
        for split in ("train", "val"):
            a, b = getattr(original, split), getattr(other, split)
            assert [s.path.name for s in a] == [s.path.name for s in b]
            for sa, sb in zip(a, b):
                assert (sa.width, sa.height) == (sb.width, sb.height)
                np.testing.assert_array_equal(sa.labels, sb.labels)
                np.testing.assert_allclose(sa.boxes, sb.boxes, atol=1e-3)
                assert sa.path.read_bytes() == sb.path.read_bytes()
    doc = json.loads(coco_json.read_text())
    assert [c["name"] for c in doc["categories"]] == original.classes
    with pytest.raises(BadInputError, match="not empty"):
        convert_dataset(shapes_dir / "data.yaml", "coco", tmp_path / "coco")


def test_coco_checks_report_files(tmp_path: Path, write_image) -> None:
    write_image(tmp_path / "images" / "train" / "a.png", 50, 40)
    doc = {
        "images": [
            {"id": 1, "file_name": "a.png", "width": 50, "height": 40},
            {"id": 2, "file_name": "gone.png", "width": 50, "height": 40},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 3, "bbox": [10, 10, 10, 10], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 9, "bbox": [10, 10, 10, 10], "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 3, "bbox": [45, 5, 20, 10], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 5, "bbox": [5, 5, 0, 10], "iscrowd": 0},
        ],
        "categories": [{"id": 3, "name": "cat"}, {"id": 5, "name": "dog"}],
    }
    path = tmp_path / "annotations" / "instances_train.json"
    path.parent.mkdir()
    path.write_text(json.dumps(doc))
    data = read_detection_dataset(path)
    assert data.classes == ["cat", "dog"]
    assert data.issue_counts() == {"missing_image": 1, "unknown_class": 1, "box_outside": 1, "zero_area": 1}
    assert any("gone.png" in i.file for i in data.issues)
    np.testing.assert_allclose(data.train[0].boxes, [[10, 10, 20, 20], [45, 5, 50, 15]])


def test_shapes_sample_is_deterministic_and_boxes_valid(shapes_dir: Path, tmp_path: Path) -> None:
    from edgetl.data.shapes import SHAPE_CLASSES, write_shapes

    again = tmp_path / "again"
    write_shapes(again, n_train=12, n_val=4, size=96, seed=3)
    for sub in ("images/train", "labels/train", "images/val", "labels/val"):
        for f in sorted((shapes_dir / sub).iterdir()):
            assert f.read_bytes() == (again / sub / f.name).read_bytes(), f
    other = tmp_path / "other"
    write_shapes(other, n_train=2, n_val=1, size=96, seed=4)
    assert (other / "images/train/train_00000.png").read_bytes() != (
        again / "images/train/train_00000.png"
    ).read_bytes()
    data = load_detection_data(shapes_dir / "data.yaml", strict=True)
    assert data.classes == SHAPE_CLASSES
    assert len(data.train) == 12 and len(data.val) == 4
    seen = set()
    for s in data.train + data.val:
        assert max(s.width, s.height) == 96
        assert 1 <= len(s.labels) <= 5
        assert (s.boxes[:, 2] > s.boxes[:, 0]).all() and (s.boxes[:, 3] > s.boxes[:, 1]).all()
        assert (s.boxes >= 0).all() and (s.boxes[:, 2] <= s.width).all() and (s.boxes[:, 3] <= s.height).all()
        seen.update(s.labels.tolist())
    assert len(seen) >= 4
    # a real photo background, not a flat canvas
    pixels = np.asarray(Image.open(data.train[0].path).convert("RGB"))
    assert pixels.std() > 10


def test_cli_check_convert_sample(tmp_path: Path, messy: Path) -> None:
    from edgetl.cli.data_detect import check, convert, sample_shapes

    runner = CliRunner()
    out = tmp_path / "s"
    res = runner.invoke(
        sample_shapes, [str(out), "--train", "3", "--val", "1", "--size", "64", "--seed", "1", "--json"]
    )
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["train_images"] == 3
    res = runner.invoke(sample_shapes, [str(out), "--train", "3"])
    assert res.exit_code == 2 and "--overwrite" in res.stderr
    res = runner.invoke(check, [str(out / "data.yaml"), "--strict", "--json"])
    assert res.exit_code == 0 and json.loads(res.stdout)["passed"] is True
    res = runner.invoke(check, [str(messy), "--strict", "--json"])
    assert res.exit_code == 2
    doc = json.loads(res.stdout)
    assert doc["issue_counts"]["zero_area"] == 1 and any(i["file"].endswith("zero.txt") for i in doc["issues"])
    res = runner.invoke(check, [str(messy)])
    assert res.exit_code == 0 and "unknown.txt" in res.stderr
    res = runner.invoke(convert, [str(out / "data.yaml"), "--to", "coco", "-o", str(tmp_path / "c"), "--json"])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "c" / "annotations" / "instances_val.json").is_file()
    res = runner.invoke(convert, [str(messy), "--to", "coco", "-o", str(tmp_path / "m"), "--strict"])
    assert res.exit_code == 2 and "strict" in res.stderr
