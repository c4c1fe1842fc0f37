"""Where the TensorRT format's INT8 error comes from on EfficientNet-Lite0, and two remedies, measured.

The same model, crops and calibration as `benchmarks/quantization.py` (it builds them if missing). The TensorRT
format (int8 symmetric activations, per-channel int8 weights, GPTQ rounding, bias correction, TensorRT placement)
is scored in exact numerics (ONNX Runtime, graph optimizations off) against FP32, top-1 agreement and logit RMSE,
with parts of the quantization switched off, on the exported graph (``--no-centre-activations``) and on its
centred rewrite (`edgetl.quantize.shift`), both with min/max ranges, and on the centred graph with
``mse-unbounded`` ranges (what `edgetl quantize --target tensorrt` writes):

  full              : everything quantized
  activations only  : every weight and bias back to FP32, every activation pair kept
  weights only      : every activation pair removed, weights and biases quantized
  depthwise inputs  : weights FP32, only the activations read by depthwise convolutions quantized

and one remedy: cross-layer equalization across the ReLU6 before each depthwise convolution, made exact in FP32 by
giving every channel its own clip bound (``Relu -> Min(x, 6 / s_c)``): channel c of the producing conv is divided
by s_c = (its calibration maximum) / (the tensor's), the depthwise filter multiplied by it, so every channel fills
the tensor's int8 range. ``max_upscale`` caps 1 / s_c. Then both again with the evaluated crops added to the
scales and ranges (an oracle: no value can exceed its channel's range), which separates what equalization buys
from what clipping above the calibration maxima costs.

Point sensitivity: every quantization point of the default model put back in float alone (a layer: its weights
and its input pair; an activation tensor: its pair), ranked by the share of the logit error variance it carries;
the two largest are measured again in the min/max-ranged model, which shows what ``mse-unbounded`` changed.

    python benchmarks/int8_error_sources.py [--work /tmp/edgetl-qbench]

Writes benchmarks/results/int8_error_sources.json.
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

RESULTS = Path(__file__).parent / "results" / "int8_error_sources.json"
UPSCALES = (4.0, 64.0)


def exact_session(model: Any) -> Any:
    """An ONNX Runtime session over the in-memory ``model`` in exact numerics (edgetl's own session options)."""
    import onnxruntime as ort

    from edgetl.runtime.backends.onnxruntime import session_options

    return ort.InferenceSession(model.SerializeToString(), session_options("exact"),
                                providers=["CPUExecutionProvider"])


def run(model: Any, batch: np.ndarray) -> np.ndarray:
    from edgetl.quantize.exact_form import integer_pads

    model = integer_pads(model)[0]  # the same values, fewer passes on the centred graph
    session = exact_session(model)
    name = model.graph.input[0].name
    return np.concatenate([session.run(None, {name: batch[k:k + 50]})[0] for k in range(0, len(batch), 50)])


def score(model: Any, batch: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    return compare(run(model, batch), reference)


def compare(logits: np.ndarray, reference: np.ndarray) -> dict[str, float]:
    """Top-1 agreement and logit RMSE of ``logits`` against the FP32 ``reference``."""
    return {"agreement": float(np.mean(logits.argmax(1) == reference.argmax(1))),
            "logit_rmse": round(float(np.sqrt(np.mean((logits - reference) ** 2))), 4)}


def ptq(model: Any, calib: np.ndarray, work: Path, name: str, method: str = "minmax") -> Any:
    """edgetl's TensorRT-format PTQ steps on ``model`` (statistics, quantizer, placement, GPTQ rounding, bias
    correction), with ``method`` ranges."""
    import onnx

    from edgetl.quantize.int8 import Int8Settings, quantize_file
    from edgetl.quantize.qdq_edit import float_outputs, tensorrt_placement
    from edgetl.quantize.statistics import measure, unbounded_tensors
    from edgetl.quantize.weights import refine_weights

    src, dst = work / f"{name}.onnx", work / f"{name}-int8.onnx"
    onnx.save(model, str(src))
    stats = measure(model, [calib[k:k + 20] for k in range(0, len(calib), 20)], input_name=model.graph.input[0].name)
    ranges = stats.ranges(method, 99.99, "int8", unbounded=unbounded_tensors(model))
    quantize_file(src, dst, Int8Settings(activation_type="int8", method=method), ranges=ranges)
    quantized = tensorrt_placement(float_outputs(onnx.load(str(dst)), model), model)
    refine_weights(quantized, model, mse=False, input_means=stats.input_means, reduce_range=False,
                   moments=stats.patch_moments)
    return quantized


def float_weights(quantized: Any, reference: Any) -> Any:
    """``quantized`` with every layer's weight and bias read from the FP32 initializers (its input pairs kept)."""
    import onnx

    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    nodes = {n.name: n for n in reference.graph.node}
    inits = {i.name: i for i in reference.graph.initializer}
    added: set[str] = set()
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm") and node.name in nodes:
            for k in (1, 2):
                name = f"{nodes[node.name].input[k]}_fp32"
                if name not in added:
                    copy = onnx.TensorProto()
                    copy.CopyFrom(inits[nodes[node.name].input[k]])
                    copy.name = name
                    model.graph.initializer.append(copy)
                    added.add(name)
                node.input[k] = name
    return model


def _maps(model: Any) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    producer = {out: n for n in model.graph.node for out in n.output}
    consumers: dict[str, list[Any]] = collections.defaultdict(list)
    for node in model.graph.node:
        for name in node.input:
            consumers[name].append(node)
    return producer, consumers


def _depthwise(node: Any) -> bool:
    return node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)


def depthwise_inputs_only(quantized: Any, reference: Any) -> Any:
    """Weights FP32 and only the activation pairs read by depthwise convolutions kept."""
    from edgetl.quantize.qdq_edit import ACTIVATION, list_units, restore

    model = float_weights(quantized, reference)
    _, consumers = _maps(model)

    def feeds_depthwise(tensor: str) -> bool:
        return any(_depthwise(reader) for q in consumers[tensor] if q.op_type == "QuantizeLinear"
                   for dq in consumers[q.output[0]] for reader in consumers[dq.output[0]])

    units = [u for u in list_units(model, reference) if u.kind == ACTIVATION and not feeds_depthwise(u.name)]
    return restore(model, reference, units)


def equalize_relu6_depthwise(model: Any, calib: np.ndarray, max_upscale: float) -> Any:
    """Cross-layer equalization across each Conv -> Clip(0, 6) -> depthwise Conv, exact in FP32 (per-channel
    clip bounds); scales from the channels' calibration maxima."""
    import onnx
    import onnxruntime as ort
    from onnx import helper, numpy_helper

    out = onnx.ModelProto()
    out.CopyFrom(model)
    producer, consumers = _maps(out)
    triples = [(producer[n.input[0]], n, consumers[n.output[0]][0]) for n in out.graph.node
               if n.op_type == "Clip" and producer.get(n.input[0]) is not None
               and producer[n.input[0]].op_type == "Conv" and len(consumers[n.output[0]]) == 1
               and _depthwise(consumers[n.output[0]][0])]
    probe = onnx.ModelProto()
    probe.CopyFrom(out)
    names = [clip.output[0] for _, clip, _ in triples]
    probe.graph.output.extend(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None) for t in names)
    session = ort.InferenceSession(probe.SerializeToString(), providers=["CPUExecutionProvider"])
    maxima: dict[str, np.ndarray] = {}
    for k in range(0, len(calib), 20):
        for name, value in zip(names, session.run(names, {out.graph.input[0].name: calib[k:k + 20]})):
            top = value.max(axis=(0, 2, 3))
            maxima[name] = top if name not in maxima else np.maximum(maxima[name], top)
    inits = {i.name: i for i in out.graph.initializer}

    def scale_init(name: str, factor: np.ndarray) -> None:
        value = numpy_helper.to_array(inits[name]) * factor
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))

    for conv, clip, depthwise in triples:
        top = np.minimum(maxima[clip.output[0]], 6.0)
        s = np.where(top > 0, np.clip(top / top.max(), 1.0 / max_upscale, 1.0), 1.0).astype(np.float32)
        scale_init(conv.input[1], 1.0 / s[:, None, None, None])
        scale_init(conv.input[2], 1.0 / s)
        scale_init(depthwise.input[1], s[:, None, None, None])
        bound = f"{clip.name}_bound"
        out.graph.initializer.append(numpy_helper.from_array((6.0 / s).reshape(-1, 1, 1).astype(np.float32), bound))
        index = list(out.graph.node).index(clip)
        relu = helper.make_node("Relu", [clip.input[0]], [f"{clip.output[0]}_relu"], name=f"{clip.name}_relu")
        low = helper.make_node("Min", [relu.output[0], bound], [clip.output[0]], name=f"{clip.name}_min")
        out.graph.node.remove(clip)
        out.graph.node.insert(index, low)
        out.graph.node.insert(index, relu)
    return out


DEFAULT = "mse-unbounded"  # the TensorRT format's default ranges (`edgetl.quantize.int8.DEFAULT_METHODS`)
TOP_POINTS = 8


def variance_shares(quantized: Any, units: list[Any], reference_graph: Any, batch: np.ndarray,
                    reference: np.ndarray) -> tuple[float, list[dict[str, Any]]]:
    """The squared logit RMSE of ``quantized`` on ``batch``, and for each of ``units`` put back in float alone (a
    layer: its weights and its input pair; an activation: its pair) the share of that variance it carries, with its
    agreement and RMSE, the largest share first."""
    from edgetl.quantize.qdq_edit import restore

    base = score(quantized, batch, reference)["logit_rmse"] ** 2
    out = []
    for unit in units:
        r = score(restore(quantized, reference_graph, [unit]), batch, reference)
        out.append({"kind": unit.kind, "name": unit.name, "agreement": r["agreement"],
                    "logit_rmse": r["logit_rmse"], "variance_share": round(1 - r["logit_rmse"] ** 2 / base, 4)})
    return base, sorted(out, key=lambda p: -p["variance_share"])


def point_sensitivity(default: Any, minmax: Any, reference_graph: Any, batch: np.ndarray,
                      reference: np.ndarray) -> dict[str, Any]:
    """Each quantization point of the default model put back in float alone (`variance_shares`), the largest
    first; then the same for the largest ones in the min/max-ranged model, which shows what ``mse-unbounded``
    changed."""
    from edgetl.quantize.qdq_edit import list_units

    base, ranked = variance_shares(default, list_units(default, reference_graph), reference_graph, batch, reference)
    top = ranked[:TOP_POINTS]
    _, before = variance_shares(minmax, [u for u in list_units(minmax, reference_graph)
                                         if any(u.kind == p["kind"] and u.name == p["name"] for p in top[:2])],
                                reference_graph, batch, reference)
    return {"logit_rmse": round(base ** 0.5, 4), "points": len(ranked), "top": top,
            "sum_of_shares": round(sum(max(p["variance_share"], 0.0) for p in ranked), 3),
            "same_points_with_minmax_ranges": before}


def main() -> int:
    import onnx
    from quantization import crops, publish, work_args, workspace

    import edgetl.quantize.qdq_edit as qdq_edit

    work = Path(work_args(__doc__.splitlines()[0]).work)
    t0 = time.perf_counter()
    calib_dir, eval_dir, exported = workspace(work)
    calib, batch = crops(exported, calib_dir, 300), crops(exported, eval_dir, 400)
    fp32 = onnx.load(str(exported / "model.onnx"))
    reference = run(fp32, batch)
    scratch = work / "error-sources"
    scratch.mkdir(exist_ok=True)

    from edgetl.quantize.qdq_edit import ACTIVATION, list_units, restore
    from edgetl.quantize.shift import centre_bounded_activations

    rows = {}
    centred = centre_bounded_activations(fp32)[0]
    graphs = {"": (fp32, "minmax"), "centred: ": (centred, "minmax"), "centred, mse-unbounded: ": (centred, DEFAULT)}
    quantized_by_label = {}
    for label, (graph, method) in graphs.items():
        quantized = ptq(graph, calib, scratch, f"lite0-{len(label)}", method)
        quantized_by_label[label] = quantized
        rows[f"{label}full"] = score(quantized, batch, reference)
        rows[f"{label}activations only"] = score(float_weights(quantized, graph), batch, reference)
        rows[f"{label}weights only"] = score(restore(quantized, graph, [u for u in list_units(quantized, graph)
                                                                        if u.kind == ACTIVATION]), batch, reference)
        rows[f"{label}depthwise inputs only"] = score(depthwise_inputs_only(quantized, graph), batch, reference)
    sensitivity = point_sensitivity(quantized_by_label["centred, mse-unbounded: "],
                                    quantized_by_label["centred: "], centred, batch, reference)
    # The per-channel bound is a Min after the Relu: TensorRT runs it in the conv's epilogue like the Clip it replaces.
    qdq_edit.EPILOGUE_OPS = qdq_edit.EPILOGUE_OPS | {"Min"}
    for cap in UPSCALES:
        equalized = equalize_relu6_depthwise(fp32, calib, cap)
        exact = float(np.mean(run(equalized, batch).argmax(1) == reference.argmax(1)))
        eq_quantized = ptq(equalized, calib, scratch, f"equalized-{cap:g}")
        rows[f"ReLU6 -> depthwise equalized, max upscale {cap:g}x"] = {
            **score(eq_quantized, batch, reference), "fp32_equalized_agreement": exact,
            "depthwise_inputs_only": score(depthwise_inputs_only(eq_quantized, equalized), batch, reference)}
    # The same with every evaluated crop in the scales and ranges too: nothing can exceed its channel's range, so
    # what is left is what equalization itself buys.
    both = np.concatenate([calib, batch])
    oracle = equalize_relu6_depthwise(fp32, both, UPSCALES[0])
    oracle_quantized = ptq(oracle, both, scratch, "equalized-oracle")
    plain_quantized = ptq(fp32, both, scratch, "plain-oracle")
    rows["plain, ranges from calibration + evaluated crops"] = {
        **score(plain_quantized, batch, reference),
        "depthwise_inputs_only": score(depthwise_inputs_only(plain_quantized, fp32), batch, reference)}
    rows[f"equalized {UPSCALES[0]:g}x, scales and ranges from calibration + evaluated crops"] = {
        **score(oracle_quantized, batch, reference),
        "depthwise_inputs_only": score(depthwise_inputs_only(oracle_quantized, oracle), batch, reference)}
    lines = ["| variant | agreement | logit RMSE |", "|---|---|---|"]
    lines += [f"| {name} | {100 * r['agreement']:.2f} % | {r['logit_rmse']} |" for name, r in rows.items()]
    sens_lines = ["| point (default graph) | share of the logit error variance | agreement without it |",
                  "|---|---|---|"]
    sens_lines += [f"| {p['kind']} {p['name']} | {100 * p['variance_share']:.1f} % | {100 * p['agreement']:.2f} % |"
                   for p in sensitivity["top"]]
    results = {"model": "efficientnet_lite0 (ImageNet)", "format": "tensorrt (int8 activations), exact numerics",
               "images": int(len(batch)), "calibration_images": int(len(calib)), "rows": rows,
               "point_sensitivity": sensitivity, "table": "\n".join(lines),
               "sensitivity_table": "\n".join(sens_lines), "seconds": round(time.perf_counter() - t0, 1)}
    publish(RESULTS, results, results["table"], results["sensitivity_table"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
