#!/usr/bin/env python3
"""Client half of the container smoke test: wait for readiness, predict through both APIs.

    python scripts/smoke_client.py --url http://127.0.0.1:18080 --bundle-info bundle.json [--timeout 180]

``--bundle-info`` is the JSON that scripts/make_smoke_bundle.py printed. Checks:

1. ``GET /v2/health/ready`` answers 200 within ``--timeout`` seconds;
2. ``POST /v1/predict`` with the raw bytes of the red image answers label ``red``;
3. tritonclient (KServe v2 ``/v2/models/<name>/infer``) on the preprocessed blue image answers
   logits whose argmax is ``blue`` and that match the bundle's golden output within 1e-3.

Prints one JSON document with what it saw; exits 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np


def wait_ready(url: str, timeout: float) -> float:
    """Seconds until /v2/health/ready answered 200; raises TimeoutError."""
    start = time.monotonic()
    last = ""
    while time.monotonic() - start < timeout:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=3) as response:
                if response.status == 200:
                    return time.monotonic() - start
                last = f"HTTP {response.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.5)
    raise TimeoutError(f"{url}/v2/health/ready not ready after {timeout:.0f} s (last: {last})")


def predict_v1(url: str, image: Path) -> dict:
    request = urllib.request.Request(
        f"{url}/v1/predict?top_k=3", data=image.read_bytes(), headers={"content-type": "image/png"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def infer_v2(url: str, model: str, batch: np.ndarray, input_name: str = "input") -> np.ndarray:
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(url=url.split("://", 1)[-1])
    tensor = httpclient.InferInput(input_name, list(batch.shape), "FP32")
    tensor.set_data_from_numpy(batch, binary_data=True)
    result = client.infer(model, inputs=[tensor], outputs=[httpclient.InferRequestedOutput("logits")])
    return result.as_numpy("logits")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--bundle-info", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=180.0)
    args = parser.parse_args(argv)

    info = json.loads(args.bundle_info.read_text())
    report: dict = {"url": args.url, "model": info["name"], "checks": {}}
    ok = True
    try:
        report["ready_after_s"] = round(wait_ready(args.url, args.timeout), 2)
        report["checks"]["ready"] = True
    except TimeoutError as exc:
        report["checks"]["ready"] = False
        report["error"] = str(exc)
        sys.stdout.write(json.dumps(report) + "\n")
        return 1

    try:
        v1 = predict_v1(args.url, Path(info["images"]["red"]))
        top = v1["results"][0]
        report["v1_predict"] = {"label": top.get("label"), "score": top.get("score")}
        report["checks"]["v1_predict_red"] = top.get("label") == "red"
    except Exception as exc:  # report every failure, keep checking the rest
        report["checks"]["v1_predict_red"] = False
        report["v1_error"] = f"{type(exc).__name__}: {exc}"

    try:
        from edgetl.bundle.manifest import open_bundle
        from edgetl.preprocess import preprocess_batch

        bundle = open_bundle(info["bundle"], verify=False)
        batch, _ = preprocess_batch([info["images"]["blue"]], bundle.preprocess)
        logits = infer_v2(args.url, info["name"], batch.astype(np.float32), bundle.input_name)
        golden = np.load(Path(info["bundle"]) / "golden" / "output_logits.npy")[info["labels"].index("blue")]
        label = info["labels"][int(np.argmax(logits[0]))]
        max_abs = float(np.max(np.abs(logits[0] - golden)))
        report["v2_infer"] = {"label": label, "logits": [round(float(v), 5) for v in logits[0]], "max_abs": max_abs}
        report["checks"]["v2_infer_blue"] = label == "blue" and max_abs < 1e-3
    except Exception as exc:
        report["checks"]["v2_infer_blue"] = False
        report["v2_error"] = f"{type(exc).__name__}: {exc}"

    ok = all(report["checks"].values())
    sys.stdout.write(json.dumps(report) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
