"""Centred bounded activations: the full int8 range for ReLU6 outputs in a symmetric (TensorRT) format.

TensorRT's INT8 is symmetric (zero point 0), so a ReLU6 output in [0, 6] uses only the codes 0..127: a step of
6/127, one bit less than an unsigned format spends on it. The error of the TensorRT format on EfficientNet-Lite0
sits there, mostly in the ReLU6 outputs read by depthwise convolutions (`benchmarks/int8_error_sources.py`).

The FP32 graph is rewritten, exactly, so that such a tensor is centred on zero before it is quantized: for a
``Conv -> Clip(lo, hi)`` read only by convolutions, with c = (lo + hi) / 2,

- the producing conv's bias loses c and the Clip becomes ``Clip(lo - c, hi - c)``: the tensor is z - c, in
  [-3, 3] for a ReLU6, so symmetric int8 steps 3/127 over it;
- every reading conv's bias gains c x (the sum of its filter's taps), since W * (z - c + c) = W * (z - c) + c sum W;
- a reading conv with padding pads explicitly, with -c (the original zero, shifted), in a ``Pad`` before it.

Every op stays a standard ONNX op that TensorRT's explicit INT8 runs (the Pad with a constant value included), and
every conv stays INT8. The rewritten graph computes the FP32 outputs to float rounding; it is the reference every
INT8 step of the TensorRT format uses (statistics, bias correction, budget edits, QAT).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.quantize.qdq_edit import GraphIndex

onnx = lazy_import("onnx", "train", purpose="INT8 quantization")

#: Version of the rewrite: part of the calibration cache key of a shifted graph.
SHIFT_VERSION = 1
#: Pad's value as an input needs opset 11.
_MIN_OPSET = 11


@dataclass(frozen=True)
class ShiftReport:
    """What `centre_bounded_activations` rewrote: the tensors centred and the convs given an explicit Pad."""

    tensors: list[str]
    padded: list[str]
    readers: dict[str, float] = field(default_factory=dict)  # conv reading a centred tensor -> its centre

    def neutral_means(self, input_means: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Mean inputs that make bias correction undo only what centring adds to weight rounding.

        A reading conv's bias gained c x (the sum of its FP32 taps); with rounded taps it computes
        W_q * (z - c) + b + c sum W, off by c sum (W - W_q) everywhere. Bias correction with the reading convs'
        input taken as -c removes exactly that (`edgetl.quantize.weights.refine_weights`), and nothing else:
        what is used when bias correction proper is off or has too few images.
        """
        return {name: np.full_like(input_means[name], -c) for name, c in self.readers.items() if name in input_means}

    def to_dict(self) -> dict[str, Any]:
        return {"centred_tensors": len(self.tensors), "explicit_pads": len(self.padded), "tensors": self.tensors}


def _const(inits: dict[str, Any], name: str) -> float | None:
    if name not in inits:
        return None
    value = onnx.numpy_helper.to_array(inits[name])
    return float(value) if value.size == 1 else None


def _attr(node: Any, name: str) -> Any:
    return next((a for a in node.attribute if a.name == name), None)


def _opset(model: Any) -> int:
    return max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)


def _shiftable(clip: Any, producer: dict[str, Any], consumers: dict[str, list[Any]], inits: dict[str, Any],
               outputs: set[str], opset: int) -> tuple[Any, list[Any], float, float] | None:
    """``(conv, readers, lo, hi)`` when the Clip can be centred exactly, else None."""
    if len(clip.input) < 3 or clip.output[0] in outputs:
        return None
    lo, hi = _const(inits, clip.input[1]), _const(inits, clip.input[2])
    conv = producer.get(clip.input[0])
    readers = consumers.get(clip.output[0], [])
    if lo is None or hi is None or hi <= lo or conv is None or conv.op_type != "Conv" or not readers:
        return None
    if len(consumers.get(clip.input[0], [])) != 1 or clip.input[0] in outputs:
        return None
    if len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits:
        return None
    for reader in readers:
        if reader.op_type != "Conv" or reader.input[0] != clip.output[0] or reader.input[1] not in inits:
            return None
        if len(reader.input) > 2 and reader.input[2] and reader.input[2] not in inits:
            return None
        auto_pad = _attr(reader, "auto_pad")
        if auto_pad is not None and auto_pad.s not in (b"", b"NOTSET"):
            return None
        pads = _attr(reader, "pads")
        if pads is not None and any(pads.ints) and opset < _MIN_OPSET:
            return None
    return conv, readers, lo, hi


def centre_bounded_activations(model: Any, skip: Sequence[str] = (),
                               only: Sequence[str] | None = None) -> tuple[Any, ShiftReport]:
    """A copy of ``model`` with every exactly-shiftable ``Conv -> Clip`` output centred on zero (module docstring),
    but the Clip outputs named in ``skip`` (and, given ``only``, those not named there)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(out)
    inits, producer, consumers = index.initializers, index.producer, index.consumers
    outputs, opset = index.outputs, _opset(out)
    tensors: list[str] = []
    padded: list[str] = []
    centres: dict[str, float] = {}

    def set_init(name: str, value: np.ndarray) -> None:
        tensor = onnx.numpy_helper.from_array(value.astype(np.float32), name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:
            graph.initializer.append(tensor)
            inits[name] = graph.initializer[-1]

    def bias_of(conv: Any, channels: int) -> np.ndarray:
        """The conv's bias (a fresh zero bias input when it has none)."""
        if len(conv.input) > 2 and conv.input[2]:
            return onnx.numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
        name = f"{conv.name or conv.output[0]}_bias"
        while len(conv.input) < 3:
            conv.input.append("")
        conv.input[2] = name
        return np.zeros(channels)

    for clip in list(graph.node):
        if clip.op_type != "Clip" or clip.output[0] in skip or (only is not None and clip.output[0] not in only):
            continue
        found = _shiftable(clip, producer, consumers, inits, outputs, opset)
        if found is None:
            continue
        conv, readers, lo, hi = found
        c = (lo + hi) / 2.0
        channels = onnx.numpy_helper.to_array(inits[conv.input[1]]).shape[0]
        set_init(conv.input[2], bias_of(conv, channels) - c)
        clip.input[1], clip.input[2] = f"{clip.output[0]}_lo", f"{clip.output[0]}_hi"
        set_init(clip.input[1], np.array(lo - c))
        set_init(clip.input[2], np.array(hi - c))
        for reader in readers:
            weight = onnx.numpy_helper.to_array(inits[reader.input[1]]).astype(np.float64)
            reader_bias = bias_of(reader, weight.shape[0]) + c * weight.sum(axis=tuple(range(1, weight.ndim)))
            set_init(reader.input[2], reader_bias)
            centres[reader.name] = c
            pads = _attr(reader, "pads")
            if pads is None or not any(pads.ints):
                continue
            half = len(pads.ints) // 2
            name = f"{reader.name or reader.output[0]}_centred_pad"
            pad_values = [0, 0, *pads.ints[:half], 0, 0, *pads.ints[half:]]
            graph.initializer.append(onnx.numpy_helper.from_array(np.array(pad_values, dtype=np.int64), f"{name}s"))
            set_init(f"{name}_value", np.array(-c))
            pad = onnx.helper.make_node("Pad", [clip.output[0], f"{name}s", f"{name}_value"], [f"{name}_out"],
                                        name=name, mode="constant")
            graph.node.insert(list(graph.node).index(reader), pad)
            reader.input[0] = pad.output[0]
            pads.ints[:] = [0] * len(pads.ints)
            padded.append(reader.name)
        tensors.append(clip.output[0])
    return out, ShiftReport(tensors, padded, centres)


def shifted_key(sha256: str, tensors: Sequence[str]) -> str:
    """The calibration cache key of the graph made from the FP32 graph with this hash by centring ``tensors``."""
    facts = f"{sha256}|centred-activations-v{SHIFT_VERSION}|{','.join(sorted(tensors))}"
    return hashlib.sha256(facts.encode()).hexdigest()


def int8_reference(model: Any, settings: Any, sha256: str | None = None, *,
                   skip: Sequence[str] = ()) -> tuple[Any, ShiftReport | None, str | None]:
    """The FP32 graph every INT8 step of ``settings``' format works on, what was centred (None: nothing), and its
    cache key.

    The TensorRT format (`Int8Settings.centres_activations`) works on the centred graph (but the tensors in
    ``skip``); any other on ``model`` itself. A graph with nothing to centre stays as it is (same key).
    """
    if not settings.centres_activations:
        return model, None, sha256
    centred, report = centre_bounded_activations(model, skip)
    if not report.tensors:
        return model, None, sha256
    return centred, report, shifted_key(sha256, report.tensors) if sha256 else None
