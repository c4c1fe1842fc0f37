"""The form of a QDQ graph that ONNX Runtime evaluates fastest in exact numerics, bit for bit the same values.

Exact numerics (`edgetl.runtime.backends.onnxruntime.session_options`) run every op as written: no fusion, so
each pair costs a full pass over its tensor. The centred TensorRT format (`edgetl.quantize.shift`) pads a
centred activation with an explicit ``Pad``, and the quantizer wraps it as ``DQ -> Pad -> Q`` with the same
scale on both sides: a float pass, a float pad and a re-quantization that gives back the codes it was given. Padding
the codes themselves (``Pad`` on the int8 tensor, its value quantized once) computes the same numbers with one
int8 pass instead, which QAT's frozen prefix and every exact-numerics score pay on each image (QAT's share after
PTQ on the demo model: 16.1 s -> 14.9 s with this and one pass saved, `benchmarks/qat.py`).

This is an evaluation form, not the artifact: the bundle keeps the graph the quantizer wrote, with the float
``Pad`` between a DQ and a Q, because a ``Pad`` on int8 codes has not been built with TensorRT here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.quantize.qdq_edit import GraphIndex

onnx = lazy_import("onnx", "train", purpose="reading QDQ graphs")
numpy_helper = lazy_import("onnx.numpy_helper", "train", purpose="reading QDQ graphs")


def integer_pads(model: Any) -> tuple[Any, int]:
    """A copy of ``model`` with every ``DQ -> Pad -> Q`` whose two pairs share scale and zero point replaced by a
    ``Pad`` of the codes (constant mode); returns it and how many were replaced."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    index = GraphIndex(out)
    producer, consumers, initializers, outputs = index.producer, index.consumers, index.initializers, index.outputs

    def constant(name: str) -> np.ndarray | None:
        if name in initializers:
            return numpy_helper.to_array(initializers[name])
        node = producer.get(name)
        if node is not None and node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            return numpy_helper.to_array(node.attribute[0].t)
        return None

    def params(node: Any) -> tuple[np.ndarray, np.ndarray] | None:
        scale = constant(node.input[1])
        zero = constant(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        if scale is None or scale.size != 1 or zero is None or zero.size != 1:
            return None
        return scale, zero

    def pad_value(name: str) -> np.float32 | None:
        if not name:
            return np.float32(0.0)
        value = constant(name)
        if value is None:  # the quantizer stores a pad constant as DQ(code)
            dq = producer.get(name)
            pair = params(dq) if dq is not None and dq.op_type == "DequantizeLinear" else None
            code = constant(dq.input[0]) if pair is not None else None
            if code is None:
                return None
            value = (code.astype(np.float32) - pair[1].astype(np.float32)) * pair[0]
        return np.float32(value.reshape(()))

    dropped: list[Any] = []
    replaced = 0
    for pad in [node for node in graph.node if node.op_type == "Pad"]:
        dq, readers = producer.get(pad.input[0]), consumers.get(pad.output[0], [])
        if dq is None or dq.op_type != "DequantizeLinear" or len(readers) != 1:
            continue
        q = readers[0]
        if q.op_type != "QuantizeLinear" or q.output[0] in outputs or pad.output[0] in outputs:
            continue
        if any(a.name == "mode" and a.s not in (b"", b"constant") for a in pad.attribute):
            continue
        before, after = params(dq), params(q)
        value = pad_value(pad.input[2] if len(pad.input) > 2 else "")
        if before is None or after is None or value is None:
            continue
        (scale, zero), (scale_after, zero_after) = before, after
        if scale != scale_after or zero != zero_after or zero.dtype != zero_after.dtype:
            continue
        info = np.iinfo(zero.dtype)
        code = np.clip(np.round(value / scale.astype(np.float32)) + zero.astype(np.float32), info.min, info.max)
        value_name = f"{pad.name or pad.output[0]}_code"
        graph.initializer.append(numpy_helper.from_array(np.asarray(code, dtype=zero.dtype).reshape(()), value_name))
        pad.input[0] = dq.input[0]
        while len(pad.input) < 3:
            pad.input.append("")
        pad.input[2] = value_name
        for reader in consumers.get(q.output[0], []):
            for k, name in enumerate(reader.input):
                if name == q.output[0]:
                    reader.input[k] = pad.output[0]
        dropped.append(q)
        if len(consumers.get(dq.output[0], [])) == 1:
            dropped.append(dq)
        replaced += 1
    for node in dropped:
        graph.node.remove(node)
    if replaced:  # a padded tensor's recorded type was float
        padded = {node.output[0] for node in graph.node if node.op_type == "Pad"}
        kept = [v for v in graph.value_info if v.name not in padded]
        del graph.value_info[:]
        graph.value_info.extend(kept)
    return out, replaced
