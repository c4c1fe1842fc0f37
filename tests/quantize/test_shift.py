"""Centred ReLU6 outputs (`edgetl.quantize.shift`): exact in FP32, twice the int8 resolution, trainable by QAT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgetl.quantize.int8 import Int8Settings, quantize_file
from edgetl.quantize.qdq_edit import float_outputs, tensorrt_placement
from edgetl.quantize.shift import centre_bounded_activations, int8_reference
from edgetl.quantize.statistics import measure


def _net() -> onnx.ModelProto:
    """stem conv (stride 2, asymmetric pads) -> ReLU6 -> depthwise 3x3 -> ReLU6 -> 1x1 conv -> ReLU6 -> pool -> fc,
    and a ReLU6 read by an Add (not centred: the Add would see the shift)."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...], scale: float) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="stem", strides=[2, 2], pads=[0, 0, 1, 1]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["r1"], name="relu6_1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["r2"], name="relu6_2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="pw"),
        helper.make_node("Clip", ["c3", "lo", "hi"], ["r3"], name="relu6_3"),
        helper.make_node("Add", ["r3", "r3"], ["s"], name="add"),
        helper.make_node("GlobalAveragePool", ["s"], ["g"], name="pool"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3), 1.5), init("b1", (8,), 0.5), init("w2", (8, 1, 3, 3), 1.0),
             init("b2", (8,), 0.5), init("w3", (6, 8, 1, 1), 0.5), init("b3", (6,), 0.5), init("w4", (5, 6), 0.5),
             init("b4", (5,), 0.1), numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 9, 9])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"]).run(
        None, {model.graph.input[0].name: x})[0]


def _batch() -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (32, 3, 9, 9)).astype(np.float32)


def test_centring_is_exact_in_fp32() -> None:
    model, x = _net(), _batch()
    centred, report = centre_bounded_activations(model)
    onnx.checker.check_model(centred)
    assert report.tensors == ["r1", "r2"] and report.padded == ["dw"]  # r3 feeds an Add: left alone
    np.testing.assert_allclose(_run(centred, x), _run(model, x), rtol=1e-5, atol=1e-4)
    inits = {i.name: numpy_helper.to_array(i) for i in centred.graph.initializer}
    clip = next(n for n in centred.graph.node if n.output[0] == "r1")
    assert float(inits[clip.input[1]]) == -3.0 and float(inits[clip.input[2]]) == 3.0
    pad = next(n for n in centred.graph.node if n.op_type == "Pad")
    assert float(inits[pad.input[2]]) == -3.0  # the original zero padding, shifted
    assert centre_bounded_activations(model, skip=["r1"])[1].tensors == ["r2"]
    assert centre_bounded_activations(model, only=["r1"])[1].tensors == ["r1"]
    # Only the symmetric format centres; the CPU format's uint8 already spends its codes on [0, 6].
    assert int8_reference(model, Int8Settings(activation_type="uint8"), "abc")[1:] == (None, "abc")
    assert int8_reference(model, Int8Settings(), "abc")[2] != "abc"


def _ptq(model: onnx.ModelProto, x: np.ndarray, tmp_path: Path, name: str) -> onnx.ModelProto:
    src, dst = tmp_path / f"{name}.onnx", tmp_path / f"{name}-int8.onnx"
    onnx.save(model, str(src))
    stats = measure(model, [x], input_name="input")
    quantize_file(src, dst, Int8Settings(activation_type="int8"), ranges=stats.ranges("minmax", 99.99))
    return tensorrt_placement(float_outputs(onnx.load(str(dst)), model), model)


def _scale_of(model: onnx.ModelProto, tensor: str) -> float:
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return float(next(inits[n.input[1]] for n in model.graph.node if n.op_type == "QuantizeLinear"
                      and n.input[0] == tensor))


def test_centred_tensor_gets_half_the_step(tmp_path: Path) -> None:
    model, x = _net(), _batch()
    centred, _ = centre_bounded_activations(model)
    plain_q, centred_q = _ptq(model, x, tmp_path, "plain"), _ptq(centred, x, tmp_path, "centred")
    assert abs(_scale_of(plain_q, "r1") - 6 / 127) < 1e-6  # the stem saturates its ReLU6
    assert abs(_scale_of(centred_q, "r1") - 3 / 127) < 1e-6
    # The explicit pad's value, -3, is a code of that scale: padding adds no rounding.
    assert float(np.round(-3.0 / _scale_of(centred_q, "r1"))) == -127.0


def test_qat_module_runs_the_centred_graph(tmp_path: Path) -> None:
    """The fake-quant module of a centred PTQ graph (Pad included) reproduces its exact numerics."""
    import torch

    from edgetl.quantize.qat_graph import QdqModule

    model, x = _net(), _batch()
    centred, _ = centre_bounded_activations(model)
    quantized = _ptq(centred, x, tmp_path, "centred")
    module = QdqModule.create(quantized, centred)
    with torch.no_grad():
        fake = module(torch.from_numpy(x))["logits"].numpy()
    assert np.abs(fake - _run(quantized, x)).max() <= 1e-4


def test_without_bias_correction_centring_adds_no_error(tmp_path: Path) -> None:
    """Rounded taps would turn the centre into a bias error, c x sum(W - W_q); the neutral means make the reading
    conv's bias b + c x sum(W_q), so it computes W_q * z + b, as without centring."""
    from edgetl.quantize.weights import refine_weights

    model, x = _net(), _batch()
    centred, report = centre_bounded_activations(model)
    quantized = _ptq(centred, x, tmp_path, "centred")
    stats = measure(centred, [x], input_name="input")
    refine_weights(quantized, centred, mse=False, input_means=report.neutral_means(stats.input_means))
    inits = {i.name: numpy_helper.to_array(i) for i in quantized.graph.initializer}
    producers = {o: n for n in quantized.graph.node for o in n.output}
    dw = next(n for n in quantized.graph.node if n.name == "dw")
    w_dq, b_dq = producers[dw.input[1]], producers[dw.input[2]]
    taps = inits[w_dq.input[0]].astype(np.float64) * inits[w_dq.input[1]].reshape(-1, 1, 1, 1)
    bias = inits[b_dq.input[0]].astype(np.float64) * inits[b_dq.input[1]]
    original = numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "b2"))
    # dw also produces a centred tensor (r2): its bias lost 3 for that.
    np.testing.assert_allclose(bias, original - 3.0 + 3.0 * taps.sum(axis=(1, 2, 3)), atol=inits[b_dq.input[1]].max())
