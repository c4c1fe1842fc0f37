"""GPU inference benchmark: PyTorch eager vs ONNX Runtime CUDA EP (FP32/FP16/INT8) vs TensorRT engines.

Runs EfficientNet-Lite0 (ImageNet weights shipped with edgetl) at 224 px on the first CUDA GPU and
prints, with the device name, batch-1 latency (median and p90 over repeated runs) and batch-N
throughput, each as a ratio to PyTorch eager FP32 measured in the same run. TensorRT rows appear when
``import tensorrt`` works (engines built with ``edgetl.compile`` in a temporary bundle).

On a machine without an NVIDIA GPU it says so and exits 0.

A ``torch.compile`` row (inductor, CUDA graphs) is the strongest PyTorch peer; its one-off compile time is
recorded beside it. Each row records the GPU memory its runs peaked at; the process's peak RSS is in the JSON.
Backends that cannot run here are listed under ``skipped`` with the reason, never silently left out.

    python benchmarks/gpu.py [--batch 32] [--iters 200] [--size 224] [--no-compile] [--out PATH]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results" / "gpu.json"


def _no_gpu_reason() -> str | None:
    if importlib.util.find_spec("torch") is None:
        return "PyTorch is not installed"
    import torch

    if not torch.cuda.is_available():
        return "no CUDA GPU on this machine (torch.cuda.is_available() is False)"
    return None


def _time(fn: Callable[[], object], iters: int, sync: Callable[[], None]) -> list[float]:
    for _ in range(max(5, iters // 10)):
        fn()
    sync()
    out = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        sync()
        out.append(time.perf_counter() - start)
    return out


def _row(name: str, lat: list[float], thr_seconds: list[float], batch: int) -> dict:
    import torch

    lat_ms = sorted(v * 1e3 for v in lat)
    row = {
        "backend": name,
        "latency_ms_median": statistics.median(lat_ms),
        "latency_ms_p90": lat_ms[int(0.9 * (len(lat_ms) - 1))],
        "throughput_ips": batch / statistics.median(thr_seconds),
        # PyTorch's allocator only: ONNX Runtime and TensorRT allocate outside it, so their rows say None.
        "torch_peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1) if name.startswith("torch") else None,
    }
    torch.cuda.reset_peak_memory_stats()
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--no-compile", action="store_true",
                        help="skip the torch.compile row (it compiles for about a minute)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()

    reason = _no_gpu_reason()
    if reason:
        print(f"benchmarks/gpu.py: {reason}; nothing to measure.", file=sys.stderr)
        return 0

    import onnxruntime as ort
    import torch

    from edgetl.export.onnx_graph import trace_to_onnx
    from edgetl.models import create

    device_name = torch.cuda.get_device_name(0)
    print(f"device: {device_name} (compute {'.'.join(map(str, torch.cuda.get_device_capability(0)))})")
    model = create("efficientnet_lite0", num_classes=1000).eval().cuda()
    rng = np.random.default_rng(0)
    x1 = rng.normal(size=(1, 3, args.size, args.size)).astype(np.float32)
    xb = rng.normal(size=(args.batch, 3, args.size, args.size)).astype(np.float32)
    sync = torch.cuda.synchronize
    rows = []
    skipped: dict[str, str] = {}

    # PyTorch eager, FP32 and FP16 (autocast).
    t1, tb = torch.from_numpy(x1).cuda(), torch.from_numpy(xb).cuda()
    with torch.inference_mode():
        for name, ctx in (("torch eager fp32", torch.autocast("cuda", enabled=False)),
                          ("torch eager fp16 (autocast)", torch.autocast("cuda", dtype=torch.float16))):
            with ctx:
                lat = _time(lambda: model(t1), args.iters, sync)
                thr = _time(lambda: model(tb), max(20, args.iters // 5), sync)
            rows.append(_row(name, lat, thr, args.batch))
    if args.no_compile:
        skipped["torch.compile"] = "--no-compile"
    else:
        try:
            compiled, compile_seconds = _compiled(model, t1, tb)
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
                lat = _time(lambda: compiled(t1), args.iters, sync)
                thr = _time(lambda: compiled(tb), max(20, args.iters // 5), sync)
            row = _row("torch.compile fp16 (cuda graphs)", lat, thr, args.batch)
            rows.append(row | {"compile_seconds": compile_seconds})
        except Exception as exc:  # inductor needs a working Triton; report, and measure the rest
            skipped["torch.compile"] = f"{type(exc).__name__}: {exc}"[:300]

    work = Path(tempfile.mkdtemp(prefix="edgetl-gpu-bench-"))
    onnx_fp32 = work / "model.onnx"
    trace_to_onnx(model.float().cpu(), onnx_fp32, input_name="input", output_names=["logits"],
                  size=(args.size, args.size), opset=17, dynamic_batch=True)
    graphs = {"fp32": onnx_fp32}
    try:
        import onnx
        from onnxruntime.transformers.float16 import convert_float_to_float16

        fp16 = convert_float_to_float16(onnx.load(onnx_fp32), keep_io_types=True)
        onnx.save(fp16, work / "model.fp16.onnx")
        graphs["fp16"] = work / "model.fp16.onnx"
    except Exception as exc:  # the converter is optional tooling
        skipped["onnxruntime fp16"] = f"FP16 conversion failed: {exc}"
    try:
        from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

        class Reader(CalibrationDataReader):
            def __init__(self) -> None:
                self.it = iter([{"input": xb[i : i + 1]} for i in range(min(16, len(xb)))])

            def get_next(self):
                return next(self.it, None)

        quantize_static(str(onnx_fp32), str(work / "model.int8.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                        per_channel=True)
        graphs["int8"] = work / "model.int8.onnx"
    except Exception as exc:
        skipped["onnxruntime int8"] = f"quantize_static failed: {exc}"

    for prec, path in graphs.items():
        sess = ort.InferenceSession(str(path), providers=["CUDAExecutionProvider", "CPUExecutionProvider"])
        if sess.get_providers()[0] != "CUDAExecutionProvider":
            skipped["onnxruntime cuda"] = (f"ONNX Runtime {ort.__version__} has no CUDA provider here "
                                           f"(providers: {sess.get_providers()}); install onnxruntime-gpu")
            break
        lat = _time(lambda s=sess: s.run(None, {"input": x1}), args.iters, lambda: None)
        thr = _time(lambda s=sess: s.run(None, {"input": xb}), max(20, args.iters // 5), lambda: None)
        rows.append(_row(f"onnxruntime cuda {prec}", lat, thr, args.batch))

    if importlib.util.find_spec("tensorrt") is not None:
        rows += _tensorrt_rows(work, graphs, x1, xb, args)
    else:
        skipped["tensorrt"] = "`import tensorrt` fails on this machine"
    for name, why in skipped.items():
        print(f"skipped {name}: {why}", file=sys.stderr)

    base = rows[0]
    for row in rows:
        row["latency_speedup"] = base["latency_ms_median"] / row["latency_ms_median"]
        row["throughput_ratio"] = row["throughput_ips"] / base["throughput_ips"]
    header = f"{'backend':34} {'b1 median ms':>12} {'b1 p90 ms':>10} {'b' + str(args.batch) + ' img/s':>11} " \
             f"{'lat x':>6} {'thr x':>6}"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['backend']:34} {r['latency_ms_median']:12.2f} {r['latency_ms_p90']:10.2f} "
              f"{r['throughput_ips']:11.0f} {r['latency_speedup']:6.2f} {r['throughput_ratio']:6.2f}")
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"device": device_name, "batch": args.batch, "size": args.size,
                                    "torch": torch.__version__, "onnxruntime": ort.__version__,
                                    "baseline": base["backend"], "rows": rows, "skipped": skipped,
                                    "peak_rss_mib": round(peak_rss_mib, 1)}, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


def _compiled(model, t1, tb):
    """``torch.compile`` in reduce-overhead mode (CUDA graphs) under FP16 autocast; returns it and its compile time."""
    import torch

    compiled = torch.compile(model, mode="reduce-overhead")
    start = time.perf_counter()
    with torch.inference_mode(), torch.autocast("cuda", dtype=torch.float16):
        for t in (t1, tb, t1, tb):  # each shape compiles once, then CUDA graphs are recorded
            compiled(t)
    torch.cuda.synchronize()
    return compiled, round(time.perf_counter() - start, 1)


def _tensorrt_rows(work: Path, graphs: dict[str, Path], x1: np.ndarray, xb: np.ndarray, args) -> list[dict]:
    """Build FP32/FP16/INT8 engines through edgetl's compile stage and time them with TensorRTBackend."""
    from edgetl.bundle.manifest import Bundle
    from edgetl.compile import compile_bundle
    from edgetl.preprocess import PreprocessSpec
    from edgetl.runtime.backends.tensorrt import TensorRTBackend

    bundle = Bundle.create(work, task="classify", name="bench", labels=[str(i) for i in range(1000)],
                           input_name="input", preprocess=PreprocessSpec(size=(args.size, args.size)))
    bundle.add_artifact(graphs["fp32"], kind="onnx", precision="fp32", created_by="export")
    if "fp16" in graphs:
        bundle.add_artifact(graphs["fp16"], kind="onnx", precision="fp16", created_by="quantize")
    if "int8" in graphs:
        bundle.add_artifact(graphs["int8"], kind="onnx", precision="int8", created_by="quantize")
    bundle.save()
    rows = []
    for prec in ("fp32", "fp16", "int8"):
        if prec == "int8" and "int8" not in graphs:
            continue
        try:
            result = compile_bundle(work, prec, batch=(1, args.batch, args.batch), contexts=1)
        except Exception as exc:
            print(f"TensorRT {prec}: build failed ({exc})", file=sys.stderr)
            continue
        with TensorRTBackend(result.engine, cuda_graph=True) as backend:
            lat = _time(lambda b=backend: b.infer(x1), args.iters, lambda: None)
            thr = _time(lambda b=backend: b.infer(xb), max(20, args.iters // 5), lambda: None)
        rows.append(_row(f"tensorrt {prec} (cuda graph b1)", lat, thr, args.batch))
    return rows


if __name__ == "__main__":
    sys.exit(main())
