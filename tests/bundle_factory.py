"""Build small, real bundles for the bundle/runtime/CLI tests without torch or the export stage.

The model is a tiny CNN written directly as an ONNX graph (Conv -> Relu -> GlobalAveragePool ->
Gemm) whose weights make the class follow the dominant colour of the image, so predictions are
meaningful and stable. An INT8 QDQ copy is made with ONNX Runtime's static quantizer.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["red", "green", "blue", "grey"]
SIZE = 32


def colour_images(out: Path, n_per_class: int = 3, size: int = 40, seed: int = 0) -> list[Path]:
    """PNG images whose dominant colour is their class (``<label>_<i>.png``)."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for c, label in enumerate(LABELS):
        for i in range(n_per_class):
            base = np.full((size, size, 3), 60, dtype=np.int32)
            if c < 3:
                base[..., c] = 220
            else:
                base[...] = 128
            noise = rng.integers(-25, 25, size=base.shape)
            img = np.clip(base + noise, 0, 255).astype(np.uint8)
            path = out / f"{label}_{i}.png"
            Image.fromarray(img).save(path)
            paths.append(path)
    return paths


def tiny_onnx(path: Path, *, dynamic_batch: bool = True, seed: int = 0) -> Path:
    """Write the colour classifier as an ONNX model: input ``input`` (N,3,32,32), output ``logits`` (N,4)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    conv_w = np.zeros((6, 3, 3, 3), dtype=np.float32)
    for ch in range(3):  # channels 0..2 pass colour through; 3..5 are small noise features
        conv_w[ch, ch, 1, 1] = 1.0
    conv_w[3:] = rng.normal(0, 0.01, size=(3, 3, 3, 3)).astype(np.float32)
    gemm_w = np.zeros((6, 4), dtype=np.float32)
    gemm_w[0:3, 0:3] = np.eye(3, dtype=np.float32) * 4.0
    gemm_w[0:3, 3] = 1.0
    gemm_b = np.array([0, 0, 0, 1.5], dtype=np.float32)
    batch = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["input", "conv_w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
            helper.make_node("Relu", ["c"], ["r"]),
            helper.make_node("GlobalAveragePool", ["r"], ["g"]),
            helper.make_node("Flatten", ["g"], ["f"], axis=1),
            helper.make_node("Gemm", ["f", "gemm_w", "gemm_b"], ["logits"]),
        ],
        "tiny_colour",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [batch, 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [batch, 4])],
        initializer=[numpy_helper.from_array(conv_w, "conv_w"), numpy_helper.from_array(gemm_w, "gemm_w"),
                     numpy_helper.from_array(gemm_b, "gemm_b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def quantize_int8(fp32: Path, out: Path, batch: np.ndarray) -> Path:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter([{"input": batch[i : i + 1]} for i in range(len(batch))])

        def get_next(self):
            return next(self.items, None)

    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=False)
    return out


def make_bundle(root: Path, images: list[Path], *, int8: bool = True, dynamic_batch: bool = True,
                validated: bool = True, golden: bool = True) -> Path:
    """A complete classification bundle: fp32 (+ int8) ONNX, golden samples, validation section."""
    import onnxruntime as ort

    from edgetl.bundle.manifest import Bundle
    from edgetl.preprocess import PreprocessSpec, preprocess_batch

    spec = PreprocessSpec(size=(SIZE, SIZE), resize="resize", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    bundle = Bundle.create(root, task="classify", name="colours", labels=LABELS, input_name="input",
                           preprocess=spec, dynamic_batch=dynamic_batch,
                           provenance={"base_model": "tiny-colour-cnn", "opset": 17})
    tiny_onnx(root / "model.onnx", dynamic_batch=dynamic_batch)
    bundle.add_artifact("model.onnx", kind="onnx", precision="fp32", created_by="export", info={"opset": 17})
    x, _ = preprocess_batch(images, spec)
    if int8:
        quantize_int8(root / "model.onnx", root / "model.int8.onnx", x)
        bundle.add_artifact("model.int8.onnx", kind="onnx", precision="int8", created_by="quantize",
                            info={"method": "minmax"})
    if golden:
        g = x[:4] if dynamic_batch else x[:1]
        sess = ort.InferenceSession(str(root / "model.onnx"), providers=["CPUExecutionProvider"])
        out = np.concatenate([sess.run(["logits"], {"input": g[i : i + 1]})[0] for i in range(len(g))])
        (root / "golden").mkdir(exist_ok=True)
        np.save(root / "golden" / "input.npy", g)
        np.save(root / "golden" / "output_logits.npy", out)
        bundle.add_artifact("golden/input.npy", kind="golden", created_by="export")
        bundle.add_artifact("golden/output_logits.npy", kind="golden", created_by="export")
        bundle.set_section("golden", {
            "input": "golden/input.npy", "outputs": {"logits": "golden/output_logits.npy"},
            "tolerance": {"fp32": {"max_abs": 1e-3}, "fp16": {"max_abs": 5e-2}, "int8": {"top1_agreement": 0.75}},
            "sources": [p.name for p in images[: len(g)]],
        })
    if int8 and validated:
        from edgetl.bundle.validation import record

        record(bundle, {"passed": True, "reference": {"artifact": "model.onnx", "precision": "fp32"},
                        "candidate": {"artifact": "model.int8.onnx", "precision": "int8"},
                        "agreement": {"top1_agreement": 1.0}, "checks": [], "metrics": {}, "images": {},
                        "numerics": {"gate": "exact", "modes": {}}, "created_at": "2026-01-01T00:00:00+00:00"})
    bundle.save()
    return root
