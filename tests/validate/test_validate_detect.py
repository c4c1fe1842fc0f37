"""Detector bundles through `edgetl validate` (mAP of both, delta, box agreement, gate) and budget mode."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli

SIZE = 64


@pytest.fixture(scope="module")
def det_run(tmp_path_factory: pytest.TempPathFactory):
    """A detector trained for one epoch on a tiny shapes sample (8 train, 4 val images, 64 px)."""
    from edgetl.data.shapes import write_shapes
    from edgetl.train.detect import DetectTrainConfig, train_detector

    root = tmp_path_factory.mktemp("vdet")
    write_shapes(root / "shapes", n_train=8, n_val=4, size=96, seed=0)
    cfg = DetectTrainConfig(data=str(root / "shapes" / "data.yaml"), img_size=SIZE, epochs=1, batch_size=4,
                            strategy="full", out=str(root / "run"), threads=1, device="cpu")
    return train_detector(cfg, progress=False), root / "shapes" / "data.yaml"


@pytest.fixture(scope="module")
def det_bundle(det_run, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained detector exported to an FP32 bundle (which records its dataset)."""
    from edgetl.export import export_checkpoint

    out = tmp_path_factory.mktemp("vdet-bundle") / "bundle"
    export_checkpoint(det_run[0].best_checkpoint, out, golden=2)
    return out


@pytest.fixture
def det_copy(det_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(det_bundle, tmp_path / "bundle"))


def test_validate_detect_reports_map_of_both_and_passes(det_copy: Path):
    res = CliRunner().invoke(cli, ["validate", str(det_copy), "--candidate", "fp32", "--latency-runs", "2",
                                   "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    ref, cand, delta = (doc["metrics"][k] for k in ("reference", "candidate", "delta"))
    assert doc["images"]["count"] == 4 and ref["images"] == 4 and ref["instances"] > 0
    for key in ("map50", "map"):
        assert 0.0 <= ref[key] <= 1.0 and cand[key] == pytest.approx(ref[key]) and delta[key] == pytest.approx(0)
    assert [c["name"] for c in doc["checks"]] == ["map_drop_points"] and doc["checks"][0]["limit"] == 1.0
    agree = doc["agreement"]
    assert agree["recall_of_reference"] == 1.0 and agree["precision_vs_reference"] == 1.0
    assert "mAP@0.5:0.95" in res.stderr and "PASSED" in res.stderr
    manifest = json.loads((det_copy / "manifest.json").read_text())
    assert manifest["validation"]["results"]["model.onnx"]["metrics"]["reference"]["map"] == ref["map"]
    assert "| map |" in (det_copy / "report.md").read_text()


def test_validate_detect_gate_fails_with_impossible_budget(det_copy: Path):
    res = CliRunner().invoke(cli, ["validate", str(det_copy), "--candidate", "fp32", "--latency-runs", "1",
                                   "--max-map-drop", "-1"])
    assert res.exit_code == 1, res.output
    assert "map_drop_points" in res.stderr and "FAILED" in res.stderr
    assert json.loads((det_copy / "report.json").read_text())["passed"] is False


def test_validate_detect_needs_labelled_images(det_copy: Path):
    """A plain folder of images has no boxes to score mAP against: a clear usage error, not a crash."""
    data = json.loads((det_copy / "manifest.json").read_text())["provenance"]["dataset"]
    loose = det_copy.parent / "loose"
    loose.mkdir()
    for image in sorted((Path(data).parent / "images" / "val").iterdir())[:2]:
        shutil.copy(image, loose)
    res = CliRunner().invoke(cli, ["validate", str(det_copy), "--candidate", "fp32", "--data", str(loose)])
    assert res.exit_code == 2 and "data.yaml" in res.output


def test_quantize_budget_on_detector_scores_map(det_copy: Path):
    """`--max-drop` on a detector bundle: mAP points against the dataset's boxes, recorded in the manifest."""
    res = CliRunner().invoke(cli, ["quantize", str(det_copy), "--precision", "int8", "--calib-size", "8",
                                   "--method", "minmax", "--max-drop", "1.0", "--val-size", "4", "--no-qat", "--json"])
    assert res.exit_code in (0, 1), res.output
    budget = json.loads((det_copy / "manifest.json").read_text())["quantization"]["int8"]["budget"]
    step0 = budget["steps"][0]
    assert step0["unit"] is None and {"map", "map50", "reference_map", "drop", "agreement"} <= set(step0)
    assert step0["drop"] == pytest.approx(100.0 * (step0["reference_map"] - step0["map"]))
    assert isinstance(budget["kept_layers"], list) and budget["within_budget"] == (res.exit_code == 0)
    # The decode tail's ops have no INT8 kernel: said once on stderr (the quantizer's warning, not also a log line
    # of its own), and in the document.
    assert sum("no INT8 kernel" in line for line in res.stderr.splitlines()) == 1
    assert sum("no INT8 kernel" in w for w in json.loads(res.stdout)["warnings"]) == 1


@pytest.mark.slow
def test_quantize_budget_on_detector_keeps_layers(det_copy: Path):
    """An unreachable budget keeps the most sensitive layers (up to --max-kept) and says so."""
    from edgetl.errors import GateFailedError
    from edgetl.export.onnx_graph import load_onnx
    from edgetl.quantize import quantize_bundle
    from edgetl.quantize.int8 import check_support

    layers = check_support(load_onnx(det_copy / "model.onnx"))["layers"][:3]
    with pytest.raises(GateFailedError, match=r"mAP@0\.5:0\.95 drop"):
        quantize_bundle(det_copy, "int8", calib_size=8, method="minmax", max_drop=-1.0, val_size=4,
                        budget_layers=layers, max_kept=2)
    manifest = json.loads((det_copy / "manifest.json").read_text())
    info = manifest["quantization"]["int8"]
    assert len(info["kept_layers"]) == 2 and set(info["kept_layers"]) <= set(layers)
    assert {s["name"] for s in info["budget"]["sensitivity"]} == set(layers)
    assert [s["kept"] for s in info["budget"]["steps"]] == [0, 1, 2]
    assert any(a["path"] == "model.int8.onnx" and a["precision"] == "mixed" for a in manifest["artifacts"])


@pytest.mark.slow
def test_evaluate_cli_passes_split_and_batch_size_to_detectors(det_run):
    run, data = det_run
    args = ["evaluate", str(run.best_checkpoint), "--data", str(data), "--batch-size", "3", "--device", "cpu", "--json"]
    train = CliRunner().invoke(cli, [*args, "--split", "train"])
    assert train.exit_code == 0, train.output
    doc = json.loads(train.stdout)
    assert doc["split"] == "train" and doc["images"] == 8
    bad = CliRunner().invoke(cli, [*args, "--split", "all"])
    assert bad.exit_code == 2


def test_task_metrics_on_hand_made_outputs(tmp_path: Path):
    """Outputs equal to the ground truth score mAP 1.0; shifted boxes lose mAP and fail the gate."""
    from types import SimpleNamespace

    import numpy as np

    from edgetl.data.detection import load_detection_data
    from edgetl.data.shapes import write_shapes
    from edgetl.preprocess import LetterboxInfo
    from edgetl.validate.detection import task_metrics

    write_shapes(tmp_path / "s", n_train=2, n_val=3, size=64, seed=1)
    data = load_detection_data(tmp_path / "s" / "data.yaml")
    classes, val = list(data.classes), list(data.val)
    anchors = max(len(s.labels) for s in val) + 1
    boxes = np.zeros((len(val), anchors, 4), np.float32)
    scores = np.zeros((len(val), anchors, len(classes)), np.float32)
    for n, sample in enumerate(val):
        boxes[n, : len(sample.labels)] = sample.boxes
        scores[n, np.arange(len(sample.labels)), sample.labels] = 0.9
    infos = [LetterboxInfo(1.0, 0, 0, s.width, s.height) for s in val]
    dataset = str(tmp_path / "s" / "data.yaml")
    bundle = SimpleNamespace(labels=classes, dataset=dataset,
                             manifest={"postprocess": {"type": "detect", "outputs": "boxes_scores"},
                                       "provenance": {"dataset": dataset}})
    decoded = SimpleNamespace(paths=[s.path for s in val], infos=infos)
    ref = {"boxes": boxes, "scores": scores}
    same = task_metrics(bundle, decoded, ref, ref, max_map_drop=1.0)
    assert same["metrics"]["reference"]["map"] == pytest.approx(1.0) and same["metrics"]["delta"]["map"] == 0.0
    assert same["agreement"]["recall_of_reference"] == 1.0 and same["checks"][0]["passed"]
    shifted = task_metrics(bundle, decoded, ref, {"boxes": boxes + 3.0, "scores": scores}, max_map_drop=1.0)
    drop = shifted["metrics"]["delta"]["map_drop_points"]
    assert drop > 1.0 and drop == pytest.approx(-shifted["metrics"]["delta"]["map"])
    assert shifted["metrics"]["candidate"]["map"] < 1.0 and not shifted["checks"][0]["passed"]
    assert shifted["agreement"]["matched_iou_mean"] < 1.0
