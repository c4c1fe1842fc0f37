"""Sequential bias correction (`edgetl.quantize.sequential`) on a small QDQ graph: the pieces compute what the
whole graph computes, and after the correction every layer's mean output in the quantized graph is FP32's."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx_nets import saved_net, small_model

from edgetl.quantize import sequential
from edgetl.quantize.int8 import Int8Settings, quantize_file
from edgetl.quantize.qdq_edit import float_outputs
from edgetl.quantize.sequential import correct_biases, layer_means, output_means
from edgetl.quantize.statistics import measure
from edgetl.runtime.backends.onnxruntime import ort, session_options


def _outputs(model: onnx.ModelProto, names: list[str], x: np.ndarray) -> list[np.ndarray]:
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    del probe.graph.output[:]
    probe.graph.output.extend(helper.make_empty_tensor_value_info(n) for n in names)
    session = ort.InferenceSession(probe.SerializeToString(), session_options("exact"),
                                   providers=["CPUExecutionProvider"])
    return session.run(names, {"input": x})


def _residual_net(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv -> ReLU6 -> depthwise -> ReLU6 -> 1x1 conv, added to the first conv's output (a residual), a Reshape
    whose shape comes from a Shape op three layers before it, pool, Gemm: every kind of tensor the pieces pass
    between them."""
    def init(name: str, shape: tuple[int, ...], scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        # A detector's decode: a shape read several layers later (so it crosses pieces), its leading dims sliced
        # with initializer bounds, and a constant tail.
        helper.make_node("Shape", ["c1"], ["shape"], name="shape"),
        helper.make_node("Slice", ["shape", "zero", "two"], ["lead"], name="slice"),
        helper.make_node("Concat", ["lead", "tail"], ["shape2"], name="concat", axis=0),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6a"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"], name="relu6b"),
        helper.make_node("Conv", ["a2", "w3", "b3"], ["c3"], name="project"),
        helper.make_node("Add", ["c3", "c1"], ["s"], name="residual"),
        helper.make_node("Reshape", ["s", "shape2"], ["s2"], name="reshape"),
        helper.make_node("GlobalAveragePool", ["s2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w4", "b4"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3)), init("b1", (8,)), init("w2", (8, 1, 3, 3)), init("b2", (8,)),
             init("w3", (8, 8, 1, 1)), init("b3", (8,)), init("w4", (5, 8)), init("b4", (5,)),
             numpy_helper.from_array(np.float32(0.0), "lo"), numpy_helper.from_array(np.float32(6.0), "hi"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([2], np.int64), "two"),
             numpy_helper.from_array(np.array([10, 10], np.int64), "tail")]
    return small_model(nodes, inits, side=10, classes=5)


LAYERS = ["conv1", "dw", "project", "fc"]


@pytest.fixture
def quantized(tmp_path: Path):
    model, path, x = saved_net(tmp_path, _residual_net, side=10)
    stats = measure(model, [x[:32], x[32:]], input_name="input")
    out = tmp_path / "q.onnx"
    quantize_file(path, out, Int8Settings(), ranges=stats.ranges("minmax", 99.99))
    return model, float_outputs(onnx.load(str(out)), model), x


def _nodes(model: onnx.ModelProto) -> list:
    by_name = {n.name: n for n in model.graph.node}
    return [by_name[name] for name in LAYERS]


def test_pieces_compute_what_the_whole_graph_computes(quantized) -> None:
    _, q, x = quantized
    means = layer_means(q, _nodes(q), x, chunk=16)
    whole = _outputs(q, [n.output[0] for n in _nodes(q)], x)
    for name, output in zip(LAYERS, whole, strict=True):
        axes = tuple(a for a in range(output.ndim) if a != 1)
        np.testing.assert_allclose(means[name], output.mean(axis=axes), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("bytes_in_flight,images", [(1 << 30, 64), (1, 64), (1 << 30, 8)])
def test_one_run_of_the_whole_graph_gives_the_pieces_means(quantized, monkeypatch, bytes_in_flight: int,
                                                           images: int) -> None:
    """The FP32 reference's means come from one run of the whole graph: the pieces' numbers, to float64 rounding,
    for the float graph and the quantized one alike; with room for one chunk at a time, and with one chunk only."""
    model, q, x = quantized
    monkeypatch.setattr(sequential, "usable_cpus", lambda: 4)
    monkeypatch.setattr(sequential, "REFERENCE_BYTES_IN_FLIGHT", bytes_in_flight)
    for graph in (model, q):
        pieces = layer_means(graph, _nodes(graph), x[:images], chunk=8)
        whole = output_means(graph, _nodes(graph), x[:images], chunk=8)
        for name in LAYERS:
            np.testing.assert_allclose(whole[name], pieces[name], rtol=1e-12, atol=1e-12)


def test_chunks_on_several_cpus_compute_what_one_cpu_computes(quantized, monkeypatch) -> None:
    """Chunks run in parallel, one per CPU, and are kept in order: the same means bit for bit, and the same
    corrected biases."""
    _, q, x = quantized
    results = {}
    for cpus in (1, 3):
        monkeypatch.setattr(sequential, "usable_cpus", lambda cpus=cpus: cpus)
        results[cpus] = layer_means(q, _nodes(q), x, chunk=8)
    for name in LAYERS:
        assert np.array_equal(results[1][name], results[3][name])


def test_every_layers_mean_output_matches_fp32_after_correction(quantized) -> None:
    model, q, x = quantized
    # Coarse activations make the mean errors large enough to see: 16 codes on the depthwise conv's input.
    inits = {i.name: i for i in q.graph.initializer}
    dq = next(n for n in q.graph.node if n.op_type == "DequantizeLinear" and n.output[0] in
              next(m for m in q.graph.node if m.name == "dw").input)
    scale = numpy_helper.to_array(inits[dq.input[1]]) * 16
    inits[dq.input[1]].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), dq.input[1]))
    reference = _outputs(model, [n.output[0] for n in _nodes(model)], x)
    before = _outputs(q, [n.output[0] for n in _nodes(q)], x)

    def mean_errors(outputs: list[np.ndarray]) -> list[float]:
        return [float(np.abs((o - r).mean(axis=tuple(a for a in range(o.ndim) if a != 1))).max())
                for o, r in zip(outputs, reference, strict=True)]

    result = correct_biases(q, model, x, chunk=16)
    after = mean_errors(_outputs(q, [n.output[0] for n in _nodes(q)], x))
    assert result.layers == 4 and result.images == 64 and not result.skipped
    assert max(mean_errors(before)[1:]) > 0.05  # the coarse input shifted the layers after it
    # What is left is the rounding of each int32 bias to its scale: at most half a step.
    producer = {o: n for n in q.graph.node for o in n.output}
    inits = {i.name: i for i in q.graph.initializer}
    steps = [float(numpy_helper.to_array(inits[producer[n.input[2]].input[1]]).max()) for n in _nodes(q)]
    for error, step in zip(after, steps, strict=True):
        assert error <= 0.5 * step + 1e-5, (after, steps)
    onnx.checker.check_model(q)


def test_a_batch_smaller_than_one_chunk_is_refused(quantized) -> None:
    model, q, x = quantized
    with pytest.raises(ValueError, match="16 at a time"):
        correct_biases(q, model, x[:8], chunk=16)
