"""Which fake quantization QAT uses: NVIDIA's TensorRT Model Optimizer vs PyTorch's own ops on edgetl's graph.

Both on the same EfficientNet-Lite0 checkpoint (an edgetl checkpoint and its bundle, e.g. the demo's), on this
CPU, one run:

- ``modelopt``: ``modelopt.torch.quantization.quantize(model, INT8_DEFAULT_CFG, calibrate)`` on the rebuilt
  PyTorch model, a training step, then its ONNX export (``torch.onnx.export``, modelopt's Q/DQ symbolics);
- ``edgetl``: `edgetl.quantize.qat_graph` on the bundle's PTQ graph (``torch.fake_quantize_per_*_affine``), a
  training step, then `to_onnx`.

For each: whether it imports and runs without CUDA, calibration and step time (batch 16, peak RSS of the whole
script beside), the exported graph's op counts (BatchNormalization left unfolded, Q/DQ pairs, int8 weight
initializers), and how far ONNX Runtime's exact numerics on that export are from the fake-quant PyTorch model
it came from (max abs logit difference on the golden inputs).

    python benchmarks/qat_libraries.py CHECKPOINT BUNDLE

Writes benchmarks/results/qat_libraries.json.
"""

from __future__ import annotations

import argparse
import collections
import importlib.metadata
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).parent / "results" / "qat_libraries.json"


def exact(path: Path, batch: np.ndarray) -> np.ndarray:
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    with OnnxRuntimeBackend(path, device="cpu", numerics="exact") as backend:
        return backend.infer(batch)["logits"]


def graph_facts(path: Path) -> dict[str, Any]:
    import onnx

    model = onnx.load(str(path))
    ops = collections.Counter(n.op_type for n in model.graph.node)
    int8 = sum(1 for i in model.graph.initializer if i.data_type == onnx.TensorProto.INT8 and len(i.dims) > 1)
    return {"nodes": len(model.graph.node), "batch_norm": ops.get("BatchNormalization", 0),
            "quantize_linear": ops.get("QuantizeLinear", 0), "dequantize_linear": ops.get("DequantizeLinear", 0),
            "conv": ops.get("Conv", 0), "int8_weight_initializers": int8,
            "other_ops": {k: v for k, v in ops.items() if k not in ("QuantizeLinear", "DequantizeLinear", "Conv")}}


def step_time(model: Any, forward: Any, batch: Any, steps: int = 3) -> float:
    import torch

    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    forward(batch).square().mean().backward()  # warm-up
    started = time.perf_counter()
    for _ in range(steps):
        optimizer.zero_grad()
        forward(batch).square().mean().backward()
        optimizer.step()
    return round((time.perf_counter() - started) / steps, 3)


def modelopt_row(checkpoint: Path, calib: Any, golden: np.ndarray, work: Path) -> dict[str, Any]:
    import torch

    row: dict[str, Any] = {}
    try:
        row["version"] = importlib.metadata.version("nvidia-modelopt")
    except importlib.metadata.PackageNotFoundError:
        return {"installed": False}
    started = time.perf_counter()
    try:
        import modelopt.torch.quantization as mtq
    except Exception as exc:  # what a user would see: report it, do not crash the benchmark
        return {**row, "imports": False, "import_error": f"{type(exc).__name__}: {exc}"}
    row.update(imports=True, import_s=round(time.perf_counter() - started, 2))
    from edgetl.train.checkpoint import build_from_checkpoint

    model, _ = build_from_checkpoint(checkpoint)
    started = time.perf_counter()
    model = mtq.quantize(model, mtq.INT8_DEFAULT_CFG, lambda m: [m(calib[i:i + 16]) for i in range(0, len(calib), 16)])
    row["calibrate_s"] = round(time.perf_counter() - started, 2)
    model.train()
    row["train_step_s_batch16"] = step_time(model, model, calib[:16])
    model.eval()
    path = work / "modelopt.onnx"
    started = time.perf_counter()
    torch.onnx.export(model, torch.from_numpy(golden[:1]), str(path), opset_version=17, input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}}, dynamo=False)
    row["export_s"] = round(time.perf_counter() - started, 2)
    row["graph"] = graph_facts(path)
    with torch.no_grad():
        fake = model(torch.from_numpy(golden)).numpy()
    row["export_vs_fake_quant_max_abs"] = float(np.abs(exact(path, golden) - fake).max())
    return row


def edgetl_row(bundle: Path, calib: Any, golden: np.ndarray, work: Path) -> dict[str, Any]:
    import onnx
    import torch

    from edgetl.quantize.qat_graph import QdqModule

    started = time.perf_counter()
    module = QdqModule.create(onnx.load(str(bundle / "model.int8.onnx")), onnx.load(str(bundle / "model.onnx")))
    row: dict[str, Any] = {"imports": True, "version": "torch " + torch.__version__,
                           "build_s": round(time.perf_counter() - started, 2)}
    row["train_step_s_batch16"] = step_time(module, lambda x: module(x)["logits"], calib[:16])
    path = work / "edgetl.onnx"
    onnx.save(module.to_onnx(), str(path))
    row["graph"] = graph_facts(path)
    with torch.no_grad():
        fake = module(torch.from_numpy(golden))["logits"].numpy()
    row["export_vs_fake_quant_max_abs"] = float(np.abs(exact(path, golden) - fake).max())
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("bundle", type=Path, help="a bundle of that checkpoint, quantized for --target tensorrt")
    args = parser.parse_args()
    import torch

    from edgetl.bundle import open_bundle
    from edgetl.data.imagesets import balanced_indices, decode, find_images

    b = open_bundle(args.bundle)
    images = find_images(b.dataset, split="train", labels=b.labels)
    calib = torch.from_numpy(decode(images.subset(balanced_indices(images.labels, 64, 0)), b.preprocess).batch)
    golden = np.load(args.bundle / "golden" / "input.npy")
    with tempfile.TemporaryDirectory() as tmp:
        rows = {"edgetl": edgetl_row(args.bundle, calib, golden, Path(tmp)),
                "modelopt": modelopt_row(args.checkpoint, calib, golden, Path(tmp))}
    document = {"benchmark": "qat_libraries", "command": "python benchmarks/qat_libraries.py CHECKPOINT BUNDLE",
                "model": "EfficientNet-Lite0, 128 px (edgetl demo)", "cuda": torch.cuda.is_available(),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1), "rows": rows}
    from edgetl.fileio import write_json

    write_json(RESULTS, document)
    for name, row in rows.items():
        print(name, {k: v for k, v in row.items() if k != "graph"}, row.get("graph"), file=sys.stdout)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
