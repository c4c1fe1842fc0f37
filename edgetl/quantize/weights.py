"""Weight-side PTQ steps on a QDQ graph: MSE-optimal per-channel weight scales, error-compensating rounding
(GPTQ, `edgetl.quantize.rounding`) and bias correction.

Both edit the quantized graph in place of re-running the quantizer: each weighted layer's int8 weight
initializer, its scale and its int32 bias are rewritten from the FP32 initializers, keeping the bias scale
rule of the format (input scale x weight scale, per output channel) that TensorRT and ONNX Runtime expect.

- **MSE scales**: ``max|w| / 127`` lets one outlier weight set the step of a whole channel. Each channel's
  clipping ratio is chosen from a grid to minimise ``||w - Q(w)||^2`` instead.
- **Bias correction** (Nagel et al., 2019, "Data-Free Quantization", empirical form): rounding weights
  shifts each output channel's mean by ``E[(W_q - W) x]``. With the FP32 mean of the layer's input at every
  position (`edgetl.quantize.statistics`), the shift is exact for a linear layer, padding and stride
  included, and is subtracted from the bias.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.quantize.int8 import LAYER_OPS
from edgetl.quantize.rounding import PatchMoments, conv_geometry, gptq_codes
from edgetl.runtime.cpu import usable_cpus

numpy_helper = lazy_import("onnx.numpy_helper", "train", purpose="INT8 weight rounding")

#: Clipping ratios the MSE search tries, as fractions of the channel's largest magnitude.
MSE_GRID = np.linspace(0.5, 1.0, 51)


@dataclass
class QuantizedLayer:
    """One weighted layer of a QDQ graph and the initializers that carry its quantized weights.

    Attributes:
        node: the Conv/Gemm/MatMul node.
        weight, scale, zero_point: initializer names of the int8 weight and its (per-channel) scale.
        axis: the weight's channel axis (the DQ's ``axis``).
        bias, bias_scale: initializer names of the int32 bias and its scale (``None`` without a bias).
        float_weight, float_bias: the FP32 initializers.
        qmax: the largest integer the weights use (127, or 63/64 with a reduced range).
    """

    node: Any
    weight: str
    scale: str
    zero_point: str | None
    axis: int
    bias: str | None
    bias_scale: str | None
    float_weight: np.ndarray
    float_bias: np.ndarray | None
    qmax: int


def quantized_layers(quantized: Any, reference: Any) -> list[QuantizedLayer]:
    """The layers of ``quantized`` whose weights are int8 initializers behind a DequantizeLinear."""
    inits = {i.name: i for i in quantized.graph.initializer}
    ref_inits = {i.name: i for i in reference.graph.initializer}
    ref_nodes = {n.name: n for n in reference.graph.node}
    producer = {out: n for n in quantized.graph.node for out in n.output}
    layers = []
    for node in quantized.graph.node:
        original = ref_nodes.get(node.name)
        if node.op_type not in LAYER_OPS or original is None or len(node.input) < 2:
            continue
        dq = producer.get(node.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits \
                or original.input[1] not in ref_inits:
            continue
        q = numpy_helper.to_array(inits[dq.input[0]])
        if q.dtype != np.int8:
            continue
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
        bias = bias_scale = None
        float_bias = None
        if len(node.input) > 2 and len(original.input) > 2 and original.input[2] in ref_inits:
            bdq = producer.get(node.input[2])
            if bdq is not None and bdq.op_type == "DequantizeLinear" and bdq.input[0] in inits:
                bias, bias_scale = bdq.input[0], bdq.input[1]
                float_bias = numpy_helper.to_array(ref_inits[original.input[2]]).astype(np.float32)
        layers.append(QuantizedLayer(
            node=node, weight=dq.input[0], scale=dq.input[1], zero_point=dq.input[2] if len(dq.input) > 2 else None,
            axis=axis % q.ndim, bias=bias, bias_scale=bias_scale,
            float_weight=numpy_helper.to_array(ref_inits[original.input[1]]).astype(np.float32),
            float_bias=float_bias, qmax=max(1, int(np.abs(q.astype(np.int32)).max()))))
    return layers


def _channels_first(w: np.ndarray, axis: int) -> np.ndarray:
    return np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)


def mse_scales(weight: np.ndarray, axis: int, qmax: int, grid: np.ndarray = MSE_GRID) -> np.ndarray:
    """Per-channel scales minimising the squared rounding-and-clipping error of ``weight``."""
    w = _channels_first(weight, axis).astype(np.float64)
    amax = np.maximum(np.abs(w).max(axis=1), 1e-12)
    best = amax / qmax
    best_err = np.full(len(w), np.inf)
    for ratio in grid:
        scale = ratio * amax / qmax
        err = ((np.clip(np.round(w / scale[:, None]), -qmax, qmax) * scale[:, None] - w) ** 2).sum(axis=1)
        better = err < best_err
        best[better], best_err[better] = scale[better], err[better]
    return best.astype(np.float32)


def quantize_weight(weight: np.ndarray, scales: np.ndarray, axis: int, qmax: int) -> np.ndarray:
    shape = [1] * weight.ndim
    shape[axis] = -1
    s = scales.reshape(shape) if scales.ndim else scales
    return np.clip(np.round(weight / s), -qmax, qmax).astype(np.int8)


def dequantize_weight(q: np.ndarray, scales: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    shape[axis] = -1
    return q.astype(np.float32) * (scales.reshape(shape) if scales.ndim else scales)


def output_mean_shift(node: Any, delta_w: np.ndarray, input_mean: np.ndarray) -> np.ndarray | None:
    """``E[layer(x; delta_w)]`` per output channel, from the mean input ``input_mean`` (no batch axis).

    A layer is linear in its input, so the mean of its output over images is the layer applied to the mean
    input; averaging that over output positions gives the per-channel shift. ``None`` for a layout this
    does not cover (the layer is then left uncorrected).
    """
    attrs = {a.name: a for a in node.attribute}
    if node.op_type == "Conv":
        if input_mean.ndim != 3 or delta_w.ndim != 4:
            return None
        geo = conv_geometry(node)
        if geo["auto_pad"] not in (b"", b"NOTSET"):
            return None
        group, strides, dilations, pads = geo["group"], geo["strides"], geo["dilations"], geo["pads"]
        kh, kw = delta_w.shape[2:]
        x = np.pad(input_mean, ((0, 0), (pads[0], pads[2]), (pads[1], pads[3])))
        out_h = (x.shape[1] - dilations[0] * (kh - 1) - 1) // strides[0] + 1
        out_w = (x.shape[2] - dilations[1] * (kw - 1) - 1) // strides[1] + 1
        if out_h < 1 or out_w < 1:
            return None
        m = np.empty((x.shape[0], kh, kw), dtype=np.float64)
        for i in range(kh):
            for j in range(kw):
                rows = slice(i * dilations[0], i * dilations[0] + strides[0] * (out_h - 1) + 1, strides[0])
                cols = slice(j * dilations[1], j * dilations[1] + strides[1] * (out_w - 1) + 1, strides[1])
                m[:, i, j] = x[:, rows, cols].mean(axis=(1, 2))
        cout, cin_g = delta_w.shape[:2]
        dw = delta_w.reshape(group, cout // group, cin_g, kh, kw).astype(np.float64)
        return np.einsum("gocij,gcij->go", dw, m.reshape(group, cin_g, kh, kw)).reshape(cout)
    mean = input_mean.reshape(-1, input_mean.shape[-1]).mean(axis=0).astype(np.float64)
    if node.op_type == "Gemm":
        if attrs.get("transA") is not None and attrs["transA"].i:
            return None
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        trans_b = attrs["transB"].i if "transB" in attrs else 0
        return alpha * (delta_w @ mean if trans_b else mean @ delta_w)
    if node.op_type == "MatMul" and delta_w.ndim == 2:
        return mean @ delta_w
    return None


@dataclass
class WeightEditReport:
    """What `refine_weights` changed: layers with MSE scales, layers rounded by GPTQ, layers bias-corrected,
    layers skipped."""

    mse_layers: int = 0
    gptq_layers: int = 0
    corrected_layers: int = 0
    uncorrected: list[str] | None = None
    mean_abs_shift: float = 0.0
    reduced_layers: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"mse_scale_layers": self.mse_layers, "gptq_rounded_layers": self.gptq_layers,
                "seven_bit_layers": self.reduced_layers,
                "bias_corrected_layers": self.corrected_layers,
                "not_bias_corrected": self.uncorrected or [], "mean_abs_bias_shift": self.mean_abs_shift}


def is_depthwise(node: Any, weight: np.ndarray) -> bool:
    return node.op_type == "Conv" and conv_geometry(node)["group"] > 1 and weight.shape[1] == 1


@dataclass
class _Rounding:
    """One layer's weights to round: its scales (old: the quantizer's), code limit, and input-patch moments (None:
    round to nearest)."""

    layer: Any
    scales: np.ndarray
    old_scales: np.ndarray
    qmax: int
    moment: PatchMoments | None

    def codes(self) -> np.ndarray:
        layer = self.layer
        if self.moment is None:
            return quantize_weight(layer.float_weight, self.scales, layer.axis, self.qmax)
        group = conv_geometry(layer.node)["group"] if layer.node.op_type == "Conv" else 1
        return gptq_codes(layer.float_weight, layer.axis, self.scales, self.qmax, self.moment.second_moment(),
                          group=group)


def refine_weights(quantized: Any, reference: Any, *, mse: bool, input_means: dict[str, np.ndarray] | None,
                   reduce_range: bool = False, moments: dict[str, PatchMoments] | None = None) -> WeightEditReport:
    """Rewrite the int8 weights (MSE scales, GPTQ rounding) and int32 biases (bias correction) of ``quantized``
    in place.

    Args:
        quantized: the QDQ model (edited in place).
        reference: the FP32 model it was made from.
        mse: choose per-channel scales by MSE instead of max.
        input_means: layer name -> mean input (no batch axis); ``None`` skips bias correction.
        reduce_range: 7-bit weights (|q| <= 63) on the layers whose x86 kernels can saturate (all but
            depthwise convolutions).
        moments: layer name -> its input-patch moments: those layers' weights are rounded by GPTQ instead of
            to nearest (`edgetl.quantize.rounding`); ``None``: every layer to nearest.
    """
    inits = {i.name: i for i in quantized.graph.initializer}

    def put(name: str, value: np.ndarray) -> None:
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    report = WeightEditReport(uncorrected=[])
    shifts = []
    plans = []
    for layer in quantized_layers(quantized, reference):
        scales = numpy_helper.to_array(inits[layer.scale]).astype(np.float32)
        old_scales = scales.copy()
        qmax = layer.qmax
        if reduce_range and not is_depthwise(layer.node, layer.float_weight):
            qmax = min(qmax, 63)
            report.reduced_layers += 1
        if mse and scales.ndim == 1:
            scales = mse_scales(layer.float_weight, layer.axis, qmax)
            report.mse_layers += 1
        elif qmax != layer.qmax:
            scales = scales * (layer.qmax / qmax)
        put(layer.scale, scales)
        moment = (moments or {}).get(layer.node.name) if scales.ndim == 1 else None
        report.gptq_layers += moment is not None
        plans.append(_Rounding(layer, scales, old_scales, qmax, moment))

    # Layers round independently; GPTQ's column updates are numpy work that releases the GIL: one thread per CPU.
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        rounded = list(pool.map(_Rounding.codes, plans))
    for plan, q in zip(plans, rounded, strict=True):
        layer, scales, old_scales = plan.layer, plan.scales, plan.old_scales
        put(layer.weight, q)
        if layer.bias is None or layer.float_bias is None:
            continue
        bias = layer.float_bias.astype(np.float64)
        mean = (input_means or {}).get(layer.node.name)
        if input_means is not None:
            shift = None if mean is None else output_mean_shift(
                layer.node, dequantize_weight(q, scales, layer.axis) - layer.float_weight, mean)
            if shift is None or shift.shape != bias.shape:
                report.uncorrected.append(layer.node.name)
            else:
                bias = bias - shift
                shifts.append(float(np.abs(shift).mean()))
                report.corrected_layers += 1
        old_bias_scale = numpy_helper.to_array(inits[layer.bias_scale]).astype(np.float64)
        # The format's rule: bias scale = input scale x weight scale; the input scale is unchanged.
        with np.errstate(divide="ignore", invalid="ignore"):
            input_scale = np.where(old_scales > 0, old_bias_scale / old_scales, 0.0)
        bias_scale = (input_scale * scales).astype(np.float32)
        safe = np.where(bias_scale > 0, bias_scale, 1.0)
        put(layer.bias_scale, bias_scale)
        put(layer.bias, np.clip(np.round(bias / safe), -(2**31), 2**31 - 1).astype(np.int32))
    report.mean_abs_shift = float(np.mean(shifts)) if shifts else 0.0
    return report
