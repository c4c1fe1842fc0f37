#!/usr/bin/env python3
"""Write a tiny, real edgetl bundle whose answers are known in advance, for container smoke tests.

The model is a three-class colour classifier built directly as an ONNX graph (no torch, no
training): global average pooling of the normalised RGB input followed by a fixed linear layer, so
an image that is mostly red is ``red``, mostly green is ``green``, mostly blue is ``blue``. The
bundle has everything a real export writes that the daemon reads: manifest, FP32 ``model.onnx``
(input ``input``, output ``logits``, dynamic batch), golden samples with their tolerance. It also
writes one PNG per class next to the bundle so a client can check the prediction.

    python scripts/make_smoke_bundle.py OUT_DIR [--name colors] [--size 32]

Prints one JSON document on stdout: {"bundle": ..., "images": {"red": ..., ...}, "name": ...}.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from PIL import Image

LABELS = ["red", "green", "blue"]
COLORS = {"red": (220, 30, 40), "green": (30, 200, 50), "blue": (20, 40, 230)}


def _onnx_model(size: int):
    """GlobalAveragePool -> Flatten -> Gemm: logits = 4 * mean(channel)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array((4.0 * np.eye(3, dtype=np.float32)), name="head.weight")
    bias = numpy_helper.from_array(np.zeros(3, dtype=np.float32), name="head.bias")
    nodes = [
        helper.make_node("GlobalAveragePool", ["input"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["features"], axis=1, name="flatten"),
        helper.make_node("Gemm", ["features", "head.weight", "head.bias"], ["logits"], transB=1, name="head"),
    ]
    graph = helper.make_graph(
        nodes,
        "edgetl_smoke_colors",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(LABELS)])],
        initializer=[weight, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgetl-smoke")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def make_bundle(out_dir: Path, *, name: str = "colors", size: int = 32) -> dict:
    """Create ``out_dir/<name>`` (the bundle) and ``out_dir/images/<label>.png``; return their paths."""
    import onnx

    from edgetl.bundle.manifest import Bundle
    from edgetl.preprocess import PreprocessSpec, preprocess_batch

    out_dir = Path(out_dir)
    images_dir = out_dir / "images"
    images_dir.mkdir(parents=True, exist_ok=True)
    images = {}
    rng = np.random.default_rng(0)
    for label, rgb in COLORS.items():
        pixels = np.clip(np.array(rgb, dtype=np.int16) + rng.integers(-20, 20, (48, 64, 3)), 0, 255)
        path = images_dir / f"{label}.png"
        Image.fromarray(pixels.astype(np.uint8), "RGB").save(path)
        images[label] = str(path)

    spec = PreprocessSpec(size=(size, size), resize="resize", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    bundle = Bundle.create(
        out_dir / name,
        task="classify",
        name=name,
        labels=LABELS,
        input_name="input",
        preprocess=spec,
        dynamic_batch=True,
        postprocess={"type": "softmax"},
        provenance={"base_model": "hand-built ONNX colour classifier (container smoke test)"},
    )
    model_path = bundle.root / "model.onnx"
    onnx.save(_onnx_model(size), str(model_path))
    bundle.add_artifact(model_path, kind="onnx", precision="fp32", created_by="export", info={"opset": 17})

    golden_input, _ = preprocess_batch([images[label] for label in LABELS], spec)
    pooled = golden_input.mean(axis=(2, 3))
    golden_logits = (4.0 * pooled).astype(np.float32)
    golden_dir = bundle.root / "golden"
    golden_dir.mkdir(exist_ok=True)
    np.save(golden_dir / "input.npy", golden_input.astype(np.float32))
    np.save(golden_dir / "output_logits.npy", golden_logits)
    bundle.add_artifact(golden_dir / "input.npy", kind="golden", created_by="export")
    bundle.add_artifact(golden_dir / "output_logits.npy", kind="golden", created_by="export")
    bundle.set_section(
        "golden",
        {
            "input": "golden/input.npy",
            "outputs": {"logits": "golden/output_logits.npy"},
            "tolerance": {"fp32": {"max_abs": 1e-3}, "fp16": {"max_abs": 5e-2}, "int8": {"top1_agreement": 0.85}},
            "sources": [f"{label}.png" for label in LABELS],
        },
    )
    bundle.save()
    return {"bundle": str(bundle.root), "name": name, "labels": LABELS, "images": images, "size": size}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--name", default="colors")
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args(argv)
    doc = make_bundle(args.out_dir, name=args.name, size=args.size)
    sys.stdout.write(json.dumps(doc) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
