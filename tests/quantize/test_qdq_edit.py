"""QDQ graph edits: units listed, restored exactly, graph outputs left in float; float layers stay float in the
runtime backend."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetl.quantize.int8 import Int8Settings, quantize_file
from edgetl.quantize.qdq_edit import (
    ACTIVATION,
    LAYER,
    Unit,
    epilogue_pairs,
    float_outputs,
    list_units,
    restore,
    tensorrt_placement,
)
from edgetl.quantize.statistics import measure
from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend


def _residual_net(path: Path) -> onnx.ModelProto:
    """conv -> ReLU6 -> 1x1 conv -> + skip -> pool -> gemm: the shape of an inverted-residual classifier."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Add", ["c2", "a1"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3)), init("b1", (8,)), init("w2", (8, 8, 1, 1)), init("b2", (8,)),
             init("w3", (5, 8)), init("b3", (5,)), numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(6.0), "hi")]
    inputs = [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 8, 8])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 5])]
    graph = helper.make_graph(nodes, "net", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # exact fake-quant arithmetic
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


@pytest.fixture(params=["int8", "uint8"])
def quantized(request, tmp_path: Path):
    src = tmp_path / "net.onnx"
    reference = _residual_net(src)
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    settings = Int8Settings(method="minmax", activation_type=request.param)
    stats = measure(reference, [x[:8], x[8:]], input_name="input")
    quantize_file(src, tmp_path / "q.onnx", settings, ranges=stats.ranges("minmax", 99.99))
    return reference, onnx.load(str(tmp_path / "q.onnx")), x, request.param


def test_units_cover_layers_and_exact_activations(quantized) -> None:
    reference, model, _, activations = quantized
    units = list_units(model, reference)
    assert {u.name for u in units if u.kind == LAYER} == {"conv1", "conv2", "fc"}
    tensors = {u.name for u in units if u.kind == ACTIVATION}
    assert "input" in tensors and "s" in tensors
    if activations == "uint8":  # the ReLU6 was folded into the range of its Q: that pair must stay
        assert "c1" not in tensors
    assert list_units(model, reference, layers=["conv2"]) == [Unit(LAYER, "conv2")]


def test_restoring_every_unit_gives_fp32_back(quantized) -> None:
    reference, model, x, activations = quantized
    want = _run(reference, x)
    assert np.abs(_run(model, x) - want).max() > 1e-3  # quantization did change the outputs
    restored = restore(model, reference, list_units(model, reference))
    onnx.checker.check_model(restored)
    got = _run(restored, x)
    if activations == "int8":  # everything restorable: FP32 exactly
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    else:  # only the folded ReLU6 range is left
        assert np.abs(got - want).max() < np.abs(_run(model, x) - want).max()
    ops = [n.op_type for n in restored.graph.node]
    assert ops.count("QuantizeLinear") <= (0 if activations == "int8" else 1)


def test_restored_layer_runs_in_float(quantized) -> None:
    reference, model, _, _ = quantized
    edited = restore(model, reference, [Unit(LAYER, "conv2")])
    conv2 = next(n for n in edited.graph.node if n.name == "conv2")
    inits = {i.name: i for i in edited.graph.initializer}
    assert conv2.input[1] in inits and numpy_helper.to_array(inits[conv2.input[1]]).dtype == np.float32
    np.testing.assert_array_equal(numpy_helper.to_array(inits[conv2.input[1]]),
                                  numpy_helper.to_array(next(i for i in reference.graph.initializer if i.name == "w2")))


def test_graph_outputs_stay_float(quantized) -> None:
    reference, model, _, _ = quantized
    edited = float_outputs(model, reference)
    producers = {o: n for n in edited.graph.node for o in n.output}
    assert producers["logits"].op_type != "DequantizeLinear"
    assert [o.name for o in edited.graph.output] == ["logits"]
    onnx.checker.check_model(edited)


def test_backend_keeps_float_layers_float(tmp_path: Path) -> None:
    """Q/DQ -> Conv with float weights -> Q/DQ: ONNX Runtime's optimizer would quantize the weights to fuse an
    INT8 kernel. The backend must run the conv in float, like the unoptimized graph."""
    w = np.random.default_rng(2).normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)
    scale, zero = numpy_helper.from_array(np.float32(0.02), "s"), numpy_helper.from_array(np.int8(0), "z")
    nodes = [helper.make_node("QuantizeLinear", ["input", "s", "z"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
             helper.make_node("Conv", ["xd", "w"], ["y"], name="conv"),
             helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
             helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 6, 6])],
                              [numpy_helper.from_array(w, "w"), scale, zero])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.random.default_rng(3).uniform(-1, 1, (1, 3, 8, 8)).astype(np.float32)
    with OnnxRuntimeBackend(path, device="cpu") as backend:
        got = backend.infer(x)["out"]
    np.testing.assert_allclose(got, _run(model, x), atol=1e-6)


def _quantized_input(model: onnx.ModelProto, tensor: str) -> bool:
    """Whether some reader of ``tensor`` reads it through a Q/DQ pair."""
    producers = {o: n for n in model.graph.node for o in n.output}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] == tensor:
            return True
    return producers.get(tensor) is not None and producers[tensor].op_type == "DequantizeLinear"


def test_tensorrt_placement_rounds_once_per_layer(tmp_path: Path) -> None:
    """The pairs between a conv and its ReLU6 / residual Add go (TensorRT fuses them into the conv and rounds once);
    every conv input, the residual branch and the Add's output keep theirs."""
    src = tmp_path / "net.onnx"
    reference = _residual_net(src)
    x = np.random.default_rng(1).normal(0, 1, (16, 3, 8, 8)).astype(np.float32)
    stats = measure(reference, [x[:8], x[8:]], input_name="input")
    quantize_file(src, tmp_path / "q.onnx", Int8Settings(activation_type="int8"), ranges=stats.ranges("minmax", 99.99))
    model = float_outputs(onnx.load(str(tmp_path / "q.onnx")), reference)
    assert {u.name for u in epilogue_pairs(model, reference)} == {"c1", "c2"}
    placed = tensorrt_placement(model, reference)
    onnx.checker.check_model(placed)
    assert not _quantized_input(placed, "c1") and not _quantized_input(placed, "c2")
    for tensor in ("input", "a1", "s", "f"):  # conv/gemm inputs, the residual branch, the Add's output
        assert any(n.op_type == "QuantizeLinear" and n.input[0] == tensor for n in placed.graph.node), tensor
    assert epilogue_pairs(placed, reference) == []
    want = _run(reference, x)
    assert np.abs(_run(placed, x) - want).max() < 2 * np.abs(_run(model, x) - want).max()


def test_tensorrt_placement_keeps_silu_whole(tmp_path: Path) -> None:
    """Conv -> Sigmoid -> Mul (SiLU) is one epilogue: the pairs on the conv's output and on the Sigmoid's go, the
    pair on the product (the next conv's input) stays."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["g"], name="sigmoid"),
        helper.make_node("Mul", ["c1", "g"], ["silu"], name="mul"),
        helper.make_node("Conv", ["silu", "w2", "b2"], ["out"], name="conv2"),
    ]
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, shape).astype(np.float32), name)
             for name, shape in (("w1", (8, 3, 3, 3)), ("b1", (8,)), ("w2", (4, 8, 1, 1)), ("b2", (4,)))]
    graph = helper.make_graph(nodes, "silu",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [None, 4, 8, 8])], inits)
    reference = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    reference.ir_version = 8
    src = tmp_path / "silu.onnx"
    onnx.save(reference, str(src))
    x = rng.normal(0, 1, (8, 3, 8, 8)).astype(np.float32)
    stats = measure(reference, [x], input_name="input")
    quantize_file(src, tmp_path / "q.onnx", Int8Settings(activation_type="int8"), ranges=stats.ranges("minmax", 99.99))
    placed = tensorrt_placement(onnx.load(str(tmp_path / "q.onnx")), reference)
    assert not _quantized_input(placed, "c1") and not _quantized_input(placed, "g")
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "silu" for n in placed.graph.node)
