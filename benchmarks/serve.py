"""Load test of `edgetl serve` on loopback: requests/s and latency percentiles vs the in-process Predictor.

Runs the daemon as a separate process (as deployed), drives it from client threads for a fixed
duration per cell, and compares with the same model called in-process (`Predictor.predict_batch` /
`Predictor.predict`) at the same concurrency in the same run. Cells: endpoint (v2 binary infer, one
image tensor per request; /v1/predict with a JPEG) x concurrency x micro-batching off/on.

    python benchmarks/serve.py                         # EfficientNet-Lite0 224 px bundle, built once
    python benchmarks/serve.py --bundle my-bundle --concurrency 1,4,16 --seconds 10

Writes benchmarks/results/serve.json. Loopback only; every cell is bounded in time.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent
RESULTS = ROOT / "results"


def build_bundle(out: Path) -> Path:
    """EfficientNet-Lite0 (ImageNet weights, 224 px) exported to a bundle; cached between runs."""
    if (out / "manifest.json").is_file():
        return out
    from edgetl.export import export_checkpoint
    from edgetl.models import create, get_model_info
    from edgetl.train.checkpoint import CheckpointMeta, save_checkpoint

    info = get_model_info("efficientnet_lite0")
    model = create("efficientnet_lite0", num_classes=10)
    meta = CheckpointMeta(task="classify", model="efficientnet_lite0", labels=[str(i) for i in range(10)],
                          preprocess=info.preprocess_spec(224), train_config={"benchmark": True})
    ckpt = out.parent / "bench-serve.pt"
    save_checkpoint(ckpt, model.state_dict(), meta)
    export_checkpoint(ckpt, out, name="bench", overwrite=True)
    return out


def jpeg(size: int = 320) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(buf, "JPEG", quality=90)
    return buf.getvalue()


def binary_infer_body(x: np.ndarray, input_name: str) -> tuple[bytes, dict[str, str]]:
    header = json.dumps({"inputs": [{"name": input_name, "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + x.tobytes(), {"Inference-Header-Content-Length": str(len(header)),
                                  "Content-Type": "application/octet-stream"}


def drive(call, concurrency: int, seconds: float) -> dict:
    """Run ``call()`` from ``concurrency`` threads for ``seconds``; latency stats and throughput."""
    latencies: list[list[float]] = [[] for _ in range(concurrency)]
    errors = [0] * concurrency
    start_gate = threading.Barrier(concurrency + 1)
    deadline = [0.0]

    def worker(i: int) -> None:
        start_gate.wait()
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            ok = call()
            if ok:
                latencies[i].append(time.perf_counter() - t0)
            else:
                errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    start_gate.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - t0
    flat = np.array([v for lst in latencies for v in lst]) * 1000
    return {
        "requests": int(flat.size),
        "errors": int(sum(errors)),
        "rps": flat.size / elapsed,
        "p50_ms": float(np.percentile(flat, 50)) if flat.size else None,
        "p99_ms": float(np.percentile(flat, 99)) if flat.size else None,
    }


def start_daemon(bundle: Path, batch_max: int, concurrency: int) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "edgetl.cli.main", "serve", str(bundle), "--port", "0", "--json",
           "--watch-interval", "0", "--max-concurrency", "2", "--max-queue", str(max(64, concurrency * 2)),
           "--batch-max", str(batch_max), "--batch-delay-ms", "2", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line:
        proc.kill()
        raise SystemExit("the daemon did not start")
    return proc, json.loads(line)["url"]


def stop_daemon(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, help="bundle to serve (default: build EfficientNet-Lite0 224 px)")
    parser.add_argument("--concurrency", default="1,4,8")
    parser.add_argument("--seconds", type=float, default=5.0, help="duration of each cell")
    args = parser.parse_args()
    levels = [int(v) for v in args.concurrency.split(",")]

    import httpx

    from edgetl.preprocess import preprocess
    from edgetl.runtime import load

    bundle = args.bundle or build_bundle(RESULTS / ".cache" / "bench-serve-bundle")
    predictor = load(bundle)
    backend = predictor.describe()
    image = jpeg()
    x, _ = preprocess(image, predictor.spec)
    x = x[None]
    body, headers = binary_infer_body(x, predictor.input_name)
    name = predictor.bundle.name

    rows: list[dict] = []
    for c in levels:
        base_t = drive(lambda: bool(predictor.predict_batch(x)), c, args.seconds)
        base_i = drive(lambda: predictor.predict(image) is not None, c, args.seconds)
        rows.append({"mode": "in-process", "endpoint": "tensor", "concurrency": c, **base_t})
        rows.append({"mode": "in-process", "endpoint": "image", "concurrency": c, **base_i})
    predictor.close()

    for batch_max in (1, 8):
        for c in levels:
            proc, url = start_daemon(bundle, batch_max, c)
            local = threading.local()

            def client(local: threading.local = local, url: str = url) -> httpx.Client:
                if not hasattr(local, "client"):
                    local.client = httpx.Client(base_url=url, timeout=60)
                return local.client

            try:
                v2 = drive(lambda client=client: client().post(f"/v2/models/{name}/infer", content=body,
                                                 headers=headers).status_code == 200, c, args.seconds)
                v1 = drive(lambda client=client: client().post("/v1/predict", content=image,
                                                 headers={"content-type": "image/jpeg"}).status_code == 200,
                           c, args.seconds)
            finally:
                stop_daemon(proc)
            mode = "serve" if batch_max == 1 else f"serve+batch{batch_max}"
            rows.append({"mode": mode, "endpoint": "tensor", "concurrency": c, **v2})
            rows.append({"mode": mode, "endpoint": "image", "concurrency": c, **v1})

    base = {(r["endpoint"], r["concurrency"]): r["rps"] for r in rows if r["mode"] == "in-process"}
    for r in rows:
        r["vs_in_process"] = r["rps"] / base[(r["endpoint"], r["concurrency"])] if base.get(
            (r["endpoint"], r["concurrency"])) else None

    print(f"\nmodel {name}  backend {backend['backend']} ({backend['precision']}, {backend['providers']})  "
          f"cpu cores {os.cpu_count()}  {args.seconds:.0f} s per cell")
    print("tensor = v2 binary infer of one preprocessed 1x3xHxW tensor (in-process: predict_batch);")
    print("image  = /v1/predict with a 320x320 JPEG (in-process: Predictor.predict on the bytes)\n")
    header = f"{'mode':<16}{'endpoint':<9}{'conc':>5}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}{'x base':>8}"
    print(header)
    print("-" * len(header))
    for r in sorted(rows, key=lambda r: (r["endpoint"], r["concurrency"], r["mode"])):
        print(f"{r['mode']:<16}{r['endpoint']:<9}{r['concurrency']:>5}{r['rps']:>9.1f}{r['p50_ms']:>9.2f}"
              f"{r['p99_ms']:>9.2f}{r['errors']:>8}{r['vs_in_process']:>8.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "serve.json"
    out.write_text(json.dumps({"model": name, "backend": backend, "seconds": args.seconds, "cpu_count": os.cpu_count(),
                               "rows": rows}, indent=2, default=str))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
