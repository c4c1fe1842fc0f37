"""Detector training end to end on a tiny shapes sample: run directory, evaluation, CLI, deployment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli

SIZE = 64


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.shapes import write_shapes

    out = tmp_path_factory.mktemp("det") / "shapes"
    write_shapes(out, n_train=8, n_val=4, size=96, seed=0)
    return out / "data.yaml"


@pytest.fixture(scope="module")
def run(shapes: Path, tmp_path_factory: pytest.TempPathFactory):
    from edgetl.train.detect import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(data=str(shapes), img_size=SIZE, epochs=2, batch_size=4, freeze_epochs=1,
                            strategy="full", out=str(tmp_path_factory.mktemp("runs") / "det"), threads=1,
                            device="cpu")
    return train_detector(cfg, progress=False)


def test_run_directory_and_history(run):
    names = {p.name for p in run.run_dir.iterdir()}
    assert {"best.pt", "last.pt", "metrics.json", "curves.png", "config.yaml"} <= names
    assert [h["backbone"] for h in run.history] == ["frozen", "full"]  # --freeze-epochs 1 then the strategy
    assert all(h["steps"] == 2 for h in run.history)
    assert all(h["images"] == 2 * 4 for h in run.history)  # full batches only: a last partial one is dropped
    assert run.history[-1]["train_loss"] < run.history[0]["train_loss"] * 1.5
    doc = json.loads((run.run_dir / "metrics.json").read_text())
    assert doc["task"] == "detect" and doc["status"] == "completed" and len(doc["history"]) == 2
    assert 0.0 <= doc["best"]["map"] <= 1.0 and doc["classes"][0] == "circle"


def test_checkpoint_and_evaluation(run, shapes):
    from edgetl.train.checkpoint import load_checkpoint
    from edgetl.train.evaluate import evaluate_detector_checkpoint

    _, meta = load_checkpoint(run.best_checkpoint)
    assert meta.task == "detect" and meta.model == "yolo-lite0-n"
    assert meta.preprocess.resize == "letterbox" and meta.preprocess.size == (SIZE, SIZE)
    assert meta.train_config["freeze_epochs"] == 1 and "dataset_digest" in meta.provenance
    result = evaluate_detector_checkpoint(run.best_checkpoint, shapes)
    assert result["task"] == "detect" and result["images"] == 4
    assert {"map50", "map", "per_class"} <= set(result)
    assert result["map"] == pytest.approx(run.best_map, abs=1e-6)  # the same code path as training validation


def test_cli_train_detect_json_and_bad_input(shapes, tmp_path):
    config = tmp_path / "det.yaml"
    config.write_text(f"img-size: {SIZE}\nbatch-size: 4\nthreads: 1\n")
    out = tmp_path / "cli-run"
    res = CliRunner().invoke(cli, ["train", "detect", "--data", str(shapes), "--config", str(config),
                                   "--epochs", "1", "--max-steps", "1", "--strategy", "frozen", "--out", str(out),
                                   "--device", "cpu", "--quiet", "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["stopped"] == "max_steps" and Path(doc["best_checkpoint"]).is_file()
    bad = CliRunner().invoke(cli, ["train", "detect", "--data", str(shapes), "--img-size", "70", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "multiple of 32" in bad.output
    unknown = CliRunner().invoke(cli, ["train", "detect", "--data", str(shapes), "--model", "yolo-big"])
    assert unknown.exit_code == 2 and "unknown detector" in unknown.output
    missing = CliRunner().invoke(cli, ["train", "detect", "--data", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2


@pytest.mark.slow
def test_export_quantize_validate_predict(run, shapes, tmp_path):
    """train -> export (host NMS and in-graph NMS) -> INT8 -> mAP of both -> runtime predictions."""
    import numpy as np

    from edgetl import runtime
    from edgetl.detect.evaluate import eval_postprocess
    from edgetl.export import export_checkpoint
    from edgetl.quantize import quantize_bundle
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.validate.detection import validate_detection

    images = shapes.parent / "images"
    host = export_checkpoint(run.best_checkpoint, tmp_path / "host", parity_data=str(images / "val"))
    assert host.parity["passed"]
    manifest = json.loads((tmp_path / "host" / "manifest.json").read_text())
    assert manifest["task"] == "detect" and manifest["postprocess"]["outputs"] == "boxes_scores"
    assert manifest["preprocess"]["resize"] == "letterbox"

    quantized = quantize_bundle(tmp_path / "host", "int8", calib_data=str(images / "train"), calib_size=8)
    assert (tmp_path / "host" / "model.int8.onnx").is_file()
    # Detectors keep the sequential bias correction off by default (measured: `edgetl.quantize.sequential.BY_TASK`).
    assert quantized.info["sequential_correction"] is False
    assert not any("sequential" in w for w in quantized.warnings)
    post = eval_postprocess(manifest["postprocess"])
    spec = runtime.load(tmp_path / "host", backend="onnxruntime", precision="fp32").bundle.preprocess
    with OnnxRuntimeBackend(tmp_path / "host" / "model.onnx", device="cpu") as ref, \
            OnnxRuntimeBackend(tmp_path / "host" / "model.int8.onnx", device="cpu") as cand:
        report = validate_detection(ref.infer, cand.infer, str(shapes), spec, post, manifest["labels"])
    assert report["images"] == 4 and report["reference"]["map"] is not None
    assert report["reference"]["map"] == pytest.approx(run.best_map, abs=0.02)  # ORT FP32 == PyTorch eval

    # Parity images default to the val split of the dataset the checkpoint records.
    nms = export_checkpoint(run.best_checkpoint, tmp_path / "nms", nms="onnx")
    assert nms.graph["nms"] == "onnx" and "data.yaml" in nms.parity["source"]
    sample = sorted((images / "val").iterdir())[0]
    results = {}
    for name in ("host", "nms"):
        predictor = runtime.load(tmp_path / name, backend="onnxruntime", precision="fp32")
        assert predictor.output_names[0] in ("boxes", "num_detections")
        results[name] = predictor.predict(str(sample))
        predictor.close()
    a, b = results["host"], results["nms"]
    assert len(a) == len(b)
    if len(a):
        np.testing.assert_allclose(a.boxes, b.boxes, atol=1e-2)
        assert (a.labels == b.labels).all()
        from PIL import Image

        w, h = Image.open(sample).size
        assert (a.boxes[:, 2] <= w + 1e-3).all() and (a.boxes[:, 3] <= h + 1e-3).all()  # original pixels


def test_ctrl_c_then_resume_matches_an_uninterrupted_run(shapes, tmp_path):
    import torch

    from edgetl.train.checkpoint import load_checkpoint
    from edgetl.train.detect import DetectTrainConfig, train_detector

    def cfg(out: Path, **extra: object) -> DetectTrainConfig:
        return DetectTrainConfig(data=str(shapes), img_size=SIZE, epochs=2, batch_size=4, strategy="full",
                                 out=str(out), threads=1, device="cpu", **extra)

    straight = train_detector(cfg(tmp_path / "straight"), progress=False)

    def interrupt(step: int) -> None:
        if step == 3:  # 2 steps per epoch: inside the second epoch
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_detector(cfg(tmp_path / "cut"), progress=False, on_step=interrupt)
    raw, meta = load_checkpoint(tmp_path / "cut" / "last.pt")
    assert meta.epoch == 1 and raw["resume"]["step"] == 2 and raw["resume"]["ema_updates"] == 2
    assert json.loads((tmp_path / "cut" / "metrics.json").read_text())["status"] == "interrupted"
    resumed = train_detector(cfg(tmp_path / "cut", resume=tmp_path / "cut"), progress=False)
    assert [h["epoch"] for h in resumed.history] == [1, 2] and resumed.stopped == "completed"
    a = load_checkpoint(straight.last_checkpoint)[0]
    b = load_checkpoint(resumed.last_checkpoint)[0]
    for key in ("state_dict", "train_state_dict"):
        for name, value in a[key].items():
            assert torch.equal(value, b[key][name]), (key, name)
    assert resumed.best_map == pytest.approx(straight.best_map, abs=1e-9)


def test_resume_refuses_another_model_and_a_missing_file(shapes, run, tmp_path):
    from edgetl.errors import BadInputError
    from edgetl.train.detect import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(data=str(shapes), img_size=SIZE, epochs=3, batch_size=4, strategy="full",
                            out=str(tmp_path / "r"), threads=1, device="cpu", model="yolo-mbv3-n", weights="none",
                            resume=str(run.last_checkpoint))
    with pytest.raises(BadInputError, match="checkpoint of yolo-lite0-n"):
        train_detector(cfg, progress=False)
    res = CliRunner().invoke(cli, ["train", "detect", "--data", str(shapes), "--img-size", str(SIZE),
                                   "--resume", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "x"),
                                   "--device", "cpu", "--quiet"])
    assert res.exit_code == 2 and "checkpoint not found" in res.output


def test_ema_is_timms_model_ema_v3():
    import torch
    from timm.utils import ModelEmaV3

    from edgetl.train.engine import make_ema

    model = torch.nn.Linear(2, 2)
    ema = make_ema(model, decay=0.9, tau=1.0)
    assert isinstance(ema, ModelEmaV3)
    with torch.no_grad():
        model.weight.add_(1.0)
    before = ema.module.weight.clone()
    ema.step(model)
    d = 0.9 * (1 - torch.exp(torch.tensor(-1.0)))
    assert torch.allclose(ema.module.weight, before * d + model.weight * (1 - d), atol=1e-6)


def test_cli_config_yaml_of_a_run_is_reusable(shapes, tmp_path):
    import yaml

    first = tmp_path / "first"
    args = ["train", "detect", "--data", str(shapes), "--img-size", str(SIZE), "--batch-size", "4", "--threads", "1",
            "--epochs", "1", "--max-steps", "1", "--strategy", "frozen", "--device", "cpu", "--quiet", "--json"]
    res = CliRunner().invoke(cli, [*args, "--out", str(first)])
    assert res.exit_code == 0, res.output
    config = yaml.safe_load((first / "config.yaml").read_text())
    assert config["channels_last"] is True and config["resume"] is None
    again = CliRunner().invoke(cli, ["train", "detect", "--config", str(first / "config.yaml"), "--out",
                                     str(tmp_path / "again"), "--quiet", "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["history"][0]["train_loss"] == json.loads(res.stdout)["history"][0]["train_loss"]


@pytest.mark.slow
def test_qat_on_the_detector(run, shapes, tmp_path):
    """QAT runs the detector's INT8 graph (every conv INT8, decode in float) and scores it by mAP."""
    from edgetl.bundle import open_bundle
    from edgetl.export import export_checkpoint
    from edgetl.quantize.qat import QatSettings
    from edgetl.quantize.qat_api import qat_bundle

    export_checkpoint(run.best_checkpoint, tmp_path / "b", parity_data=str(shapes.parent / "images" / "val"))
    result = qat_bundle(tmp_path / "b", data=shapes, settings=QatSettings(epochs=1, batch_size=4), calib_size=8,
                        val_size=4)
    record = result.info.get("qat") or result.info["qat_attempt"]
    assert [h["epoch"] for h in record["history"]] == [0, 1] and record["history"][1]["loss"] >= 0
    assert "map" in record["qat"] and "map" in record["ptq"]
    art = open_bundle(tmp_path / "b").find(kind="onnx", precision="int8")[0]
    assert art.info["graph"]["float_layers"] == [] and art.info["float_decode_nodes"] > 0
