"""Real TensorRT tests: they run wherever ``import tensorrt`` works and a CUDA GPU is present.

Build FP32, FP16 and INT8 engines for the demo classifier (EfficientNet-Lite0 fixture checkpoint),
validate each against the FP32 ONNX reference on the digits sample (INT8 top-1 drop <= 0.5 points),
check the runtime picks them, and bench them. Skipped on machines without TensorRT (CI here).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytestmark = [pytest.mark.tensorrt, pytest.mark.gpu, pytest.mark.slow]


@pytest.fixture(scope="module")
def real_bundle(tiny_checkpoint, digits_dir, tmp_path_factory):
    from edgetl.export import export_checkpoint
    from edgetl.quantize import quantize_bundle

    out = tmp_path_factory.mktemp("trt-real") / "bundle"
    export_checkpoint(tiny_checkpoint, out, parity_data=digits_dir)
    quantize_bundle(out, "int8", calib_data=digits_dir, calib_size=120)
    return out


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_build_validate_bench(real_bundle, digits_dir, precision):
    from edgetl.compile import compile_bundle
    from edgetl.runtime.backends.tensorrt import TensorRTBackend
    from edgetl.validate import validate_bundle

    result = compile_bundle(real_bundle, precision, batch=(1, 8, 32), contexts=2)
    assert result.engine.is_file()
    assert result.golden["passed"] is True, result.golden
    report = validate_bundle(real_bundle, candidate=str(result.engine), reference="fp32", data=digits_dir,
                             max_top1_drop=0.5, min_agreement=0.9)
    assert report.passed, report.to_dict()

    x = np.load(real_bundle / "golden" / "input.npy")
    with TensorRTBackend(result.engine, cuda_graph=True) as backend:
        for _ in range(10):
            backend.infer(x[:1])
        start = time.perf_counter()
        for _ in range(50):
            backend.infer(x[:1])
        latency_ms = (time.perf_counter() - start) / 50 * 1e3
        big = np.repeat(x, 8, axis=0)  # 64 rows: two chunks of the max batch 32
        out = backend.infer(big)
        assert out["logits"].shape[0] == big.shape[0]
    assert latency_ms < 50, f"{precision} batch-1 latency {latency_ms:.2f} ms"


def test_runtime_auto_picks_matching_engine(real_bundle):
    from edgetl.compile import compile_bundle
    from edgetl.runtime import load

    compile_bundle(real_bundle, "fp16")
    predictor = load(real_bundle, backend="auto", precision="fp16")
    try:
        assert predictor.describe()["backend"] == "tensorrt"
    finally:
        predictor.close()


def test_ort_tensorrt_ep_caches_engines_in_bundle(real_bundle):
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend, available_providers

    if "TensorrtExecutionProvider" not in available_providers():
        pytest.skip("this onnxruntime build has no TensorRT execution provider")
    cache = real_bundle / "engines" / "ort-trt-cache"
    with OnnxRuntimeBackend(real_bundle / "model.onnx", device="tensorrt", trt_cache_dir=cache) as backend:
        backend.infer(np.load(real_bundle / "golden" / "input.npy"))
    assert any(cache.iterdir())
