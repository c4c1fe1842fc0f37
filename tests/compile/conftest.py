"""Fixtures for the TensorRT tests: a tiny classifier bundle (FP32 + QDQ INT8 graphs, golden samples)."""

from __future__ import annotations

import shutil
from pathlib import Path

import fakegpu
import numpy as np
import pytest

from edgetl.bundle.check import TOLERANCES as GOLDEN_TOLERANCE


def _tiny_onnx(path: Path, *, dynamic: bool = True, size: int = 16, classes: int = 5) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    batch = "N" if dynamic else 2
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "conv_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "conv_b"),
        numpy_helper.from_array(rng.normal(0, 0.5, (classes, 8)).astype(np.float32), "fc_w"),
        numpy_helper.from_array(rng.normal(0, 0.1, (classes,)).astype(np.float32), "fc_b"),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "conv_w", "conv_b"], ["c"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"], name="relu0"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool0"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten0"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc0", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def _qdq(src: Path, dst: Path, data: np.ndarray) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": data[i : i + 1]} for i in range(len(data))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)


def make_bundle(root: Path, *, dynamic: bool = True, qdq: bool = False) -> Path:
    import onnxruntime as ort

    from edgetl.bundle.manifest import Bundle
    from edgetl.preprocess import PreprocessSpec

    root.mkdir(parents=True, exist_ok=True)
    _tiny_onnx(root / "model.onnx", dynamic=dynamic)
    spec = PreprocessSpec(size=(16, 16), resize="resize")
    bundle = Bundle.create(root, task="classify", name="tiny", labels=[f"c{i}" for i in range(5)],
                           input_name="input", preprocess=spec, dynamic_batch=dynamic)
    bundle.add_artifact(root / "model.onnx", kind="onnx", precision="fp32", created_by="export")
    rng = np.random.default_rng(1)
    golden_n = 8 if dynamic else 2
    x = rng.normal(0, 1, (golden_n, 3, 16, 16)).astype(np.float32)
    (root / "golden").mkdir(exist_ok=True)
    np.save(root / "golden" / "input.npy", x)
    sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
    np.save(root / "golden" / "output_logits.npy", sess.run(None, {"input": x})[0])
    bundle.add_artifact(root / "golden/input.npy", kind="golden", created_by="export")
    bundle.add_artifact(root / "golden/output_logits.npy", kind="golden", created_by="export")
    bundle.set_section("golden", {"input": "golden/input.npy", "outputs": {"logits": "golden/output_logits.npy"},
                                  "tolerance": GOLDEN_TOLERANCE, "sources": []})
    if qdq:
        _qdq(root / "model.onnx", root / "model.int8.onnx", rng.normal(0, 1, (16, 3, 16, 16)).astype(np.float32))
        bundle.add_artifact(root / "model.int8.onnx", kind="onnx", precision="int8", created_by="quantize")
    bundle.save()
    return root


@pytest.fixture(scope="session")
def _bundle_templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("trt-bundles")
    return {
        "dynamic": make_bundle(base / "dynamic"),
        "qdq": make_bundle(base / "qdq", qdq=True),
        "static": make_bundle(base / "static", dynamic=False),
    }


@pytest.fixture
def tiny_bundle(_bundle_templates: dict[str, Path], tmp_path: Path) -> Path:
    """A fresh copy of the dynamic-batch tiny classifier bundle (FP32 graph only)."""
    return Path(shutil.copytree(_bundle_templates["dynamic"], tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"))


@pytest.fixture
def qdq_bundle(_bundle_templates: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny bundle with a QDQ INT8 graph as ``edgetl quantize`` would add."""
    return Path(shutil.copytree(_bundle_templates["qdq"], tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"))


@pytest.fixture
def static_bundle(_bundle_templates: dict[str, Path], tmp_path: Path) -> Path:
    """The tiny bundle exported with a fixed batch of 2."""
    return Path(shutil.copytree(_bundle_templates["static"], tmp_path / f"bundle-{len(list(tmp_path.iterdir()))}"))


@pytest.fixture
def calib_images(tmp_path: Path) -> Path:
    from PIL import Image

    out = tmp_path / "calib"
    out.mkdir()
    rng = np.random.default_rng(2)
    for i in range(20):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(out / f"img{i:02d}.png")
    return out


@pytest.fixture
def fake_gpu(monkeypatch: pytest.MonkeyPatch):
    """A fake TensorRT 10 + cuda-python on a Jetson Orin; fails the test on any recorded violation."""
    gpu = fakegpu.FakeGpu(trt_version="10.3.0.26")
    fakegpu.install(monkeypatch, gpu)
    yield gpu
    assert gpu.violations == [], f"contract violations: {gpu.violations}"
