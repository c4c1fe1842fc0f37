"""Edits of a QDQ graph: put chosen weights and activations back in floating point.

The accuracy-budget search needs many variants of one quantized model, each with a different set of
quantization points removed. Editing the fully quantized graph is exact (every remaining point keeps the
scale calibration gave it) and takes milliseconds; re-running the quantizer per variant is neither.

Two kinds of quantization point ("units"):

- a **layer** (Conv/Gemm/MatMul): its weights (and bias) go back to the FP32 initializers and, where that is
  exact, it reads its input activation before quantization, so the layer runs wholly in float;
- an **activation**: the Q/DQ pair on one tensor is removed for every consumer.

An activation is only offered when removing its pair is exact: its producer in the quantized graph is the
same op as in the FP32 graph. ONNX Runtime folds a ReLU/Clip into the range of the Q that follows it
(asymmetric activations); the pair then does the clamping and must stay.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from edgetl.lazy import lazy_import
from edgetl.quantize.int8 import LAYER_OPS

onnx = lazy_import("onnx", "train", purpose="editing QDQ graphs")

LAYER = "layer"
ACTIVATION = "activation"


@dataclass(frozen=True)
class Unit:
    """One quantization point: ``kind`` is ``layer`` (a node name) or ``activation`` (a tensor name)."""

    kind: str
    name: str

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "name": self.name}


def add_outputs(model: Any, names: Iterable[str]) -> None:
    """Make ``names`` outputs of ``model`` (in place; those it already outputs are left as they are), so that one
    ONNX Runtime run returns the intermediate tensors calibration, QAT's targets and the bias correction read."""
    present = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_empty_tensor_value_info(name)
                              for name in dict.fromkeys(names) if name not in present)


class GraphIndex:
    """Producer/consumer indexes of a graph, built once (rebuild after an edit that adds or removes nodes); every
    graph edit in `edgetl.quantize` reads a graph through it."""

    def __init__(self, model: Any) -> None:
        graph = model.graph
        self.initializers = {init.name: init for init in graph.initializer}
        self.inputs = {i.name for i in graph.input}
        self.outputs = {o.name for o in graph.output}
        self.producer = {out: node for node in graph.node for out in node.output}
        self.consumers: dict[str, list[Any]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.nodes = {node.name: node for node in graph.node if node.name}

    def quantizer_of(self, tensor: str) -> Any | None:
        """The QuantizeLinear of an activation feeding ``tensor`` through a DQ, if any."""
        dq = self.producer.get(tensor)
        if dq is None or dq.op_type != "DequantizeLinear":
            return None
        q = self.producer.get(dq.input[0])
        return q if q is not None and q.op_type == "QuantizeLinear" else None

    def weight_dq(self, tensor: str) -> Any | None:
        """The DequantizeLinear producing ``tensor`` from a quantized initializer, if any."""
        dq = self.producer.get(tensor)
        if dq is not None and dq.op_type == "DequantizeLinear" and dq.input[0] in self.initializers:
            return dq
        return None


def _exact(tensor: str, quantized: GraphIndex, reference: GraphIndex) -> bool:
    """Removing the pair on ``tensor`` gives the FP32 value: same producer op in both graphs (or a graph input).

    ONNX Runtime renames a quantized graph output's float tensor (``<output>_QuantizeLinear_Input``); it is
    compared with the graph output of the FP32 model.
    """
    name = tensor
    if tensor not in reference.producer and tensor not in reference.inputs:
        outputs = [dq.output[0] for q in quantized.consumers.get(tensor, []) if q.op_type == "QuantizeLinear"
                   for dq in quantized.consumers.get(q.output[0], []) if dq.output[0] in quantized.outputs]
        name = outputs[0] if outputs else tensor
    mine, theirs = quantized.producer.get(tensor), reference.producer.get(name)
    if mine is None or theirs is None:
        return mine is None and theirs is None and name in reference.inputs
    return mine.op_type == theirs.op_type


def list_units(quantized: Any, reference: Any, *, layers: list[str] | None = None) -> list[Unit]:
    """The quantization points of ``quantized`` that can be put back in float exactly.

    Args:
        quantized: the fully quantized QDQ model.
        reference: the FP32 model it was made from.
        layers: only these layers, and no activations (a caller-restricted search).
    """
    q, ref = GraphIndex(quantized), GraphIndex(reference)
    units = []
    for node in quantized.graph.node:
        if node.op_type in LAYER_OPS and len(node.input) > 1 and q.weight_dq(node.input[1]) is not None \
                and node.name in ref.nodes and (layers is None or node.name in layers):
            units.append(Unit(LAYER, node.name))
    if layers is not None:
        return units
    for node in quantized.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] not in q.initializers and _exact(node.input[0], q, ref):
            units.append(Unit(ACTIVATION, node.input[0]))
    return units


def restore(quantized: Any, reference: Any, units: list[Unit] | set[Unit]) -> Any:
    """A copy of ``quantized`` with ``units`` back in floating point (see the module docstring)."""
    model = onnx.ModelProto()
    model.CopyFrom(quantized)
    q, ref = GraphIndex(model), GraphIndex(reference)
    needed: dict[str, Any] = {}
    for unit in units:
        if unit.kind == LAYER:
            _float_layer(q.nodes[unit.name], q, ref, needed)
        else:
            _float_activation(unit.name, model, q)
    have = {init.name for init in model.graph.initializer}
    model.graph.initializer.extend(init for name, init in needed.items() if name not in have)
    _drop_dangling(model)
    return model


def _float_layer(node: Any, q: GraphIndex, ref: GraphIndex, needed: dict[str, Any]) -> None:
    original = ref.nodes[node.name]
    for k in range(1, min(len(node.input), len(original.input))):
        name = original.input[k]
        if q.weight_dq(node.input[k]) is None or name not in ref.initializers:
            continue
        if name in q.producer:  # ONNX Runtime gives some DQ outputs the float initializer's name
            name = f"{name}_float"
        if name not in needed:
            needed[name] = _renamed(ref.initializers[original.input[k]], name)
        node.input[k] = name
    quantizer = q.quantizer_of(node.input[0]) if node.input else None
    if quantizer is not None and _exact(quantizer.input[0], q, ref):
        node.input[0] = quantizer.input[0]


def _renamed(init: Any, name: str) -> Any:
    if init.name == name:
        return init
    copy = onnx.TensorProto()
    copy.CopyFrom(init)
    copy.name = name
    return copy


def _float_activation(tensor: str, model: Any, q: GraphIndex) -> None:
    for quantizer in [n for n in q.consumers.get(tensor, []) if n.op_type == "QuantizeLinear"]:
        for dq in [n for n in q.consumers.get(quantizer.output[0], []) if n.op_type == "DequantizeLinear"]:
            for consumer in q.consumers.get(dq.output[0], []):
                for k, name in enumerate(consumer.input):
                    if name == dq.output[0]:
                        consumer.input[k] = tensor
            if dq.output[0] in q.outputs:  # the graph's output keeps its name; the DQ is left dangling
                output = dq.output[0]
                dq.output[0] = f"{output}_quantized_unused"
                model.graph.node.append(onnx.helper.make_node("Identity", [tensor], [output], name=f"{output}_float"))


def _drop_dangling(model: Any) -> None:
    """Remove Q/DQ nodes nothing reads any more, then initializers nothing uses."""
    while True:
        g = GraphIndex(model)
        keep = [n for n in model.graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear")
                or any(g.consumers.get(out) or out in g.outputs for out in n.output)]
        if len(keep) == len(model.graph.node):
            break
        del model.graph.node[:]
        model.graph.node.extend(keep)
    used = {name for node in model.graph.node for name in node.input}
    keep_init = [init for init in model.graph.initializer if init.name in used or init.name in g.outputs]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep_init)


def float_outputs(quantized: Any, reference: Any) -> Any:
    """Remove the Q/DQ pairs on graph outputs: the consumer wants float, and quantized logits turn near-ties
    into ties (8-bit steps of a [-6, 6] logit range are 0.05 apart)."""
    q, ref = GraphIndex(quantized), GraphIndex(reference)
    outputs = []
    for name in q.outputs:
        quantizer = q.quantizer_of(name)
        if quantizer is not None and _exact(quantizer.input[0], q, ref):
            outputs.append(Unit(ACTIVATION, quantizer.input[0]))
    return restore(quantized, reference, outputs) if outputs else quantized


#: Pointwise ops TensorRT runs inside a weighted layer's kernel (its epilogue), before the output is requantized:
#: activations, the residual Add, the Mul of SiLU.
EPILOGUE_OPS = frozenset({"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Add", "Mul"})


def epilogue_pairs(quantized: Any, reference: Any) -> list[Unit]:
    """The Q/DQ pairs inside a layer's epilogue: on a tensor computed by a weighted layer (or by an epilogue op
    that reads one) and read only by epilogue ops.

    ONNX Runtime's quantizer puts a pair on every op's output. TensorRT fuses Conv -> ReLU6 and Conv -> residual
    Add into one kernel and rounds once, at the end; a pair in between would round the pre-activation too, on
    the scale of its much wider range (a Conv output spanning [-20, 20] before a ReLU6 rounds in steps of 0.16
    instead of 6/127 = 0.047). These pairs are what TensorRT's placement guidance says not to insert.
    """
    q, ref = GraphIndex(quantized), GraphIndex(reference)

    def in_epilogue(tensor: str, seen: set[str]) -> bool:
        node = q.producer.get(tensor)
        if node is None or tensor in seen:
            return False
        quantizer = q.quantizer_of(tensor)
        if quantizer is not None:  # through a pair that is itself in the epilogue (Conv -> Sigmoid -> Mul)
            return in_epilogue(quantizer.input[0], seen | {tensor})
        if node.op_type in LAYER_OPS:
            return len(node.input) > 1 and q.weight_dq(node.input[1]) is not None
        if node.op_type not in EPILOGUE_OPS:
            return False
        return any(in_epilogue(name, seen | {tensor}) for name in node.input if name not in q.initializers)

    units = []
    for node in quantized.graph.node:
        tensor = node.input[0] if node.op_type == "QuantizeLinear" else None
        if tensor is None or tensor in q.initializers or tensor in q.outputs:
            continue
        readers = [r for dq in q.consumers.get(node.output[0], []) for r in q.consumers.get(dq.output[0], [])]
        if any(dq.op_type != "DequantizeLinear" or dq.output[0] in q.outputs
               for dq in q.consumers.get(node.output[0], [])):
            continue
        if readers and all(r.op_type in EPILOGUE_OPS for r in readers) and in_epilogue(tensor, set()) \
                and _exact(tensor, q, ref):
            units.append(Unit(ACTIVATION, tensor))
    return units


def tensorrt_placement(quantized: Any, reference: Any) -> Any:
    """``quantized`` without the pairs inside layer epilogues (`epilogue_pairs`): the placement TensorRT fuses."""
    units = epilogue_pairs(quantized, reference)
    return restore(quantized, reference, units) if units else quantized
