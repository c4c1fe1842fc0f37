"""Contract tests of ``edgetl compile --nms trt``: TensorRT's EfficientNMS plugin appended to a detector.

The fake (``fakegpu.py``) checks the plugin calls the way TensorRT would reject them: the plugin
library initialised before the creator lookup, the attribute names and types of EfficientNMS_TRT
version 1, plugin inputs that are tensors of the network, the old outputs unmarked and the plugin's
outputs marked. Its engine runs the graph with ONNX Runtime and EfficientNMS's semantics in numpy.
Whether TensorRT's own plugin agrees is for a real GPU (unverified here).
"""

from __future__ import annotations

from pathlib import Path

import fakegpu
import numpy as np
import pytest

from edgetl.bundle.manifest import open_bundle
from edgetl.compile import compile_bundle
from edgetl.errors import BadInputError

pytestmark = pytest.mark.contract

SIZE, CLASSES = 16, 3
POSTPROCESS = {"type": "detect", "outputs": "boxes_scores", "score_threshold": 0.3, "iou_threshold": 0.5,
               "max_detections": 10, "class_agnostic": False, "strides": [4]}


def _detector_onnx(path: Path) -> None:
    """A tiny detector graph: a stride-4 conv head decoded to boxes (N, 16, 4) xyxy and sigmoid scores (N, 16, C)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    grid = np.stack(np.meshgrid(np.arange(4), np.arange(4)), -1).reshape(-1, 2) * 4.0 + 2.0  # (16, 2) centres xy
    anchors = np.concatenate([grid - 3.0, grid + 3.0], 1)[None].astype(np.float32)  # 6 px boxes, overlapping
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (4 + CLASSES, 3, 4, 4)).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.zeros(4 + CLASSES, np.float32), "head_b"),
        numpy_helper.from_array(np.array([0, 4 + CLASSES, 16], np.int64), "shape"),
        numpy_helper.from_array(anchors, "anchors"),
        numpy_helper.from_array(np.array([4, CLASSES], np.int64), "split"),
        numpy_helper.from_array(np.array([2.0], np.float32), "scale"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "head_w", "head_b"], ["h"], strides=[4, 4]),
        helper.make_node("Reshape", ["h", "shape"], ["flat"]),
        helper.make_node("Transpose", ["flat"], ["t"], perm=[0, 2, 1]),
        helper.make_node("Split", ["t", "split"], ["raw_box", "raw_cls"], axis=2),
        helper.make_node("Tanh", ["raw_box"], ["tb"]),
        helper.make_node("Mul", ["tb", "scale"], ["offset"]),
        helper.make_node("Add", ["anchors", "offset"], ["boxes"]),
        helper.make_node("Sigmoid", ["raw_cls"], ["scores"]),
    ]
    graph = helper.make_graph(
        nodes, "tiny-det",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["N", 16, 4]),
         helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 16, CLASSES])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _make_detect_bundle(root: Path) -> Path:
    import onnxruntime as ort

    from edgetl.bundle.manifest import Bundle
    from edgetl.preprocess import PreprocessSpec

    root.mkdir(parents=True)
    _detector_onnx(root / "model.onnx")
    bundle = Bundle.create(root, task="detect", name="tiny-det", labels=["a", "b", "c"], input_name="input",
                           preprocess=PreprocessSpec(size=(SIZE, SIZE), resize="letterbox"), dynamic_batch=True,
                           postprocess=dict(POSTPROCESS))
    bundle.add_artifact(root / "model.onnx", kind="onnx", precision="fp32", created_by="export")
    x = np.random.default_rng(4).normal(0, 1, (6, 3, SIZE, SIZE)).astype(np.float32)
    (root / "golden").mkdir()
    np.save(root / "golden/input.npy", x)
    boxes, scores = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        None, {"input": x})
    np.save(root / "golden/output_boxes.npy", boxes)
    np.save(root / "golden/output_scores.npy", scores)
    for rel in ("golden/input.npy", "golden/output_boxes.npy", "golden/output_scores.npy"):
        bundle.add_artifact(root / rel, kind="golden", created_by="export")
    bundle.set_section("golden", {
        "input": "golden/input.npy",
        "outputs": {"boxes": "golden/output_boxes.npy", "scores": "golden/output_scores.npy"},
        "tolerance": {"fp32": {"max_abs": 1e-3}, "fp16": {"max_abs": 5e-2}}, "sources": [],
    })
    bundle.save()
    return root


@pytest.fixture
def detect_bundle(tmp_path: Path) -> Path:
    return _make_detect_bundle(tmp_path / "det")


def test_nms_trt_engine_ends_in_efficientnms(fake_gpu, detect_bundle):
    """Contract: plugins initialised, EfficientNMS_TRT v1 created with the manifest's thresholds, outputs renamed."""
    result = compile_bundle(detect_bundle, "fp32", nms="trt", batch=(1, 4, 8))
    calls = fake_gpu.calls
    assert calls.index("parse_from_file") < calls.index("init_libnvinfer_plugins") < calls.index("get_creator")
    assert calls.index("create_plugin") < calls.index("add_plugin_v2") < calls.index("build_serialized_network")
    blob = fake_gpu.builds[-1]
    assert [o[0] for o in blob["outputs"]] == ["num_detections", "det_boxes", "det_scores", "det_classes"]
    assert blob["outputs"][0][1:] == [[-1, 1], "INT32"]
    assert blob["outputs"][1][1] == [-1, 10, 4]
    assert blob["nms"]["inputs"] == ["boxes", "scores"]
    assert blob["nms"]["params"] == {
        "score_threshold": pytest.approx(0.3), "iou_threshold": pytest.approx(0.5), "max_output_boxes": 10,
        "background_class": -1, "score_activation": 0, "class_agnostic": 0, "box_coding": 0,
    }
    assert result.engine == detect_bundle / "engines" / "sm87-trt10.3.0-fp32-nms.engine"
    (engine,) = open_bundle(detect_bundle).find(kind="engine")
    assert engine.info["nms"] == "efficientnms_trt"
    assert engine.info["postprocess"] == {"outputs": "nms"}
    assert open_bundle(detect_bundle).manifest["postprocess"]["outputs"] == "boxes_scores"  # ONNX graphs unchanged
    golden = engine.info["golden"]
    assert golden["passed"] is True, golden
    assert golden["detections"]["reference_boxes"] > 0
    assert golden["detections"]["recall_of_reference"] == 1.0


def test_predictor_reads_nms_engine_like_host_nms(fake_gpu, detect_bundle):
    """The runtime post-processes the engine with the "nms" layout and finds what host NMS finds on ONNX."""
    from edgetl.runtime import load

    compile_bundle(detect_bundle, "fp32", nms="trt", batch=(1, 4, 8))
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 255, (20, 28, 3), dtype=np.uint8) for _ in range(3)]
    with load(detect_bundle, backend="tensorrt") as trt_pred, load(detect_bundle, backend="onnxruntime",
                                                                    device="cpu") as ort_pred:
        assert trt_pred.postprocess["outputs"] == "nms"
        assert ort_pred.postprocess["outputs"] == "boxes_scores"
        assert set(trt_pred.output_names) == {"num_detections", "det_boxes", "det_scores", "det_classes"}
        for got, want in zip(trt_pred.predict(images), ort_pred.predict(images)):
            assert len(want) > 0
            np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-4)
            np.testing.assert_allclose(got.scores, want.scores, atol=1e-5)
            np.testing.assert_array_equal(got.labels, want.labels)


def test_default_keeps_graph_outputs(fake_gpu, detect_bundle):
    compile_bundle(detect_bundle, "fp32", batch=(1, 4, 8))
    assert [o[0] for o in fake_gpu.builds[-1]["outputs"]] == ["boxes", "scores"]
    assert "init_libnvinfer_plugins" not in fake_gpu.calls
    (engine,) = open_bundle(detect_bundle).find(kind="engine")
    assert "postprocess" not in engine.info


def test_nms_trt_on_classifier_is_usage_error(tiny_bundle):
    """Exit 2 before TensorRT is even imported (so also on a machine without it)."""
    from click.testing import CliRunner

    from edgetl.cli.main import cli

    result = CliRunner().invoke(cli, ["compile", str(tiny_bundle), "--nms", "trt"])
    assert result.exit_code == 2, result.output
    assert "detector bundles only" in result.output


def test_nms_trt_on_graph_with_nms_is_refused(fake_gpu, detect_bundle):
    bundle = open_bundle(detect_bundle)
    bundle.set_section("postprocess", {**POSTPROCESS, "outputs": "nms"})
    bundle.save()
    with pytest.raises(BadInputError, match="NMS already in the graph"):
        compile_bundle(detect_bundle, "fp32", nms="trt")


# -- the fake catches the mistakes a real TensorRT would reject --------------------------------------
def _break(monkeypatch, name, replacement):
    from edgetl.compile import nms

    monkeypatch.setattr(nms, name, replacement)


def test_contract_missing_init_libnvinfer_plugins_is_caught(monkeypatch, fake_gpu, detect_bundle):
    monkeypatch.setattr(fake_gpu.trt, "init_libnvinfer_plugins", lambda logger, ns: True)  # registers nothing
    with pytest.raises(fakegpu.ContractViolation, match="before init_libnvinfer_plugins"):
        compile_bundle(detect_bundle, "fp32", nms="trt")
    fake_gpu.violations.clear()


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"score_thresh": 0.3}, "has no attribute 'score_thresh'"),
        ({"max_output_boxes": 10.0}, "'max_output_boxes' is INT32, got FLOAT32"),
        ({"score_threshold": np.float64(0.3)}, "'score_threshold' needs one FLOAT32 value, got float64"),
    ],
)
def test_contract_wrong_field_name_or_type_is_caught(monkeypatch, fake_gpu, detect_bundle, params, message):
    from edgetl.compile import nms

    real_fields = nms._fields
    trt = nms.trt  # the module proxy: the fake TensorRT while fake_gpu is installed

    def wrong_fields(good):
        fields = [f for f in real_fields(good) if f.name not in params and f.name != "score_threshold"]
        for name, value in params.items():
            if isinstance(value, np.float64):
                fields.append(trt.PluginField(name, np.array([value]), trt.PluginFieldType.FLOAT32))
            else:
                kind = trt.PluginFieldType.FLOAT32 if isinstance(value, float) else trt.PluginFieldType.INT32
                dtype = np.float32 if isinstance(value, float) else np.int32
                fields.append(trt.PluginField(name, np.array([value], dtype), kind))
        if "score_threshold" not in params and "score_thresh" not in params:
            fields.append(next(f for f in real_fields(good) if f.name == "score_threshold"))
        return trt.PluginFieldCollection(fields)

    _break(monkeypatch, "_fields", wrong_fields)
    with pytest.raises(fakegpu.ContractViolation, match=message):
        compile_bundle(detect_bundle, "fp32", nms="trt")
    fake_gpu.violations.clear()


def test_contract_wrong_output_names_are_caught(monkeypatch, fake_gpu, detect_bundle):
    """Outputs named as the plugin names them (not the runtime's layout) fail the golden check: no det_* outputs."""
    from edgetl.errors import GateFailedError

    _break(monkeypatch, "NMS_OUTPUTS", ("num_detections", "detection_boxes", "detection_scores", "detection_classes"))
    with pytest.raises(GateFailedError, match="lack"):
        compile_bundle(detect_bundle, "fp32", nms="trt")


def test_contract_plugin_outputs_must_be_marked(monkeypatch, fake_gpu, detect_bundle):
    monkeypatch.setattr(fakegpu.FakeNetwork, "mark_output", lambda self, t: None)
    with pytest.raises(fakegpu.ContractViolation, match="not marked as a network output"):
        compile_bundle(detect_bundle, "fp32", nms="trt")
    fake_gpu.violations.clear()


def _class_agnostic(detect_bundle: Path, value: bool) -> None:
    bundle = open_bundle(detect_bundle)
    bundle.set_section("postprocess", {**POSTPROCESS, "class_agnostic": value})
    bundle.save()


def test_class_agnostic_on_a_plugin_without_the_field_is_refused(monkeypatch, detect_bundle):
    """Contract: an older EfficientNMS_TRT lacks class_agnostic and ignores it silently, so it is checked first."""
    from edgetl.errors import EnvironmentMissingError

    gpu = fakegpu.FakeGpu(nms_fields=tuple(fakegpu.EFFICIENT_NMS_REQUIRED))
    fakegpu.install(monkeypatch, gpu)
    _class_agnostic(detect_bundle, True)
    with pytest.raises(EnvironmentMissingError, match="does not declare 'class_agnostic'") as err:
        compile_bundle(detect_bundle, "fp32", nms="trt", batch=(1, 4, 8))
    assert "without --nms trt" in err.value.hint
    assert gpu.builds == [] and gpu.ignored_fields == [] and gpu.violations == []
    assert open_bundle(detect_bundle).find(kind="engine") == []


def test_per_class_nms_on_a_plugin_without_the_field_builds(monkeypatch, detect_bundle):
    """Per-class NMS is what such a plugin does anyway: the field is left out, nothing is sent to be ignored."""
    gpu = fakegpu.FakeGpu(nms_fields=tuple(fakegpu.EFFICIENT_NMS_REQUIRED))
    fakegpu.install(monkeypatch, gpu)
    result = compile_bundle(detect_bundle, "fp32", nms="trt", batch=(1, 4, 8))
    assert gpu.ignored_fields == [] and "class_agnostic" not in result.artifact.info["nms_plugin"]["params"]
    assert result.artifact.info["golden"]["passed"] is True
    assert gpu.violations == []


def test_class_agnostic_reaches_a_plugin_that_declares_it(fake_gpu, detect_bundle):
    _class_agnostic(detect_bundle, True)
    compile_bundle(detect_bundle, "fp32", nms="trt", batch=(1, 4, 8))
    assert fake_gpu.builds[-1]["nms"]["params"]["class_agnostic"] == 1


def test_supported_params_rules():
    from edgetl.compile.nms import plugin_params, supported_params
    from edgetl.errors import EnvironmentMissingError

    params = plugin_params({**POSTPROCESS, "class_agnostic": True})
    everything = set(params)
    assert supported_params(params, everything, "10.3") == params
    with pytest.raises(EnvironmentMissingError, match="does not declare 'iou_threshold'"):
        supported_params(params, everything - {"iou_threshold"}, "10.3")
    with pytest.raises(EnvironmentMissingError, match="may ignore 'class_agnostic'"):
        supported_params(params, None, "10.3")  # undeclared: required ones are sent, optional ones not relied on
    per_class = {**params, "class_agnostic": 0}
    assert supported_params(per_class, None, "10.3") == {k: v for k, v in params.items() if k != "class_agnostic"}
