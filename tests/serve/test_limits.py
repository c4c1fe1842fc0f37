"""Back-pressure, auth, micro-batching and the Unix socket, against a running daemon."""

from __future__ import annotations

import json
import shutil
import threading
import time

import httpx
import numpy as np
import pytest
from bundles import sample_images

from edgetl.serve.config import ServeConfig
from edgetl.serve.models import default_loader
from edgetl.serve.server import BackgroundServer


class SlowPredictor:
    """The real predictor, with every batch taking at least ``delay`` seconds (a busy device)."""

    def __init__(self, inner, delay: float) -> None:
        self._inner, self._delay = inner, delay
        self.batches: list[int] = []

    def predict_batch(self, batch):
        self.batches.append(len(batch))
        time.sleep(self._delay)
        return self._inner.predict_batch(batch)

    def __getattr__(self, name):
        return getattr(self._inner, name)


def _slow_loader(delay: float, created: list):
    def load(bundle, config):
        predictor = SlowPredictor(default_loader(bundle, config), delay)
        created.append(predictor)
        return predictor

    return load


def _infer_body(x: np.ndarray) -> bytes:
    return json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                   "data": x.ravel().tolist()}]}).encode()


def _repo(tmp_path, bundle):
    models = tmp_path / "models"
    shutil.copytree(bundle, models / "tiny" / "1")
    return models


def _concurrently(n: int, fn) -> list:
    results: list = [None] * n
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait(10)
        results[i] = fn(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


def test_full_queue_gets_503_with_retry_after(tmp_path, serve_bundles) -> None:
    config = ServeConfig(models_dir=_repo(tmp_path, serve_bundles["v1"]), port=0, watch_interval=0,
                         max_concurrency=1, max_queue=1)
    body = _infer_body(np.zeros((1, 3, 32, 32), np.float32))
    with BackgroundServer(config, loader=_slow_loader(0.4, [])) as server:
        def call(_: int) -> httpx.Response:
            return httpx.post(f"{server.url}/v2/models/tiny/infer", content=body, timeout=30)

        responses = _concurrently(6, call)
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 2 and codes.count(503) >= 1 and set(codes) <= {200, 503}, codes
        busy = next(r for r in responses if r.status_code == 503)
        assert int(busy.headers["retry-after"]) >= 1
        assert "retry" in busy.json()["error"]
        # Once the burst is over the server serves normally again.
        assert call(0).status_code == 200
        text = httpx.get(f"{server.url}/metrics").text
        assert 'edgetl_requests_total{endpoint="infer",model="tiny",status="503"}' in text


def test_micro_batching_merges_concurrent_requests(tmp_path, serve_bundles) -> None:
    from edgetl.runtime import load

    created: list = []
    config = ServeConfig(models_dir=_repo(tmp_path, serve_bundles["v1"]), port=0, watch_interval=0,
                         max_concurrency=1, max_queue=32, batch_max=8, batch_delay_ms=50)
    xs = [np.random.default_rng(i).normal(size=(1 + i % 2, 3, 32, 32)).astype(np.float32) for i in range(8)]
    with BackgroundServer(config, loader=_slow_loader(0.1, created)) as server:
        responses = _concurrently(8, lambda i: httpx.post(
            f"{server.url}/v2/models/tiny/infer", content=_infer_body(xs[i]), timeout=30))
        images = _concurrently(4, lambda i: httpx.post(
            f"{server.url}/v1/predict", content=sample_images(4, seed=i)[i], timeout=30))
    with load(serve_bundles["v1"], device="cpu") as reference:
        for x, response in zip(xs, responses):
            assert response.status_code == 200, response.text
            got = np.asarray(response.json()["outputs"][0]["data"], np.float32).reshape(len(x), 10)
            np.testing.assert_allclose(got, reference.predict_batch(x)["logits"], atol=1e-5)
        for i, response in enumerate(images):
            assert response.status_code == 200, response.text
            expected = reference.predict(sample_images(4, seed=i)[i])
            assert response.json()["results"][0]["label"] == expected.label
    served_batches = created[-1].batches[1:]  # the first batch is the golden check at load
    assert max(served_batches) > 2, served_batches  # several requests ran as one batch
    assert sum(served_batches) == sum(len(x) for x in xs)  # images go through Predictor.predict


def test_bearer_token(tmp_path, serve_bundles) -> None:
    import tritonclient.http as th

    token = "s3cret-token-for-tests-0123456789"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    config = ServeConfig(models_dir=_repo(tmp_path, serve_bundles["v1"]), port=0, watch_interval=0,
                         token_file=token_file)
    with BackgroundServer(config) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        assert http.get("/v2/health/live").status_code == 200  # probes stay open
        assert http.get("/v2/health/ready").status_code == 200
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": token}):
            denied = http.get("/v2/models/tiny", headers=headers)
            assert denied.status_code == 401 and "bearer token" in denied.json()["error"]
            assert denied.headers["www-authenticate"].startswith("Bearer")
        assert http.post("/v1/predict", content=b"x").status_code == 401
        assert http.get("/metrics").status_code == 401
        assert http.get("/v2/models/tiny", headers={"authorization": f"Bearer {token}"}).status_code == 200
        client = th.InferenceServerClient(server.url.removeprefix("http://"))
        tensor = th.InferInput("input", [1, 3, 32, 32], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 3, 32, 32), np.float32))
        result = client.infer("tiny", [tensor], headers={"Authorization": f"Bearer {token}"})
        assert result.as_numpy("logits").shape == (1, 10)
        client.close()


def test_short_token_is_refused(tmp_path, serve_bundles) -> None:
    from edgetl.errors import BadInputError

    (tmp_path / "token").write_text("short")
    with pytest.raises(BadInputError, match="at least 16"):
        ServeConfig(bundle=serve_bundles["v1"], token_file=tmp_path / "token").read_token()


def test_unix_socket(tmp_path, serve_bundles) -> None:
    sock = tmp_path / "edgetl.sock"
    config = ServeConfig(bundle=serve_bundles["v1"], unix_socket=sock, watch_interval=0)
    with BackgroundServer(config) as server:
        assert server.url == f"unix:{sock}" and (sock.stat().st_mode & 0o777) == 0o660
        transport = httpx.HTTPTransport(uds=str(sock))
        with httpx.Client(transport=transport, base_url="http://edgetl", timeout=30) as http:
            assert http.get("/v2/health/ready").status_code == 200
            response = http.post("/v2/models/tiny/infer", content=_infer_body(np.zeros((1, 3, 32, 32), np.float32)))
            assert response.status_code == 200 and response.json()["model_version"] == "1"
    assert not sock.exists()
