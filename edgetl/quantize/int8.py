"""INT8 post-training static quantization to a QDQ graph, on ONNX Runtime's quantizer.

QDQ (QuantizeLinear/DequantizeLinear pairs around float ops) is the one format both ONNX Runtime and
TensorRT's explicit-precision INT8 consume. Activation types:

- ``int8`` (default, ``--target tensorrt``): signed, symmetric activations and weights (zero point 0) — what
  TensorRT requires; the same file runs on ONNX Runtime. Its Q/DQ pairs sit where TensorRT rounds (conv inputs,
  not inside a conv's fused activation or residual Add: `edgetl.quantize.qdq_edit.tensorrt_placement`).
- ``uint8`` (``--target cpu``): asymmetric activations, signed weights (ONNX Runtime's U8S8) — what ONNX
  Runtime's x86 CPU kernels run fastest (it fuses QDQ into QLinearConv); TensorRT rejects it.

Weights are 8-bit, per output channel. ONNX Runtime's 8-bit kernels saturate on x86 CPUs without VNNI; that is
a property of the machine running the model, not of the model, so the runtime handles it
(`edgetl.runtime.cpu`), and ``reduce_range`` (7-bit weights) is only an opt-in for other runtimes, applied to
the non-depthwise layers, the only ones whose kernels saturate.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

ACTIVATION_TYPES = ("int8", "uint8")
#: Deployment targets and the activation type each runs best.
TARGETS = {"tensorrt": "int8", "cpu": "uint8"}
#: The calibration method each activation type gets unless one is asked for, from `benchmarks/quantization.py`
#: and `benchmarks/qat.py`: both formats gain from clipping the long tails of unbounded tensors. Symmetric int8:
#: ImageNet Lite0 exact agreement 89.0 -> 90.75 %, the demo model's flips 6 -> 4 of 300. The CPU format's uint8,
#: with GPTQ rounding, in its own numerics: logit RMSE 0.146 -> 0.118 on ImageNet Lite0 (agreement 91.5 ->
#: 92.75 %), 0.111 -> 0.106 and 0.160 -> 0.152 on the demo's two models (3 -> 2 and 6 -> 7 flips of 300: one image
#: either way). Rounded to nearest, the demo model had gone from 4 to 6 flips, which had kept it on min/max.
DEFAULT_METHODS = {"int8": "mse-unbounded", "uint8": "mse-unbounded"}
WEIGHT_SCALES = ("max", "mse")
#: How weights are rounded to their codes: ``gptq`` (error-compensating, `edgetl.quantize.rounding`) or ``nearest``.
WEIGHT_ROUNDINGS = ("gptq", "nearest")
#: Weighted layers: what "a layer" means for sensitivity analysis and kept-in-float lists.
LAYER_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
#: Ops with nothing to quantize (shape plumbing); their absence from the registry is not a concern.
_SHAPE_OPS = {"Shape", "Constant", "ConstantOfShape", "Identity", "Cast", "Range", "Size", "NonZero"}


quant = lazy_import("onnxruntime.quantization", "train", purpose="INT8 quantization")
ort_calibrate = lazy_import("onnxruntime.quantization.calibrate", "train", purpose="INT8 quantization")
ort_registry = lazy_import("onnxruntime.quantization.registry", "train", purpose="INT8 quantization")


@dataclass(frozen=True)
class Int8Settings:
    """How to quantize.

    Args:
        method: calibration, one of `edgetl.quantize.calibration.METHODS`; ``None``: the activation type's
            `DEFAULT_METHODS` entry.
        per_channel: per-output-channel weight scales (recommended for depthwise convolutions).
        activation_type: ``int8`` (symmetric, TensorRT-compatible) or ``uint8`` (asymmetric, ORT CPU).
        reduce_range: 7-bit weights on non-depthwise layers, for runtimes that cannot avoid the 16-bit
            saturation of x86 kernels without VNNI (edgetl's runtime avoids it without this).
        percentile: the percentile of ``percentile`` calibration.
        bias_correction: subtract each layer's weight-rounding mean shift from its bias
            (`edgetl.quantize.weights`).
        sequential_correction: then move each layer's bias by the mean output error left in the quantized graph,
            layer by layer in exact numerics (`edgetl.quantize.sequential`).
        weight_scales: ``max`` (largest magnitude per channel) or ``mse`` (least squared error per channel).
        weight_rounding: ``gptq`` (each layer's codes chosen for the least output error on the calibration
            images, `edgetl.quantize.rounding`) or ``nearest``.
        centre_activations: with int8 activations, centre each ReLU6 output read by convolutions on zero (an
            exact rewrite of the FP32 graph, `edgetl.quantize.shift`), so symmetric int8 spends all its codes on it.
    """

    method: str | None = None
    per_channel: bool = True
    activation_type: str = "int8"
    reduce_range: bool = False
    percentile: float = 99.999
    bias_correction: bool = True
    weight_scales: str = "max"
    centre_activations: bool = True
    weight_rounding: str = "gptq"
    sequential_correction: bool = True

    def __post_init__(self) -> None:
        if self.activation_type not in ACTIVATION_TYPES:
            raise BadInputError(f"unknown activation type {self.activation_type!r}; expected int8 or uint8")
        if self.method is None:
            object.__setattr__(self, "method", DEFAULT_METHODS[self.activation_type])
        if self.weight_scales not in WEIGHT_SCALES:
            raise BadInputError(f"unknown weight scales {self.weight_scales!r}; expected max or mse")
        if self.weight_rounding not in WEIGHT_ROUNDINGS:
            raise BadInputError(f"unknown weight rounding {self.weight_rounding!r}; expected gptq or nearest")

    @property
    def tensorrt_compatible(self) -> bool:
        return self.activation_type == "int8"

    @property
    def centres_activations(self) -> bool:
        """Only a symmetric format needs it: an unsigned one already spends its 256 codes on [0, 6]."""
        return self.centre_activations and self.tensorrt_compatible

    @property
    def target(self) -> str:
        return "tensorrt" if self.tensorrt_compatible else "cpu"

    @property
    def gate_numerics(self) -> str:
        """The numerics the deployment target computes: ``exact`` for TensorRT (and VNNI/AMX CPUs), this
        machine's kernels (``device``) for the CPU format."""
        return "exact" if self.tensorrt_compatible else "device"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "per_channel": self.per_channel, "activation_type": self.activation_type,
                "weight_type": "int8", "weight_bits": 7 if self.reduce_range else 8,
                "reduce_range": self.reduce_range, "format": "QDQ", "target": self.target,
                "percentile": self.percentile if self.method == "percentile" else None,
                "bias_correction": self.bias_correction, "sequential_correction": self.sequential_correction,
                "weight_scales": self.weight_scales,
                "weight_rounding": self.weight_rounding, "centre_activations": self.centres_activations,
                "tensorrt_compatible": self.tensorrt_compatible, "gate_numerics": self.gate_numerics}

    def kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``quantize_static``: ranges always come from edgetl's statistics
        (`edgetl.quantize.statistics`) through a min/max calibration cache, whatever the method."""
        symmetric = self.activation_type == "int8"
        extra: dict[str, Any] = {"ActivationSymmetric": symmetric, "WeightSymmetric": True}
        if symmetric:
            # A symmetric range cannot stand in for a removed ReLU6/Clip (it lets negatives through).
            extra["QDQKeepRemovableActivations"] = True
        return {
            "quant_format": quant.QuantFormat.QDQ,
            "per_channel": self.per_channel,
            "reduce_range": False,  # 7-bit weights go on non-depthwise layers only (`weights.refine_weights`)
            "activation_type": quant.QuantType.QInt8 if symmetric else quant.QuantType.QUInt8,
            "weight_type": quant.QuantType.QInt8,
            "calibrate_method": quant.CalibrationMethod.MinMax,
            "extra_options": extra,
        }


class _DropAdvice(logging.Filter):
    """ONNX Runtime's quantizer logs a 'consider pre-processing' warning on every call; the exported graph is
    already simplified, so the advice is noise in our output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-process" not in record.getMessage() and "pre-processing" not in record.getMessage()


def to_ort_ranges(ranges: dict[str, tuple[float, float]], method: Any) -> Any:
    """The ranges as ONNX Runtime's ``TensorsData`` (what its quantizer reads from a calibration cache)."""
    data = ort_calibrate.TensorData
    return ort_calibrate.TensorsData(method, {name: data(lowest=np.array(lo, dtype=np.float32),
                                                         highest=np.array(hi, dtype=np.float32))
                                              for name, (lo, hi) in ranges.items()})


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    root = logging.getLogger()
    advice = _DropAdvice()
    root.addFilter(advice)
    for handler in root.handlers:
        handler.addFilter(advice)
    try:
        yield
    finally:
        root.removeFilter(advice)
        for handler in root.handlers:
            handler.removeFilter(advice)


def quantize_file(src: Path, dst: Path, settings: Int8Settings, *, ranges: dict[str, tuple[float, float]],
                  nodes_to_exclude: list[str] | None = None, nodes_to_quantize: list[str] | None = None) -> None:
    """``quantize_static`` into ``dst`` with the activation ranges ``ranges`` (tensor -> (low, high))."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgetl-ranges-") as tmp, quiet_quantizer():
        cache_path = Path(tmp) / "ranges.json"
        ort_calibrate.save_tensors_data(to_ort_ranges(ranges, quant.CalibrationMethod.MinMax), cache_path)
        try:
            quant.quantize_static(
                str(src), str(dst), None, nodes_to_exclude=nodes_to_exclude or [],
                nodes_to_quantize=nodes_to_quantize or [], calibration_cache_path=str(cache_path),
                **settings.kwargs(),
            )
        except (ValueError, RuntimeError, KeyError) as exc:
            raise BadInputError(f"INT8 quantization failed: {exc}",
                                hint="delete the bundle's calibration/ folder if the model changed") from exc


def support_report(model: Any) -> dict[str, Any]:
    """Which ops get INT8 kernels. Nodes of other types stay in float: they are counted and named."""
    quantizable = set(ort_registry.QDQRegistry) | set(ort_registry.QLinearOpsRegistry)
    counts: dict[str, int] = {}
    layers = []
    for node in model.graph.node:
        if node.op_type not in quantizable and node.op_type not in _SHAPE_OPS:
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
        if node.op_type in LAYER_OPS:
            layers.append(node.name)
    return {"float_only_ops": counts, "float_only_nodes": sum(counts.values()), "layers": layers}


def check_support(model: Any) -> dict[str, Any]:
    """Refuse a graph with no layer to quantize; the report counts the ops without INT8 kernels (the caller's
    warnings name them: `edgetl.quantize.api`)."""
    report = support_report(model)
    if not report["layers"]:
        raise BadInputError("the model has no Conv/Gemm/MatMul layer that INT8 quantization applies to",
                            hint="use --precision fp16 for this model")
    if any(not name for name in report["layers"]):
        raise BadInputError("the graph has unnamed layers; re-export it with `edgetl export`")
    return report


def qdq_summary(model: Any) -> dict[str, Any]:
    """Counts of Q/DQ nodes and of layers running on INT8 inputs in a quantized graph."""
    producers = {out: node for node in model.graph.node for out in node.output}
    quantized, floating = [], []
    for node in model.graph.node:
        if node.op_type not in LAYER_OPS:
            continue
        # The weight input tells: a shared activation may still pass a Q/DQ pair kept for a quantized neighbour.
        weight = producers.get(node.input[1]) if len(node.input) > 1 else None
        (quantized if weight is not None and weight.op_type == "DequantizeLinear" else floating).append(node.name)
    ops = [n.op_type for n in model.graph.node]
    return {"quantize_linear": ops.count("QuantizeLinear"), "dequantize_linear": ops.count("DequantizeLinear"),
            "int8_layers": len(quantized), "float_layers": floating}


def unknown_nodes(model: Any, names: list[str]) -> list[str]:
    known = {n.name for n in model.graph.node}
    return [n for n in names if n not in known]
