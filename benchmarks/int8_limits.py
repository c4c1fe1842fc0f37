"""What bounds the TensorRT format's exact agreement on ImageNet EfficientNet-Lite0, and what the remaining
remedies do, measured.

The same model, crops and default TensorRT-format bundle as `benchmarks/quantization.py` (it builds them if
missing), scored in exact numerics (ONNX Runtime, graph optimizations off) against FP32 on the 400 evaluation crops;
beside the default (which includes the sequential bias correction of `edgetl.quantize.sequential`), the same bundle
quantized without it:

1. **Agreement against logit error.** The default model's own logit error, scaled down by a factor, added to
   the FP32 logits: the agreement each logit RMSE buys on this set of crops, and the RMSE that 95 % needs.
2. **The activation floor.** Every weight and bias back in FP32, every activation pair kept: what no weight-side
   step (GPTQ, bias correction, QAT of the weights) can exceed; and the same with its biases then corrected
   sequentially (edgetl's `correct_biases`, on 128 crops spread over the calibration set, as the default).
3. **Remedies on the activation side**:
   - *equalization* is exact only on the linear streams (projection outputs, residual sums): each such tensor's
     largest per-channel range against its median channel's (on the calibration crops): how much of the int8
     step a per-channel rescaling could give back;
   - *clipping the ReLU6 outputs* below 6: the bound of least squared rounding-and-clipping error for each
     centred ReLU6 output (values subsampled), against 6;
   - *sequential empirical bias correction* (the form AIMET and Nagel et al. 2019 describe; a default step
     since it was measured here): the default against the same bundle without it.

    python benchmarks/int8_limits.py [--work /tmp/edgetl-qbench]

Writes benchmarks/results/int8_limits.json.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "int8_limits.json"
SCALES = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3)


def tensor_chunks(model: Any, tensors: list[str], batch: np.ndarray) -> Iterator[dict[str, np.ndarray]]:
    """The values of ``tensors`` (made the graph's only outputs) on ``batch``, 16 images at a time, in exact
    numerics: statistics over many images without holding every intermediate tensor at once."""
    import onnx
    from int8_error_sources import exact_session

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(onnx.helper.make_empty_tensor_value_info(t) for t in tensors)
    session = exact_session(probe)
    name = model.graph.input[0].name
    for k in range(0, len(batch), 16):
        yield dict(zip(tensors, session.run(None, {name: batch[k:k + 16]}), strict=True))


def agreement_by_rmse(reference: np.ndarray, logits: np.ndarray) -> list[dict[str, float]]:
    error = logits - reference
    top = reference.argmax(1)
    rmse = float(np.sqrt(np.mean(error ** 2)))
    return [{"scale": s, "logit_rmse": round(rmse * s, 4),
             "agreement": float(np.mean((reference + s * error).argmax(1) == top))} for s in SCALES]


def linear_stream_ranges(model: Any, batch: np.ndarray) -> list[dict[str, Any]]:
    """Largest over median per-channel |x| maximum of every tensor on a linear stream."""
    readers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node.op_type)
    tensors = [n.output[0] for n in model.graph.node
               if n.op_type == "Add" or (n.op_type == "Conv" and readers.get(n.output[0])
                                         and set(readers[n.output[0]]) <= {"Conv", "Add"})]
    peak: dict[str, np.ndarray] = {}
    for values in tensor_chunks(model, tensors, batch):
        for tensor, value in values.items():
            peak[tensor] = np.maximum(peak.get(tensor, 0.0), np.abs(value).max(axis=(0, 2, 3)))
    return [{"tensor": t, "channels": len(p), "max_over_median": round(float(p.max() / np.median(p)), 2)}
            for t, p in peak.items()]


def relu6_clip_bounds(model: Any, batch: np.ndarray) -> list[dict[str, Any]]:
    """For each ReLU6 output: the bound in (0, 6] of least squared error for 254 int8 steps over [0, bound]."""
    tensors = [n.output[0] for n in model.graph.node if n.op_type == "Clip"]
    samples: dict[str, list[np.ndarray]] = {t: [] for t in tensors}
    for values in tensor_chunks(model, tensors, batch):
        for tensor, value in values.items():
            samples[tensor].append(value.ravel()[::7].astype(np.float64))
    grid = np.linspace(0.5, 6.0, 45)
    rows = []
    for tensor, parts in samples.items():
        x = np.concatenate(parts)

        def mse(bound: float, x: np.ndarray = x) -> float:
            step = bound / 254
            return float(np.mean((np.clip(np.round(x / step), 0, 254) * step - x) ** 2))

        errors = [mse(b) for b in grid]
        best = int(np.argmin(errors))
        rows.append({"tensor": tensor, "best_bound": round(float(grid[best]), 2),
                     "error_vs_bound_6": round(errors[best] / mse(6.0), 3)})
    return rows


def main() -> int:
    import onnx
    from int8_error_sources import compare, float_weights, run, score
    from quantization import crops, publish, reused_int8, work_args, workspace

    from edgetl.quantize.int8 import Int8Settings
    from edgetl.quantize.sequential import SEQUENTIAL_IMAGES, correct_biases
    from edgetl.quantize.shift import int8_reference

    work = Path(work_args(__doc__.splitlines()[0]).work)
    t0 = time.perf_counter()
    calib_dir, eval_dir, exported = workspace(work)
    # quantization.py's bundles of the same names, when they were made with these settings.
    default = onnx.load(str(reused_int8(work / "trt", exported, calib_dir, target="tensorrt")))
    without = onnx.load(str(reused_int8(work / "trt-noseq", exported, calib_dir, target="tensorrt",
                                        sequential_correction=False)))
    calib, batch = crops(exported, calib_dir, 300), crops(exported, eval_dir, 400)
    calib = np.ascontiguousarray(calib[np.linspace(0, len(calib) - 1, SEQUENTIAL_IMAGES).astype(int)])
    fp32 = onnx.load(str(exported / "model.onnx"))
    reference_graph = int8_reference(fp32, Int8Settings())[0]  # the centred graph the TensorRT format quantizes
    reference = run(fp32, batch)

    default_logits = run(default, batch)
    curve = agreement_by_rmse(reference, default_logits)
    activations_only = float_weights(default, reference_graph)
    corrected_acts = onnx.ModelProto()
    corrected_acts.CopyFrom(activations_only)
    correction = correct_biases(corrected_acts, reference_graph, calib)
    rows = {
        "default (TensorRT format, sequential bias correction included)": compare(default_logits, reference),
        "default without the sequential bias correction": score(without, batch, reference),
        "activations only (weights and biases FP32)": score(activations_only, batch, reference),
        "activations only + sequential bias correction": {**score(corrected_acts, batch, reference),
                                                          "seconds": round(correction.seconds, 1)},
    }
    ranges = linear_stream_ranges(fp32, calib)
    bounds = relu6_clip_bounds(fp32, calib)
    needed = next((c["logit_rmse"] for c in curve if c["agreement"] >= 0.95), None)
    result = {
        "benchmark": "int8_limits", "command": "python benchmarks/int8_limits.py",
        "model": "efficientnet_lite0 (ImageNet)", "format": "tensorrt (int8 activations), exact numerics",
        "images": int(len(batch)), "bias_correction_images": int(len(calib)), "rows": rows,
        "agreement_by_logit_rmse": curve, "logit_rmse_for_95_percent": needed,
        "linear_stream_channel_ranges": {
            "tensors": len(ranges), "max_over_median_largest": max(r["max_over_median"] for r in ranges),
            "max_over_median_median": float(np.median([r["max_over_median"] for r in ranges])), "each": ranges},
        "relu6_clip": {"tensors": len(bounds), "best_below_6": sum(b["best_bound"] < 6.0 for b in bounds),
                       "smallest_error_ratio": min(b["error_vs_bound_6"] for b in bounds), "each": bounds},
        "seconds": round(time.perf_counter() - t0, 1),
    }
    lines = ["| model | agreement | logit RMSE |", "|---|---|---|"]
    lines += [f"| {name} | {100 * r['agreement']:.2f} % | {r['logit_rmse']} |" for name, r in rows.items()]
    lines.append("agreement at the default model's logit error scaled: "
                 + ", ".join(f"RMSE {c['logit_rmse']}: {100 * c['agreement']:.1f} %" for c in curve))
    lines.append(f"linear-stream tensors: largest channel range / median channel's, largest "
                 f"{result['linear_stream_channel_ranges']['max_over_median_largest']}, median "
                 f"{result['linear_stream_channel_ranges']['max_over_median_median']:.2f} ({len(ranges)} tensors)")
    lines.append(f"ReLU6 outputs whose least-error bound is below 6: {result['relu6_clip']['best_below_6']} of "
                 f"{len(bounds)} (least error {result['relu6_clip']['smallest_error_ratio']} of bound 6's)")
    result["table"] = "\n".join(lines)
    publish(RESULTS, result, result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
