"""Hot swap under load: a good version takes over with zero failed requests; bad ones are rejected."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from bundles import corrupt_copy, drop_in, sample_images
from polling import wait_until

from edgetl.serve.config import ServeConfig
from edgetl.serve.server import BackgroundServer

X = np.random.default_rng(3).normal(size=(2, 3, 32, 32)).astype(np.float32)
INFER = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 32, 32],
                                "data": X.ravel().tolist()}]}).encode()


def _hammer(url: str, stop: threading.Event, log: list, deadline: float) -> None:
    image = sample_images(1, seed=9)[0]
    with httpx.Client(base_url=url, timeout=30) as http:
        i = 0
        while not stop.is_set() and time.monotonic() < deadline:
            i += 1
            try:
                if i % 2:
                    r = http.post("/v2/models/tiny/infer", content=INFER)
                    doc = r.json()
                    log.append((r.status_code, doc.get("model_version"), doc.get("outputs", [{}])[0].get("data")))
                else:
                    r = http.post("/v1/predict", content=image)
                    log.append((r.status_code, r.json().get("model_version"), None))
            except httpx.HTTPError as exc:  # a transport failure is a failed request too
                log.append((0, None, repr(exc)))


def _metadata(url: str) -> dict:
    return httpx.get(f"{url}/v2/models/tiny", timeout=10).json()


@pytest.mark.slow
def test_hot_swap_under_load(tmp_path, serve_bundles) -> None:
    from edgetl.runtime import load

    models = tmp_path / "models"
    shutil.copytree(serve_bundles["v1"], models / "tiny" / "1")
    config = ServeConfig(models_dir=models, port=0, watch_interval=0.2, max_concurrency=2, max_queue=64)
    log: list = []
    stop = threading.Event()
    with BackgroundServer(config) as server:
        url = server.url
        threads = [threading.Thread(target=_hammer, args=(url, stop, log, time.monotonic() + 60)) for _ in range(3)]
        for t in threads:
            t.start()
        try:
            wait_until(lambda: len(log) >= 30, 20, "load before the swap")
            drop_in(serve_bundles["v2"], models, "tiny", "2")
            wait_until(lambda: _metadata(url)["versions"] == ["2"], 20, "version 2 to serve")
            mark = len(log)
            wait_until(lambda: any(v == "2" for _, v, _ in log[mark:]), 20, "requests served by version 2")

            corrupt_copy(serve_bundles["v2"], tmp_path / "corrupt")
            drop_in(tmp_path / "corrupt", models, "tiny", "3")
            drop_in(serve_bundles["bad_golden"], models, "tiny", "4")
            wait_until(lambda: len(_metadata(url)["parameters"]["rejected"]) == 2, 20, "both bad versions rejected")
            mark = len(log)
            wait_until(lambda: len(log) >= mark + 30, 20, "load after the rejections")
        finally:
            stop.set()
            for t in threads:
                t.join(30)
        meta = _metadata(url)
        metrics = httpx.get(f"{url}/metrics", timeout=10).text

    failed = [entry for entry in log if entry[0] != 200]
    assert not failed, f"{len(failed)} of {len(log)} requests failed: {failed[:3]}"
    versions = [v for _, v, _ in log]
    assert "1" in versions and "2" in versions and not {"3", "4"} & set(versions)
    # After the swap only requests already in flight (one per client thread) may finish on version 1.
    assert versions[versions.index("2"):].count("1") <= len(threads)
    assert meta["versions"] == ["2"]
    rejected = {r["version"]: r["reason"] for r in meta["parameters"]["rejected"]}
    assert "sha256 mismatch" in rejected["3"]
    assert "golden smoke test failed" in rejected["4"]
    assert 'edgetl_model_loads_total{model="tiny",result="failed"} 2.0' in metrics
    assert 'edgetl_model_swaps_total{model="tiny"} 1.0' in metrics
    info = 'edgetl_model_info{artifact="model.onnx",backend="onnxruntime",model="tiny",precision="fp32",version="2"}'
    assert info in metrics

    # Each version's answers are that version's model, bit for bit with the in-process predictor.
    for version, bundle in (("1", serve_bundles["v1"]), ("2", serve_bundles["v2"])):
        with load(bundle, device="cpu") as predictor:
            expected = predictor.predict_batch(X)["logits"].ravel()
        answers = [np.asarray(d, np.float32) for s, v, d in log if v == version and d is not None]
        assert answers and all(np.allclose(a, expected, atol=1e-5) for a in answers)


def test_explicit_unload_and_load(tmp_path, serve_bundles) -> None:
    models = tmp_path / "models"
    shutil.copytree(serve_bundles["v1"], models / "tiny")  # unversioned layout: version "1"
    config = ServeConfig(models_dir=models, port=0, watch_interval=0.1)
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.post("/v2/repository/models/tiny/unload").status_code == 200
        assert http.get("/v2/models/tiny/ready").status_code == 503
        assert http.get("/v2/health/ready").status_code == 503
        time.sleep(0.3)  # the watcher must not bring an unloaded model back by itself
        assert http.post("/v2/repository/index").json()[0]["state"] == "UNAVAILABLE"
        assert http.post("/v2/repository/models/tiny/load").json() == {"name": "tiny", "version": "1",
                                                                      "state": "READY"}
        assert http.get("/v2/models/tiny/ready").status_code == 200
        assert http.post("/v2/repository/models/nope/load").status_code == 404
        assert http.post("/v2/repository/models/nope/unload").status_code == 404
        # Removing the directory unloads the model.
        shutil.rmtree(models / "tiny")
        wait_until(lambda: http.get("/v2/models/tiny/ready").status_code == 503, 10, "the model to go away")


def test_single_corrupt_bundle_refuses_to_start(tmp_path, serve_bundles) -> None:
    from edgetl.errors import BundleError

    corrupt_copy(serve_bundles["v1"], tmp_path / "corrupt")
    with pytest.raises(BundleError, match="sha256 mismatch"):
        BackgroundServer(ServeConfig(bundle=tmp_path / "corrupt", port=0, watch_interval=0)).start()
