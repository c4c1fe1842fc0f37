"""Latency, throughput and memory of every runnable artifact of a bundle, measured in one run.

Each artifact is loaded through `edgetl.runtime.load` (the same path predictions take) and fed a
fixed random batch: ``warmup`` untimed calls, then ``iters`` timed ones. Peak RSS is the process's
high-water mark while that artifact was loaded and running (Linux resets it per artifact through
``/proc/self/clear_refs``; elsewhere it is the process maximum so far). Where PyTorch is installed and
the bundle can be traced back to its checkpoint, a PyTorch row gives the baseline each artifact's
speed-up is computed against.
"""

from __future__ import annotations

import platform
import resource
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle.manifest import Bundle, open_bundle
from edgetl.errors import EdgetlError, EnvironmentMissingError
from edgetl.runtime import artifacts, extensions


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb() -> float:
    """The process's peak resident memory in MB (since the last reset, on Linux)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _targets(bundle: Bundle, backend: str, precisions: Sequence[str] | None) -> list[tuple[str, str]]:
    """``(artifact path, precision)`` of the artifacts to measure, in manifest order."""
    kinds = {"auto": ("onnx", "engine"), "onnxruntime": ("onnx",), "tensorrt": ("engine",)}.get(backend, ())
    wanted = {artifacts.family(p) for p in precisions} if precisions else None
    return [(a.path, a.precision) for a in artifacts.matching(bundle, kinds)
            if wanted is None or artifacts.family(artifacts.artifact_precision(a)) in wanted]


def time_predictor(predictor: Any, batch: int, iters: int, warmup: int, seed: int = 0) -> dict[str, float]:
    """Time ``predict_batch`` on a random batch; latency in milliseconds per call."""
    h, w = predictor.spec.size
    x = np.random.default_rng(seed).standard_normal((batch, 3, h, w)).astype(np.float32)
    for _ in range(warmup):
        predictor.predict_batch(x)
    times = np.empty(iters, dtype=np.float64)
    for i in range(iters):
        t0 = time.perf_counter()
        predictor.predict_batch(x)
        times[i] = time.perf_counter() - t0
    ms = times * 1e3
    return {
        "p50_ms": float(np.percentile(ms, 50)),
        "p90_ms": float(np.percentile(ms, 90)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "throughput_ips": float(batch * iters / times.sum()),
    }


def bench_bundle(
    bundle_dir: str | Path | Bundle,
    *,
    backend: str = "auto",
    precisions: Sequence[str] | None = None,
    batches: Sequence[int] = (1, 8),
    iters: int = 50,
    warmup: int = 5,
    device: str = "auto",
    threads: int = 0,
    torch_baseline: bool = True,
    checkpoint: str | Path | None = None,
    verify: bool = True,
    progress: bool = True,
) -> dict[str, Any]:
    """Benchmark each artifact (and a PyTorch baseline) of a bundle at each batch size.

    Args:
        bundle_dir: a bundle directory or an open `Bundle`.
        backend: ``auto`` (ONNX models, plus engines where TensorRT runs), ``onnxruntime`` or ``tensorrt``.
        precisions: only these precisions (``None``: all).
        batches: batch sizes; a batch larger than the artifact accepts is reported as skipped.
        iters, warmup: timed and untimed calls per (artifact, batch).
        device: ``auto``, ``cpu`` or ``cuda``.
        threads: intra-op threads for ONNX Runtime and torch (0: library default).
        torch_baseline: add PyTorch rows when torch and the checkpoint are available.
        checkpoint: the training checkpoint for the PyTorch rows when the bundle carries none.
        verify: check artifact hashes once before measuring.
        progress: show a progress bar on stderr.

    Returns:
        ``{"bundle", "host", "settings", "rows": [...], "skipped": [...]}``; each row has artifact,
        backend, precision, providers, batch, p50/p90/p99/mean ms, throughput_ips, peak_rss_mb,
        load_s and speedup_vs_torch (when a torch row exists for that batch).
    """
    from tqdm import tqdm

    from edgetl.runtime import load

    if iters < 1 or warmup < 0:
        raise EdgetlError(f"iters must be >= 1 and warmup >= 0 (got {iters}, {warmup})")
    bundle = bundle_dir if isinstance(bundle_dir, Bundle) else open_bundle(bundle_dir, verify=verify)
    targets: list[tuple[str, str | None]] = list(_targets(bundle, backend, precisions))
    skipped: list[dict[str, Any]] = []
    if torch_baseline and extensions.backend_opener("torch") is not None:
        targets.append(("torch", None))
    elif torch_baseline:
        skipped.append({"artifact": "torch", "reason": "PyTorch is not installed (or its reference backend is not "
                                                       "loaded in this process)"})
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=len(targets) * len(batches), desc="bench", unit="run", disable=not progress, file=sys.stderr)
    for path, _precision in targets:
        rss_reset = _reset_peak_rss()
        t0 = time.perf_counter()
        try:
            if path == "torch":
                predictor = load(bundle, backend="torch", device=device, threads=threads, verify=False,
                                 checkpoint=checkpoint)
            else:
                predictor = load(bundle, artifact=path, device=device, threads=threads, verify=False)
        except (EnvironmentMissingError, EdgetlError) as exc:
            skipped.append({"artifact": path, "reason": exc.message})
            bar.update(len(batches))
            continue
        load_s = time.perf_counter() - t0
        with predictor:
            desc = predictor.describe()
            for b in batches:
                bar.set_postfix_str(f"{Path(desc['artifact']).name} b{b}")
                if b > predictor.max_batch:
                    skipped.append({"artifact": desc["artifact"], "batch": b,
                                    "reason": f"the model accepts batches up to {predictor.max_batch}"})
                    bar.update(1)
                    continue
                stats = time_predictor(predictor, b, iters, warmup)
                rows.append({
                    "artifact": desc["artifact"] if path != "torch" else "checkpoint (PyTorch)",
                    "backend": desc["backend"],
                    "precision": desc["precision"] if path != "torch" else "fp32",
                    "providers": desc.get("providers", []),
                    "batch": b,
                    **stats,
                    "peak_rss_mb": peak_rss_mb(),
                    "rss_scope": "artifact" if rss_reset else "process",
                    "load_s": load_s,
                })
                bar.update(1)
    bar.close()
    torch_p50 = {r["batch"]: r["p50_ms"] for r in rows if r["backend"] == "torch"}
    for r in rows:
        base = torch_p50.get(r["batch"])
        r["speedup_vs_torch"] = (base / r["p50_ms"]) if base and r["p50_ms"] > 0 else None
    return {
        "bundle": str(bundle.root),
        "host": {"machine": platform.machine(), "python": platform.python_version(),
                 "processor": platform.processor() or platform.machine()},
        "settings": {"backend": backend, "device": device, "batches": list(batches), "iters": iters,
                     "warmup": warmup, "threads": threads},
        "rows": rows,
        "skipped": skipped,
    }


def format_bench(report: dict[str, Any]) -> str:
    """The bench report as a text table (one row per artifact and batch)."""
    from edgetl.tables import format_table

    headers = ["artifact", "backend", "prec", "batch", "p50 ms", "p90 ms", "p99 ms", "img/s", "peak RSS MB",
               "vs torch"]
    rows = [[r["artifact"], r["backend"], r["precision"], r["batch"], r["p50_ms"], r["p90_ms"], r["p99_ms"],
             r["throughput_ips"], r["peak_rss_mb"],
             f"{r['speedup_vs_torch']:.2f}x" if r.get("speedup_vs_torch") else None] for r in report["rows"]]
    text = format_table(headers, rows)
    for s in report.get("skipped", []):
        batch = f" batch {s['batch']}" if "batch" in s else ""
        text += f"\nskipped {s['artifact']}{batch}: {s['reason']}"
    return text
