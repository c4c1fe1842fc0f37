"""The PTQ steps of the INT8 path: streamed statistics, entropy ranges, bias correction, MSE scales, 7-bit
layers, and the numerics a figure is computed in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_nets import saved_net, small_model

from edgetl.quantize import statistics
from edgetl.quantize.int8 import Int8Settings, quantize_file
from edgetl.quantize.qdq_edit import ACTIVATION, float_outputs, list_units, restore
from edgetl.quantize.statistics import BINS, CalibrationStatistics, TensorStats, entropy_threshold, measure
from edgetl.quantize.weights import mse_scales, output_mean_shift, quantized_layers, refine_weights
from edgetl.runtime import cpu
from edgetl.runtime.backends.onnxruntime import session_options


def _run(model: onnx.ModelProto, x: np.ndarray, exact: bool = True) -> np.ndarray:
    opts = ort.SessionOptions()
    if exact:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {"input": x})[0]


def _conv_net(rng: np.random.Generator) -> onnx.ModelProto:
    """Conv (stride 2, padded) -> ReLU6 -> depthwise conv -> ReLU6 -> pool -> Gemm, with a positive input
    mean so that weight rounding shifts the outputs' means."""
    def init(name: str, shape: tuple[int, ...], scale: float = 0.5) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Clip", ["c1", "lo", "hi"], ["a1"], name="relu6a"),
        helper.make_node("Conv", ["a1", "w2", "b2"], ["c2"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["c2", "lo", "hi"], ["a2"], name="relu6b"),
        helper.make_node("GlobalAveragePool", ["a2"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w3", "b3"], ["logits"], name="fc", transB=1),
    ]
    inits = [init("w1", (8, 3, 3, 3)), init("b1", (8,)), init("w2", (8, 1, 3, 3)), init("b2", (8,)),
             init("w3", (5, 8)), init("b3", (5,)), numpy_helper.from_array(np.float32(0.0), "lo"),
             numpy_helper.from_array(np.float32(6.0), "hi")]
    return small_model(nodes, inits, side=12, classes=5)


@pytest.fixture
def net(tmp_path: Path):
    return saved_net(tmp_path, _conv_net, side=12)


def test_streamed_statistics_equal_one_pass() -> None:
    rng = np.random.default_rng(1)
    small, large = rng.normal(0, 1, 10_000).astype(np.float32), rng.normal(0, 8, 10_000).astype(np.float32)
    streamed, once = TensorStats(), TensorStats()
    streamed.update(small)
    streamed.update(large)  # the range grows: bins merge in pairs, nothing counted is lost
    once.update(np.concatenate([small, large]))
    assert streamed.hist.sum() == once.hist.sum() == 20_000
    assert (streamed.lo, streamed.hi) == (once.lo, once.hi) and streamed.edge >= np.abs(large).max()


def test_histogram_counts_every_magnitude_in_its_bin() -> None:
    """The streamed |x| histogram against numpy's, with exact zeros, a value on the top edge and float16 input."""
    rng = np.random.default_rng(4)
    values = np.concatenate([np.zeros(500), np.clip(rng.standard_t(3, 20_000), -7, 7), [-7.5, 7.5]]).astype(np.float32)
    stats = TensorStats()
    stats.update(values.reshape(2, -1))
    assert stats.edge == 7.5 and stats.zeros == 500
    # Bin i holds |x| * (BINS / edge) in [i, i + 1) computed in float32, the top edge in the last bin ...
    in_float32 = np.minimum((np.abs(values) * np.float32(BINS / 7.5)).astype(np.int64), BINS - 1)
    assert np.array_equal(stats.hist, np.bincount(in_float32, minlength=BINS))
    # ... which is numpy's histogram but for a value within float32 rounding of a bin edge.
    reference, _ = np.histogram(np.abs(values), bins=BINS, range=(0.0, 7.5))
    assert stats.hist.sum() == reference.sum() and np.abs(np.cumsum(stats.hist - reference)).max() <= 1
    assert (stats.lo, stats.hi) == (-7.5, 7.5)
    half = TensorStats()
    half.update(values.astype(np.float16))
    assert half.hist.sum() == values.size and half.zeros == 500


def test_histogram_blocks_count_what_one_pass_counts(monkeypatch) -> None:
    """A tensor larger than a block is counted block by block: the same bins, zeros and range as one block."""
    rng = np.random.default_rng(5)
    values = np.maximum(rng.normal(0, 2, (3, 7, 11, 13)), 0).astype(np.float32)  # 3003 values, half exact zeros
    whole = TensorStats()
    whole.update(values)
    monkeypatch.setattr(statistics, "HIST_BLOCK", 64)  # 47 blocks, the last one short
    blocked = TensorStats()
    blocked.update(values)
    assert np.array_equal(blocked.hist, whole.hist) and blocked.zeros == whole.zeros == int((values == 0).sum())
    assert (blocked.lo, blocked.hi, blocked.edge) == (whole.lo, whole.hi, whole.edge)


def test_statistics_do_not_depend_on_the_number_of_threads(net, monkeypatch) -> None:
    """Each statistic folds its batches in order on whichever thread: one CPU or four give the same bits."""
    model, _, x = net
    by_threads = {}
    for threads in (1, 4):
        monkeypatch.setattr(statistics, "usable_cpus", lambda threads=threads: threads)
        by_threads[threads] = measure(model, [x[:24], x[24:48], x[48:]], input_name="input")
    one, four = by_threads[1], by_threads[4]
    for name, stat in one.tensors.items():
        other = four.tensors[name]
        assert np.array_equal(stat.hist, other.hist) and (stat.lo, stat.hi, stat.zeros) == (other.lo, other.hi,
                                                                                           other.zeros)
    for layer, mean in one.input_means.items():
        assert np.array_equal(mean, four.input_means[layer])
    for layer, moments in one.patch_moments.items():
        assert np.array_equal(moments.m2, four.patch_moments[layer].m2) and moments.count == four.patch_moments[
            layer].count


def test_entropy_clips_a_heavy_tail_and_ignores_exact_zeros() -> None:
    rng = np.random.default_rng(2)
    values = np.concatenate([rng.normal(0, 1, 200_000), [60.0, -55.0]]).astype(np.float32)
    stats = TensorStats()
    stats.update(values)
    lo, hi = stats.range("entropy", 99.99)
    assert 2.0 < hi < 30.0 and lo > -30.0, (lo, hi)  # the two outliers no longer set the range
    assert stats.range("minmax", 99.99) == (-55.0, 60.0)
    # After a ReLU, most values are exactly 0: they must not pull the threshold down to the first bins.
    relu = TensorStats()
    relu.update(np.concatenate([np.zeros(800_000), rng.uniform(0, 6, 200_000)]).astype(np.float32))
    assert relu.range("entropy", 99.99)[1] > 4.0
    assert entropy_threshold(np.r_[np.ones(100), np.zeros(BINS - 100)].astype(np.int64)) == 100


@pytest.mark.parametrize("draw,levels,expected", [
    ("normal", 127, 3.94),   # 8-bit optimum on a Gaussian: 3.9 sigma (Banner et al., ACIQ)
    ("laplace", 127, 9.89),  # and on a Laplacian: 9.89 b
    ("normal", 7, 2.55),     # 4-bit (7 steps above zero): 2.55 sigma
])
def test_mse_threshold_matches_the_published_optima(draw: str, levels: int, expected: float) -> None:
    rng = np.random.default_rng(4)
    stats = TensorStats()
    stats.update(getattr(rng, draw)(size=2_000_000).astype(np.float32))
    assert stats.threshold("mse", 99.99, levels) == pytest.approx(expected, rel=0.04)


def test_mse_range_spends_unsigned_levels_on_a_non_negative_tensor() -> None:
    rng = np.random.default_rng(5)
    relu = np.concatenate([np.zeros(500_000), np.abs(rng.laplace(size=500_000))]).astype(np.float32)
    stats = CalibrationStatistics({"relu": TensorStats()}, {}, 1)
    stats.tensors["relu"].update(relu)
    signed = stats.ranges("mse", 99.99, "int8")["relu"]
    unsigned = stats.ranges("mse", 99.99, "uint8")["relu"]
    # Twice the steps on [0, t]: rounding costs a quarter as much, so less is clipped.
    assert signed[0] == unsigned[0] == 0.0 and signed[1] < unsigned[1] <= float(relu.max())


def test_mse_unbounded_clips_only_what_no_activation_bounds() -> None:
    """A projection's output (no activation after it) has long tails: its range is clipped by MSE. A ReLU6
    output keeps its whole range: values at the bound are common and clipping them costs more than rounding."""
    rng = np.random.default_rng(6)
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["proj"], name="proj"),
             helper.make_node("Clip", ["proj", "lo", "hi"], ["relu6"], name="relu6")]
    inits = [numpy_helper.from_array(np.ones((2, 2, 1, 1), np.float32), "w"),
             numpy_helper.from_array(np.zeros(2, np.float32), "b"),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("relu6", TensorProto.FLOAT, None)], inits)
    from edgetl.quantize.statistics import unbounded_tensors

    assert unbounded_tensors(helper.make_model(graph)) == {"proj"}
    tails = rng.laplace(size=1_000_000).astype(np.float32)
    relu6 = np.clip(rng.normal(3, 3, 1_000_000), 0, 6).astype(np.float32)
    stats = CalibrationStatistics({"proj": TensorStats(), "relu6": TensorStats()}, {}, 1)
    stats.tensors["proj"].update(tails)
    stats.tensors["relu6"].update(relu6)
    mixed = stats.ranges("mse-unbounded", 99.99, "int8", unbounded={"proj"})
    assert mixed["proj"] == stats.ranges("mse", 99.99, "int8")["proj"]
    assert mixed["proj"][1] < 0.8 * float(tails.max())  # 9.9 b on a Laplacian, its maximum about 13.5 b
    assert mixed["relu6"] == stats.ranges("minmax", 99.99, "int8")["relu6"] == (0.0, 6.0)
    assert stats.ranges("mse", 99.99, "int8")["relu6"][1] < 6.0  # what plain mse would have clipped


def test_statistics_cache_round_trip(net, tmp_path: Path) -> None:
    model, _, x = net
    stats = measure(model, [x[:32], x[32:]], input_name="input")
    assert stats.images == 64 and set(stats.input_means) == {"conv1", "dw", "fc"}
    assert stats.input_means["conv1"].shape == (3, 12, 12)
    np.testing.assert_allclose(stats.input_means["conv1"], x.mean(axis=0), rtol=1e-5, atol=1e-6)
    stats.save(tmp_path / "stats.npz")
    back = CalibrationStatistics.load(tmp_path / "stats.npz")
    for method in ("minmax", "entropy", "percentile", "mse"):
        assert back.ranges(method, 99.9) == stats.ranges(method, 99.9)
    np.testing.assert_array_equal(back.input_means["dw"], stats.input_means["dw"])
    assert set(back.patch_moments) == {"conv1", "dw", "fc"} and back.patch_moments["dw"].m2.shape == (8, 9, 9)
    np.testing.assert_allclose(back.patch_moments["conv1"].second_moment(),
                               stats.patch_moments["conv1"].second_moment(), rtol=1e-5)
    # A cache written before the moments were measured says so (the quantizer then measures again).
    stats.patch_moments = None
    stats.save(tmp_path / "old.npz")
    assert CalibrationStatistics.load(tmp_path / "old.npz").patch_moments is None


def test_gptq_rounding_lowers_the_models_output_error(net) -> None:
    """Coarse (3-bit) weights, activations in float, both bias-corrected: GPTQ's codes move the logits less.
    The images are smooth, like photos: neighbouring pixels correlate, which is what the rounding exploits (on
    independent pixels it is nearest rounding, up to the mean)."""
    model, path, _ = net
    rng = np.random.default_rng(5)
    x = (rng.normal(0.8, 1.0, (64, 3, 4, 4)).repeat(3, axis=2).repeat(3, axis=3)
         + rng.normal(0, 0.1, (64, 3, 12, 12))).astype(np.float32)
    quantized, stats = _quantize(path, model, x)
    weights_only = restore(quantized, model, [u for u in list_units(quantized, model) if u.kind == ACTIVATION])
    errors = {}
    for rounding in ("nearest", "gptq"):
        edited = onnx.ModelProto()
        edited.CopyFrom(weights_only)
        inits = {i.name: i for i in edited.graph.initializer}
        for layer in quantized_layers(edited, model):
            scale = numpy_helper.to_array(inits[layer.scale]) * (127 / 3)
            inits[layer.scale].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), layer.scale))
            inits[layer.weight].CopyFrom(numpy_helper.from_array(np.clip(np.round(  # |q| <= 3 sets qmax
                layer.float_weight / scale.reshape(-1, *[1] * (layer.float_weight.ndim - 1))), -3, 3)
                .astype(np.int8), layer.weight))
        report = refine_weights(edited, model, mse=False, input_means=stats.input_means,
                                moments=stats.patch_moments if rounding == "gptq" else None)
        assert report.gptq_layers == (3 if rounding == "gptq" else 0) and report.corrected_layers == 3
        assert all(layer.qmax <= 3 for layer in quantized_layers(edited, model))
        errors[rounding] = float(np.sqrt(np.mean((_run(edited, x) - _run(model, x)) ** 2)))
    assert errors["gptq"] < 0.9 * errors["nearest"], errors


@pytest.mark.parametrize("strides,pads,group", [((1, 1), (1, 1, 1, 1), 1), ((2, 2), (1, 0, 1, 0), 1),
                                                ((1, 1), (1, 1, 1, 1), 4)])
def test_output_mean_shift_is_the_layer_on_the_mean_input(strides, pads, group) -> None:
    rng = np.random.default_rng(3)
    delta = rng.normal(0, 1, (8, 8 // group, 3, 3)).astype(np.float32)
    mean_input = rng.normal(0.5, 1, (8, 9, 9)).astype(np.float32)
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", strides=list(strides), pads=list(pads), group=group)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(delta, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    want = sess.run(None, {"x": mean_input[None]})[0][0].mean(axis=(1, 2))
    np.testing.assert_allclose(output_mean_shift(node, delta, mean_input), want, rtol=1e-4, atol=1e-5)


def _quantize(path: Path, model: onnx.ModelProto, x: np.ndarray, activation_type: str = "int8"):
    stats = measure(model, [x[:32], x[32:]], input_name="input")
    out = path.parent / f"q-{activation_type}.onnx"
    quantize_file(path, out, Int8Settings(activation_type=activation_type), ranges=stats.ranges("minmax", 99.99))
    return float_outputs(onnx.load(str(out)), model), stats


def test_bias_correction_restores_each_layers_mean_output(net) -> None:
    model, path, x = net
    quantized, stats = _quantize(path, model, x)
    # Weights only (activations back in float), 3-bit-coarse weights: a large, systematic mean shift.
    weights_only = restore(quantized, model, [u for u in list_units(quantized, model) if u.kind == ACTIVATION])
    uncorrected = 0.0
    for bias_correction in (False, True):
        edited = onnx.ModelProto()
        edited.CopyFrom(weights_only)
        coarse = quantized_layers(edited, model)
        inits = {i.name: i for i in edited.graph.initializer}
        for layer in coarse:  # 3-bit weights: scales 127/3 times larger
            scale = numpy_helper.to_array(inits[layer.scale]) * (127 / 3)
            inits[layer.scale].CopyFrom(numpy_helper.from_array(scale.astype(np.float32), layer.scale))
            inits[layer.weight].CopyFrom(numpy_helper.from_array(np.clip(np.round(
                layer.float_weight / scale.reshape(-1, *[1] * (layer.float_weight.ndim - 1))), -3, 3)
                .astype(np.int8), layer.weight))
        report = refine_weights(edited, model, mse=False, input_means=stats.input_means if bias_correction else None)
        error = np.abs(_run(edited, x).mean(axis=0) - _run(model, x).mean(axis=0)).max()
        if bias_correction:
            assert report.corrected_layers == 3 and error < 0.25 * uncorrected, (error, uncorrected)
        else:
            uncorrected = error
            assert uncorrected > 0.05


def test_mse_scales_never_worse_than_max() -> None:
    rng = np.random.default_rng(4)
    w = rng.standard_t(3, (16, 4, 3, 3)).astype(np.float32)
    scales = mse_scales(w, 0, 127)
    amax = np.abs(w).reshape(16, -1).max(1)
    def err(s):
        q = np.clip(np.round(w / s.reshape(-1, 1, 1, 1)), -127, 127) * s.reshape(-1, 1, 1, 1)
        return ((q - w) ** 2).reshape(16, -1).sum(1)
    assert np.all(err(scales) <= err(amax / 127) + 1e-12) and np.all(scales <= amax / 127 + 1e-9)


def test_reduce_range_is_seven_bit_on_non_depthwise_layers_only(net) -> None:
    model, path, x = net
    quantized, _ = _quantize(path, model, x, "uint8")
    report = refine_weights(quantized, model, mse=False, input_means=None, reduce_range=True)
    by_name = {layer.node.name: layer for layer in quantized_layers(quantized, model)}
    assert report.reduced_layers == 2 and by_name["dw"].qmax == 127
    assert by_name["conv1"].qmax <= 63 and by_name["fc"].qmax <= 63


def test_default_settings_are_eight_bit_with_bias_correction() -> None:
    settings = Int8Settings()
    assert not settings.reduce_range and settings.bias_correction and settings.method == "mse-unbounded"
    assert Int8Settings(activation_type="uint8").method == "mse-unbounded"  # each format's measured best
    assert Int8Settings(method="entropy").method == "entropy"
    assert settings.gate_numerics == "exact" and Int8Settings(activation_type="uint8").gate_numerics == "device"
    assert settings.to_dict()["weight_bits"] == 8


@pytest.mark.parametrize("machine,flags,saturates", [
    ("x86_64", frozenset({"avx2", "fma"}), True),
    ("x86_64", frozenset({"avx2", "avx512_vnni"}), False),
    ("x86_64", frozenset({"avx2", "avx_vnni"}), False),
    ("x86_64", frozenset({"amx_int8", "avx512f"}), False),
    ("aarch64", frozenset({"asimd"}), False),
])
def test_vnni_decides_whether_int8_kernels_saturate(machine, flags, saturates) -> None:
    assert cpu.int8_kernels_saturate(machine, flags) is saturates


def test_cpuinfo_flags_are_read() -> None:
    text = "processor\t: 0\nflags\t\t: fpu avx2 avx512_vnni\n"
    assert cpu.cpu_flags(text) == frozenset({"fpu", "avx2", "avx512_vnni"})


def test_numerics_modes_choose_session_options(monkeypatch) -> None:
    assert session_options("exact").graph_optimization_level == ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    monkeypatch.setattr(cpu, "int8_kernels_saturate", lambda *a, **k: True)
    device = session_options("device")
    assert device.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert device.get_session_config_entry("session.x64quantprecision") == "1"
    monkeypatch.setattr(cpu, "int8_kernels_saturate", lambda *a, **k: False)
    with pytest.raises(RuntimeError):  # not set at all where the kernels are exact
        session_options("device").get_session_config_entry("session.x64quantprecision")
    from edgetl.errors import BadInputError

    with pytest.raises(BadInputError, match="unknown numerics"):
        session_options("fast")
