"""FP16 conversion with FP32 inputs/outputs and numerically fragile ops kept in FP32.

Uses ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``, installed with onnxruntime):
weights and activations become float16; the graph still takes and returns float32 (``keep_io_types``),
so the runtime and preprocessing are unchanged. Ops whose range or accumulation overflow in float16
(softmax, normalisations, exp/log/pow, reductions) stay in float32 behind Cast nodes.
"""

from __future__ import annotations

from typing import Any

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

#: Kept in FP32 in addition to the converter's own block list.
KEEP_FP32_OPS = ("Softmax", "LogSoftmax", "LayerNormalization", "InstanceNormalization", "GroupNormalization",
                 "Exp", "Log", "Pow", "ReduceSum", "ReduceMean", "ReduceL2", "Erf")

float16 = lazy_import("onnxruntime.transformers.float16", "train", purpose="FP16 conversion")


def convert_fp16(model: Any, *, keep_ops: tuple[str, ...] = KEEP_FP32_OPS) -> tuple[Any, dict[str, Any]]:
    """Convert an FP32 ONNX model to FP16; returns ``(model, info)``.

    Args:
        model: an ``onnx.ModelProto`` (not modified).
        keep_ops: op types kept in FP32.
    """
    import copy

    block = sorted(set(float16.DEFAULT_OP_BLOCK_LIST) | set(keep_ops))
    try:
        converted = float16.convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, op_block_list=block,
                                                      disable_shape_infer=False)
    except Exception as exc:  # the converter raises plain exceptions on odd graphs
        raise BadInputError(f"FP16 conversion failed: {type(exc).__name__}: {exc}") from exc
    _topological_sort(converted.graph)
    present = {n.op_type for n in model.graph.node}
    kept = sorted(op for op in block if op in present)
    casts = sum(1 for n in converted.graph.node if n.op_type == "Cast")
    return converted, {"keep_io_types": True, "fp32_ops": kept, "casts": casts,
                       "converter": "onnxruntime.transformers.float16"}


def _topological_sort(graph: Any) -> None:
    """Reorder nodes so every input is produced before use (the converter appends its I/O casts)."""
    available = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    pending = list(graph.node)
    ordered = []
    while pending:
        progressed = False
        rest = []
        for node in pending:
            if all(name in available for name in node.input):
                ordered.append(node)
                available.update(node.output)
                progressed = True
            else:
                rest.append(node)
        if not progressed:
            raise BadInputError(f"FP16 graph has a cycle or dangling inputs near node {rest[0].name!r}")
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)
