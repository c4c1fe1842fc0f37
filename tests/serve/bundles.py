"""Tiny real bundles for the daemon tests: a 2-layer ONNX classifier at 32x32 with golden samples.

The graph is written with onnx.helper (no torch), so building a bundle takes milliseconds and the
daemon runs it through the real runtime (ONNX Runtime on CPU).
"""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = [str(i) for i in range(10)]
SIZE = 32


def _graph(seed: int):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, (8,)).astype(np.float32)
    w2 = rng.normal(0, 1.0, (10, 8)).astype(np.float32)
    b2 = rng.normal(0, 0.1, (10,)).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("GlobalAveragePool", ["r1"], ["g1"]),
        helper.make_node("Flatten", ["g1"], ["f1"]),
        helper.make_node("Gemm", ["f1", "w2", "b2"], ["logits"], transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "tiny",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, SIZE, SIZE])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])],
        initializer=[numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def sample_images(n: int = 6, seed: int = 0) -> list[bytes]:
    """PNG-encoded random RGB images of a few sizes."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        h, w = 24 + 8 * (i % 3), 40 - 4 * (i % 2)
        buf = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(buf, format="PNG")
        out.append(buf.getvalue())
    return out


def make_bundle(root: Path, *, seed: int = 0, name: str = "tiny", golden_seed: int | None = None) -> Path:
    """Write a bundle; ``golden_seed`` != ``seed`` records golden outputs of another model (a bad bundle)."""
    import onnx
    import onnxruntime as ort

    from edgetl.bundle import Bundle
    from edgetl.preprocess import PreprocessSpec, preprocess_batch

    root = Path(root)
    spec = PreprocessSpec(size=(SIZE, SIZE), resize="resize")
    bundle = Bundle.create(
        root, task="classify", name=name, labels=LABELS, input_name="input", preprocess=spec,
        provenance={"test": True, "seed": seed},
    )
    onnx.save(_graph(seed), str(root / "model.onnx"))
    bundle.add_artifact(root / "model.onnx", kind="onnx", precision="fp32", created_by="export")
    x, _ = preprocess_batch(sample_images(4, seed=42), spec)
    ref_model = _graph(seed if golden_seed is None else golden_seed).SerializeToString()
    sess = ort.InferenceSession(ref_model, providers=["CPUExecutionProvider"])
    (root / "golden").mkdir(exist_ok=True)
    np.save(root / "golden" / "input.npy", x)
    np.save(root / "golden" / "output_logits.npy", sess.run(["logits"], {"input": x})[0])
    bundle.add_artifact(root / "golden" / "input.npy", kind="golden", created_by="export")
    bundle.add_artifact(root / "golden" / "output_logits.npy", kind="golden", created_by="export")
    bundle.set_section("golden", {
        "input": "golden/input.npy",
        "outputs": {"logits": "golden/output_logits.npy"},
        "tolerance": {"fp32": {"max_abs": 1e-3}, "fp16": {"max_abs": 5e-2}, "int8": {"top1_agreement": 0.85}},
        "sources": [f"sample{i}.png" for i in range(4)],
    })
    bundle.save()
    return root


def corrupt_copy(good: Path, dest: Path) -> Path:
    """A copy of ``good`` whose model.onnx no longer matches its recorded sha256."""
    shutil.copytree(good, dest)
    data = bytearray((dest / "model.onnx").read_bytes())
    for i in range(len(data) - 64, len(data) - 32):
        data[i] ^= 0xFF
    (dest / "model.onnx").write_bytes(bytes(data))
    return dest


def drop_in(src: Path, models_dir: Path, name: str, version: str) -> Path:
    """Copy a bundle into the repository atomically (hidden temporary name, then rename)."""
    target = models_dir / name / version
    tmp = models_dir / name / f".incoming-{version}"
    shutil.copytree(src, tmp)
    tmp.rename(target)
    return target
