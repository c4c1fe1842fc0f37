"""GPTQ weight rounding: the input patches it measures, the moments it keeps, and what it buys."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import edgetl.quantize.rounding as rounding
from edgetl.quantize.rounding import PatchMoments, gptq_codes, input_patches


def _conv(weight: np.ndarray, x: np.ndarray, **attrs) -> tuple[object, np.ndarray]:
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="c", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return node, session.run(None, {"x": x})[0]


@pytest.mark.parametrize("kernel,attrs", [
    (1, {}),
    (3, {"strides": [2, 2], "pads": [1, 1, 1, 1]}),
    (3, {"pads": [1, 0, 2, 1], "dilations": [2, 1]}),
    (3, {"pads": [1, 1, 1, 1], "group": 8}),  # depthwise
    (5, {"strides": [2, 2], "pads": [2, 2, 2, 2], "group": 4}),
])
@pytest.mark.parametrize("max_positions", [10_000, 9])
def test_patches_times_weights_are_the_convolution(monkeypatch, kernel, attrs, max_positions) -> None:
    """Every layout the rounding covers: the patches in the weight's order reproduce the layer's output at the
    positions they sample (all of them, or a grid when the map is large)."""
    monkeypatch.setattr(rounding, "MAX_POSITIONS", max_positions)
    rng = np.random.default_rng(0)
    group = attrs.get("group", 1)
    weight = rng.normal(0, 1, (8, 8 // group, kernel, kernel)).astype(np.float32)
    x = rng.normal(0, 1, (2, 8, 11, 11)).astype(np.float32)
    node, y = _conv(weight, x, **attrs)
    for phase in (0, 1):
        patches = input_patches(node, weight.shape, x, phase=phase)
        got = np.matmul(weight.reshape(group, 8 // group, -1), patches)  # (group, out per group, positions)
        every = max(1, int(np.ceil(np.sqrt(y.shape[2] * y.shape[3] / max_positions))))
        sampled = y[:, :, phase % every::every, phase % every::every]
        want = sampled.transpose(1, 0, 2, 3).reshape(group, 8 // group, -1)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_gemm_patches_are_the_rows() -> None:
    node = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transB=1)
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(input_patches(node, (5, 4), x)[0], x.T)
    transposed = helper.make_node("Gemm", ["x", "w"], ["y"], name="fc", transA=1, transB=1)
    assert input_patches(transposed, (5, 3), x) is None  # rows are columns there: rounded to nearest


def test_moments_merge_batches_without_cancelling_a_large_offset() -> None:
    """A centred ReLU6 output sits near -3 with small spread: a plain float32 sum of squares would lose it."""
    rng = np.random.default_rng(1)
    data = (-3 + 0.01 * rng.normal(0, 1, (2, 5, 3000))).astype(np.float32)
    moments = PatchMoments()
    for chunk in np.array_split(data, [700, 1900], axis=2):
        moments.update(chunk.copy())
    for g in range(2):
        want = np.cov(data[g].astype(np.float64), bias=True)
        np.testing.assert_allclose(moments.m2[g] / moments.count, want, rtol=1e-3, atol=1e-9)
    second = moments.second_moment()
    np.testing.assert_allclose(second[0], data[0].astype(np.float64) @ data[0].T.astype(np.float64) / 3000, rtol=1e-6)
    back = PatchMoments.from_arrays(*moments.to_arrays())
    np.testing.assert_allclose(back.second_moment(), second, rtol=1e-6)


def test_gptq_is_nearest_rounding_when_inputs_are_uncorrelated() -> None:
    rng = np.random.default_rng(2)
    w = rng.normal(0, 1, (6, 10)).astype(np.float32)
    scales = np.abs(w).max(axis=1) / 7
    h = np.diag(rng.uniform(0.5, 2, 10))[None]
    nearest = np.clip(np.round(w / scales[:, None]), -7, 7)
    np.testing.assert_array_equal(gptq_codes(w, 0, scales, 7, h), nearest)


def test_gptq_lowers_the_output_error_on_the_inputs_it_measured_and_on_others() -> None:
    rng = np.random.default_rng(3)
    mix = rng.normal(0, 1, (24, 24))
    calib, other = (rng.normal(0, 1, (n, 24)) @ mix + 0.5 for n in (4000, 4000))
    w = rng.normal(0, 1, (16, 24)).astype(np.float32)
    scales = np.abs(w).max(axis=1) / 7  # 4-bit codes: the error is large enough to see
    moments = PatchMoments()
    moments.update(calib.T[None].astype(np.float32).copy())
    codes = gptq_codes(w, 0, scales, 7, moments.second_moment())
    nearest = np.clip(np.round(w / scales[:, None]), -7, 7)
    assert np.abs(codes).max() <= 7 and codes.dtype == np.int8

    def error(q: np.ndarray, x: np.ndarray) -> float:
        return float(np.mean((x @ (q * scales[:, None] - w).T) ** 2))

    for x in (calib, other):
        assert error(codes, x) < 0.75 * error(nearest, x)


def test_gptq_keeps_per_axis_layout_and_zero_scales() -> None:
    """A Gemm's (in, out) weight has its channels on axis 1; a channel whose scale is 0 stays all zero."""
    rng = np.random.default_rng(4)
    w = rng.normal(0, 1, (12, 4)).astype(np.float32)
    w[:, 2] = 0
    scales = np.abs(w).max(axis=0) / 127
    codes = gptq_codes(w, 1, scales, 127, np.eye(12)[None])
    assert codes.shape == w.shape and not codes[:, 2].any()
    np.testing.assert_array_equal(codes[:, [0, 1, 3]], np.round(w[:, [0, 1, 3]] / scales[[0, 1, 3]]))


def _column_by_column(w: np.ndarray, scales: np.ndarray, qmax: int, h: np.ndarray) -> np.ndarray:
    """GPTQ in its plain form, one column's error spread over every later column at once."""
    w = w.astype(np.float64).copy()
    d = w.shape[1]
    diag = np.diag(h)
    u = np.linalg.cholesky(np.linalg.inv(h + np.eye(d) * rounding.DAMPING * diag.mean())).T
    q = np.zeros_like(w)
    for i in range(d):
        q[:, i] = np.clip(np.round(w[:, i] / scales), -qmax, qmax)
        err = (w[:, i] - q[:, i] * scales) / u[i, i]
        w[:, i + 1:] -= err[:, None] * u[i, i + 1:]
    return q


@pytest.mark.parametrize("block", [1, 7, 128])
def test_lazy_batches_round_as_column_by_column(monkeypatch, block: int) -> None:
    """Blocks of columns (the last one short) give the plain algorithm's codes."""
    rng = np.random.default_rng(5)
    x = rng.normal(0, 1, (3000, 40)) @ rng.normal(0, 1, (40, 40)) + 0.3
    h = x.T @ x / len(x)
    w = rng.normal(0, 1, (9, 40)).astype(np.float32)
    scales = (np.abs(w).max(axis=1) / 7).astype(np.float64)
    monkeypatch.setattr(rounding, "GPTQ_BLOCK", block)
    codes = gptq_codes(w, 0, scales, 7, h[None])
    np.testing.assert_array_equal(codes, _column_by_column(w, scales, 7, h))
