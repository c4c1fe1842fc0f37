"""The exact-numerics evaluation form (`edgetl.quantize.exact_form`): the same values, bit for bit, fewer passes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from test_shift import _batch, _net, _ptq, _run

from edgetl.quantize.exact_form import integer_pads
from edgetl.quantize.shift import centre_bounded_activations


def test_centred_graph_pads_its_codes_with_identical_outputs(tmp_path: Path) -> None:
    model, x = _net(), _batch()
    quantized = _ptq(centre_bounded_activations(model)[0], x, tmp_path, "centred")
    folded, replaced = integer_pads(quantized)
    onnx.checker.check_model(folded)
    assert replaced == 1
    pad = next(n for n in folded.graph.node if n.op_type == "Pad")
    producer = {o: n for n in folded.graph.node for o in n.output}
    assert producer[pad.input[0]].op_type == "QuantizeLinear"  # the codes, not their float values
    value = {i.name: numpy_helper.to_array(i) for i in folded.graph.initializer}[pad.input[2]]
    assert value.dtype == np.int8 and int(value) == -127  # -3 on the centred tensor's 3/127 step
    assert len(folded.graph.node) == len(quantized.graph.node) - 2
    for inputs in (x, x * 4.0):  # values inside the range and values the pairs clamp
        np.testing.assert_array_equal(_run(folded, inputs), _run(quantized, inputs))
    assert integer_pads(quantized)[0] is not quantized  # a copy: the caller's graph is untouched
    assert sum(n.op_type == "Pad" and n.input[0].endswith("DequantizeLinear_Output")
               for n in quantized.graph.node) == 1


def _pad_pair(scale_after: float, value: float) -> onnx.ModelProto:
    """x -> Q -> DQ -> Pad(value) -> Q(scale_after) -> DQ -> y."""
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(scale_after, np.float32), "s2"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(value, np.float32), "v")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q1"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xf"], name="dq1"),
             helper.make_node("Pad", ["xf", "pads", "v"], ["p"], name="pad"),
             helper.make_node("QuantizeLinear", ["p", "s2", "z"], ["pq"], name="q2"),
             helper.make_node("DequantizeLinear", ["pq", "s2", "z"], ["y"], name="dq2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 3, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_pad_value_is_rounded_and_clamped_like_the_pair_it_replaces() -> None:
    x = np.random.default_rng(0).normal(0, 3, (4, 2, 3, 3)).astype(np.float32)
    for value in (0.0, -0.123, 100.0):  # exact code, rounded, clamped to 127
        model = _pad_pair(0.05, value)
        folded, replaced = integer_pads(model)
        assert replaced == 1
        np.testing.assert_array_equal(_run(folded, x), _run(model, x))


def test_pairs_with_different_scales_are_left_alone() -> None:
    folded, replaced = integer_pads(_pad_pair(0.1, 0.0))
    assert replaced == 0 and [n.op_type for n in folded.graph.node].count("Pad") == 1
