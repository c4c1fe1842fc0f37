"""What bounds the TensorRT format's exact agreement on ImageNet EfficientNet-Lite0, and what the remaining
remedies do, measured.

The same model, crops and default TensorRT-format bundle as `benchmarks/quantization.py` (it builds them if
missing), scored in exact numerics (ONNX Runtime, graph optimizations off) against FP32 on the 400 evaluation crops;
beside the default (which includes the sequential bias correction of `edgetl.quantize.sequential`), the same bundle
quantized without it:

1. **Agreement against logit error.** The default model's own logit error, scaled down by a factor, added to
   the FP32 logits: the agreement each logit RMSE buys on this set of crops, and the RMSE that 95 % needs.
2. **The activation floor.** Every weight and bias back in FP32, every activation pair kept: what no step that
   brings the weights closer to FP32's (GPTQ, bias correction) can exceed; and the same with its biases then
   corrected sequentially (edgetl's `correct_biases`, on 128 crops spread over the calibration set, as the
   default). Weights that move away from FP32's to absorb their inputs' error are measured in 4.
3. **Remedies on the activation side**:
   - *equalization* is exact only on the linear streams (projection outputs, residual sums): each such tensor's
     largest per-channel range against its median channel's (on the calibration crops): how much of the int8
     step a per-channel rescaling could give back;
   - *clipping the ReLU6 outputs* below 6: the bound of least squared rounding-and-clipping error for each
     centred ReLU6 output (values subsampled), against 6;
   - *sequential empirical bias correction* (the form AIMET and Nagel et al. 2019 describe; a default step
     since it was measured here): the default against the same bundle without it.
4. **Weights fitted to the quantized inputs.** The activation floor holds for weights that reproduce the FP32
   weights; weights can also absorb part of the error their inputs carry. Layer by layer in graph order, each
   layer's input patches are measured in the quantized graph (every earlier layer already refitted) and in the
   FP32 graph on the same crops, and the layer is rounded again by GPTQ on those inputs:
   - *sequential GPTQ*: the FP32 weights rounded with the second moment of the quantized inputs, ``E[x~ x~^T]``
     (the order of GPTQ's reference implementation, where edgetl measures FP32 inputs in one pass);
   - *least-squares target* (AdaQuant, Hubara et al. 2021; GPTAQ's asymmetric calibration, 2025): the weights
     that best map the quantized inputs to the FP32 outputs, ``W E[x x~^T] E[x~ x~^T]^-1``, then rounded the same
     way (layers with fewer than 10 patches per input dimension keep their FP32 target);
   each with its bias set so that the layer's mean output matches FP32's on those crops. For every fourth layer,
   the least-squares weights' output error against the FP32 weights' on the crops they were fitted on and on 128
   of the evaluation crops tells whether the fit generalises.
5. **Where the default's error sits.** Each of the default model's quantization points (a layer: its weights and
   its input pair; an activation tensor: its pair) put back in float alone, as `benchmarks/int8_error_sources.py`
   does for the older steps: the share of the logit error variance each carries, and how many of the largest
   shares add up to what 95 % needs (1 - (RMSE for 95 % / the default's RMSE)^2). A few large shares would point at
   a targeted remedy (a finer step or a float tensor there); many small ones leave only a finer format everywhere.
   With the sequential correction in the default, a point's share can be negative: the layers after it were
   corrected for its rounding, so putting it back alone moves their means.

    python benchmarks/int8_limits.py [--work /tmp/edgetl-qbench]

Writes benchmarks/results/int8_limits.json.
"""

from __future__ import annotations

import itertools
import sys
import time
from collections.abc import Iterable, Iterator
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


def upstream(model: Any, tensor: str) -> Any:
    """``model`` cut down to the nodes ``tensor`` depends on, with ``tensor`` its only output."""
    import onnx

    producer = {out: node for node in model.graph.node for out in node.output}
    wanted, todo = set(), [tensor]
    while todo:
        node = producer.get(todo.pop())
        if node is not None and id(node) not in wanted:
            wanted.add(id(node))
            todo.extend(node.input)
    nodes = [n for n in model.graph.node if id(n) in wanted]
    read = {name for node in nodes for name in node.input}
    graph = onnx.helper.make_graph(nodes, "upstream", list(model.graph.input),
                                   [onnx.helper.make_empty_tensor_value_info(tensor)],
                                   [i for i in model.graph.initializer if i.name in read])
    cut = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    cut.ir_version = model.ir_version
    return cut


def paired_patches(quantized: Any, reference: Any, layer: Any, images: np.ndarray) -> Iterator[tuple[np.ndarray,
                                                                                                    np.ndarray]]:
    """A layer's input patches in ``reference`` (FP32) and in ``quantized`` on the same crops and positions, 16
    crops at a time, float64: ``(group, d, positions)`` each."""
    from int8_error_sources import exact_session

    from edgetl.quantize.rounding import input_patches

    node = layer.node
    original = next(n for n in reference.graph.node if n.name == node.name)
    sessions = (exact_session(upstream(reference, original.input[0])),
                exact_session(upstream(quantized, node.input[0])))
    name = quantized.graph.input[0].name
    for k in range(0, len(images), 16):
        fp32, quant = (input_patches(node, layer.float_weight.shape, s.run(None, {name: images[k:k + 16]})[0],
                                     phase=k // 16) for s in sessions)
        if fp32 is None or quant is None:
            return
        yield fp32.astype(np.float64), quant.astype(np.float64)


def input_moments(pairs: Iterable[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, ...] | None:
    """``E[x x~^T]``, ``E[x~ x~^T]``, the mean FP32 and quantized patch and the number of patches, over
    `paired_patches`' chunks; None when there are none."""
    sums, count = None, 0
    for fp32, quant in pairs:
        parts = (fp32 @ quant.transpose(0, 2, 1), quant @ quant.transpose(0, 2, 1), fp32.sum(2), quant.sum(2))
        sums = parts if sums is None else tuple(a + b for a, b in zip(sums, parts, strict=True))
        count += quant.shape[2]
    if sums is None:
        return None
    return (*(a / count for a in sums), count)


def grouped_rows(layer: Any) -> np.ndarray:
    """The layer's FP32 weights as ``(group, rows, d)``, in `paired_patches`' order."""
    from edgetl.quantize.rounding import conv_geometry

    group = conv_geometry(layer.node)["group"] if layer.node.op_type == "Conv" else 1
    rows = np.moveaxis(layer.float_weight, layer.axis, 0).astype(np.float64)
    return rows.reshape(group, rows.shape[0] // group, -1)


def least_squares(w: np.ndarray, cross: np.ndarray, second: np.ndarray, ridge: float = 1e-6) -> np.ndarray:
    """``W E[x x~^T] (E[x~ x~^T] + ridge)^-1``: the weights that best map the quantized inputs x~ to the FP32
    outputs ``W x``. ``ridge``: a fraction of the diagonal's mean (0.01 took a third off the early layers' weights,
    and their output error grew)."""
    dim = second.shape[1]
    damped = second + np.eye(dim) * (ridge * np.einsum("gii->gi", second).mean(1))[:, None, None]
    return np.linalg.solve(damped, (w @ cross).transpose(0, 2, 1)).transpose(0, 2, 1)


def refit_to_quantized_inputs(quantized: Any, reference: Any, calib: np.ndarray, *,
                              fit: bool) -> tuple[Any, float]:
    """A copy of ``quantized`` whose layers are rounded again, in graph order, on the inputs the quantized graph
    gives them, targeting the FP32 weights or (``fit``) their least-squares fit (see 4. in the module docstring);
    the seconds it took."""
    import onnx
    from onnx import numpy_helper

    from edgetl.quantize.rounding import gptq_codes
    from edgetl.quantize.weights import dequantize_weight, quantized_layers

    t0 = time.perf_counter()
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    inits = {i.name: i for i in model.graph.initializer}
    for layer in quantized_layers(model, reference):
        moments = input_moments(paired_patches(model, reference, layer, calib))
        if moments is None:
            continue
        cross, second, mean_fp32, mean_q, count = moments
        w = grouped_rows(layer)
        target = least_squares(w, cross, second) if fit and count >= 10 * second.shape[1] else w
        shape = np.moveaxis(layer.float_weight, layer.axis, 0).shape
        scales = numpy_helper.to_array(inits[layer.scale]).astype(np.float32)
        codes = gptq_codes(np.moveaxis(target.reshape(shape), 0, layer.axis), layer.axis, scales, layer.qmax,
                           second, group=w.shape[0])
        inits[layer.weight].CopyFrom(numpy_helper.from_array(codes, layer.weight))
        if layer.bias is None or layer.float_bias is None:
            continue
        rounded = np.moveaxis(dequantize_weight(codes, scales, layer.axis), layer.axis, 0).reshape(w.shape)
        shift = np.einsum("grd,gd->gr", w, mean_fp32) - np.einsum("grd,gd->gr", rounded.astype(np.float64), mean_q)
        bias_scale = numpy_helper.to_array(inits[layer.bias_scale]).astype(np.float64)
        bias = np.round((layer.float_bias + shift.reshape(-1)) / np.where(bias_scale > 0, bias_scale, 1.0))
        inits[layer.bias].CopyFrom(numpy_helper.from_array(
            np.clip(bias, -(2**31), 2**31 - 1).astype(np.int32), layer.bias))
    return model, time.perf_counter() - t0


def least_squares_held_out(quantized: Any, reference: Any, calib: np.ndarray, held_out: np.ndarray,
                           every: int = 4) -> list[dict[str, Any]]:
    """For every ``every``-th layer of ``quantized`` (its inputs as the default model gives them): the output error
    of the least-squares weights against the FP32 weights', on the crops they were fitted on and on other crops.
    Below 1 the fit helps."""
    from edgetl.quantize.weights import quantized_layers

    rows = []
    for index, layer in enumerate(quantized_layers(quantized, reference)):
        if index % every:
            continue
        fitted = list(paired_patches(quantized, reference, layer, calib))
        others = list(paired_patches(quantized, reference, layer, held_out))
        moments = input_moments(fitted)
        if moments is None or not others:
            continue
        cross, second, _, _, count = moments
        w = grouped_rows(layer)
        fit = least_squares(w, cross, second)

        def error(weights: np.ndarray, pairs: list, w: np.ndarray = w) -> float:
            return float(np.mean([np.mean((w @ f - weights @ q) ** 2) for f, q in pairs]))

        rows.append({"layer": layer.node.name, "inputs": int(w.shape[2]), "patches": int(count),
                     "fitted_crops": round(error(fit, fitted) / error(w, fitted), 2),
                     "held_out_crops": round(error(fit, others) / error(w, others), 2)})
    return rows


def error_spread(default: Any, reference_graph: Any, batch: np.ndarray, reference: np.ndarray,
                 needed_rmse: float | None) -> dict[str, Any]:
    """Every quantization point of ``default`` put back in float alone (`variance_shares`): the largest shares,
    the sum of the ten largest, how many of the largest add up to the share of the variance that ``needed_rmse``
    removes, and how many points carry a negative share."""
    from int8_error_sources import TOP_POINTS, variance_shares

    from edgetl.quantize.qdq_edit import list_units

    base, ranked = variance_shares(default, list_units(default, reference_graph), reference_graph, batch, reference)
    target = None if needed_rmse is None else 1 - needed_rmse ** 2 / base
    running = itertools.accumulate(p["variance_share"] for p in ranked)
    needed_points = None if target is None else next(
        (count for count, total in enumerate(running, 1) if total >= target), None)
    return {"logit_rmse": round(base ** 0.5, 4), "points": len(ranked),
            "largest_share": ranked[0]["variance_share"],
            "ten_largest_sum": round(sum(p["variance_share"] for p in ranked[:10]), 3),
            "share_needed_for_95_percent": None if target is None else round(target, 3),
            "largest_points_needed": needed_points,
            "negative_shares": sum(p["variance_share"] < 0 for p in ranked), "top": ranked[:TOP_POINTS]}


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
    for name, fit in (("sequential GPTQ on the quantized inputs", False),
                      ("least-squares target on the quantized inputs", True)):
        refitted, seconds = refit_to_quantized_inputs(default, reference_graph, calib, fit=fit)
        rows[name] = {**score(refitted, batch, reference), "seconds": round(seconds, 1)}
    generalization = least_squares_held_out(default, reference_graph, calib, batch[:128])
    ranges = linear_stream_ranges(fp32, calib)
    bounds = relu6_clip_bounds(fp32, calib)
    needed = next((c["logit_rmse"] for c in curve if c["agreement"] >= 0.95), None)
    spread = error_spread(default, reference_graph, batch, reference, needed)
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
        "least_squares_output_error_vs_fp32_weights": generalization, "error_spread": spread,
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
    lines.append("least-squares weights' output error / the FP32 weights', fitted crops -> held-out crops: "
                 + ", ".join(f"{g['layer'].split('/')[-2]} ({g['inputs']} inputs) {g['fitted_crops']} -> "
                             f"{g['held_out_crops']}" for g in generalization))
    lines.append(f"the default's {spread['points']} quantization points, each back in float alone: largest share of "
                 f"the logit error variance {100 * spread['largest_share']:.1f} %, ten largest "
                 f"{100 * spread['ten_largest_sum']:.1f} %; 95 % needs "
                 f"{100 * (spread['share_needed_for_95_percent'] or 0):.0f} % removed: the "
                 f"{spread['largest_points_needed']} largest points; {spread['negative_shares']} points carry a "
                 "negative share")
    result["table"] = "\n".join(lines)
    publish(RESULTS, result, result["table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
