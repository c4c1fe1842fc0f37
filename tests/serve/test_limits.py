"""Back-pressure, auth, micro-batching and the Unix socket, against a running daemon."""

from __future__ import annotations

import json
import logging
import shutil
import socket
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


def test_busy_message_counts_what_the_limit_counts() -> None:
    """34 admitted requests of which none runs yet must not read as "34 queued" beside --max-queue 32."""
    from edgetl.serve.limits import Admission, Overloaded

    admission = Admission(max_concurrency=2, max_queue=32)
    tickets = [admission.ticket() for _ in range(34)]
    for ticket in tickets:
        ticket.__enter__()
    with pytest.raises(Overloaded) as busy, admission.ticket():
        pass
    message = str(busy.value)
    assert "34 queued" not in message, message
    assert "34 requests admitted" in message and "2 running + 32 queued" in message, message
    for ticket in tickets:
        ticket.__exit__(None, None, None)
    assert admission.admitted == 0


def _raw_request(port: int, head: str) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket, timeout: float) -> bytes:
    """Read until the response's body is complete (Content-Length) or the peer closes."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lengths = [int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")]
    length = lengths[0] if lengths else 1 << 30  # no length: read until the peer closes
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return head + b"\r\n\r\n" + body


def _closed_within(sock: socket.socket, seconds: float) -> bool:
    """Keep streaming chunks like a client that ignores the 413; True once the server has closed."""
    deadline = time.monotonic() + seconds
    sock.settimeout(0.2)
    while time.monotonic() < deadline:
        try:
            sock.sendall(b"10000\r\n" + b"0" * 0x10000 + b"\r\n")
            if sock.recv(65536) == b"":
                return True
        except TimeoutError:
            continue
        except OSError:  # reset or broken pipe: closed
            return True
    return False


def test_413_on_chunked_body_closes_the_connection(served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    sock = _raw_request(port, "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: edgetl\r\n"
                              "Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n")
    try:
        for _ in range(20):  # 20 x 64 KiB > the fixture's 1 MiB limit
            try:
                sock.sendall(b"10000\r\n" + b"0" * 0x10000 + b"\r\n")
            except OSError:  # the server answered 413 and closed while we were still sending: as wanted
                break
        reply = _read_response(sock, 10)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b"connection: close" in reply.lower()
        assert _closed_within(sock, 4), "the server kept the connection open after the 413"
    finally:
        sock.close()


def test_stalled_upload_at_drain_timeout_gets_json_503_and_one_log_line(tmp_path, serve_bundles, caplog) -> None:
    config = ServeConfig(models_dir=_repo(tmp_path, serve_bundles["v1"]), port=0, watch_interval=0,
                         drain_timeout=1.0)
    server = BackgroundServer(config).start()
    port = int(server.url.rsplit(":", 1)[1])
    caplog.set_level(logging.INFO)
    sock = _raw_request(port, "POST /v2/models/tiny/infer HTTP/1.1\r\nHost: edgetl\r\n"
                              "Content-Type: application/json\r\nContent-Length: 100000\r\n\r\n{\"inputs\": [")
    try:
        time.sleep(0.3)  # the request is in flight, waiting for the rest of its body
        stopper = threading.Thread(target=server.stop)
        stopper.start()
        reply = _read_response(sock, 15)
        stopper.join(30)
    finally:
        sock.close()
        server.stop()
    assert reply.startswith(b"HTTP/1.1 503"), reply[:300]
    head, body = reply.split(b"\r\n\r\n", 1)
    assert b"application/json" in head.lower()
    assert "drain" in json.loads(body)["error"]
    text = "\n".join(f"{r.name} {r.levelname} {r.getMessage()} {r.exc_text or ''}" for r in caplog.records)
    assert "CancelledError" not in text and "Exception in ASGI application" not in text, text
    stalled = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(stalled) == 1 and stalled[0].exc_info is None, text


class NaNPredictor:
    """The real predictor, whose outputs turn to NaN once ``poisoned`` is set (after the golden check)."""

    def __init__(self, inner) -> None:
        self._inner = inner
        self.poisoned = False

    def predict_batch(self, batch):
        outputs = self._inner.predict_batch(batch)
        if self.poisoned:
            outputs = {name: np.full_like(value, np.nan) for name, value in outputs.items()}
        return outputs

    def predict(self, images, top_k=5):
        if not self.poisoned:
            return self._inner.predict(images, top_k=top_k)
        from edgetl.runtime.results import ClassificationResult

        many = isinstance(images, list)
        result = ClassificationResult(label="0", index=0, score=float("nan"), top_k=[("0", float("nan"))])
        return [result] * len(images) if many else result

    def __getattr__(self, name):
        return getattr(self._inner, name)


def test_model_nan_outputs_never_reach_a_json_response(tmp_path, serve_bundles) -> None:
    from test_client import strict_json

    created: list = []

    def load(bundle, config):
        created.append(NaNPredictor(default_loader(bundle, config)))
        return created[-1]

    x = np.zeros((1, 3, 32, 32), np.float32)
    config = ServeConfig(models_dir=_repo(tmp_path, serve_bundles["v1"]), port=0, watch_interval=0)
    with BackgroundServer(config, loader=load) as server, httpx.Client(base_url=server.url, timeout=30) as http:
        created[-1].poisoned = True
        as_json = http.post("/v2/models/tiny/infer", content=_infer_body(x))
        error = strict_json(as_json.content)["error"]
        assert as_json.status_code == 500 and "output 'logits'" in error and "binary" in error, as_json.text
        # The binary extension carries the model's NaN as it is.
        request = json.loads(_infer_body(x))
        request["outputs"] = [{"name": "logits", "parameters": {"binary_data": True}}]
        binary = http.post("/v2/models/tiny/infer", content=json.dumps(request).encode())
        assert binary.status_code == 200, binary.text
        length = int(binary.headers["inference-header-content-length"])
        assert np.isnan(np.frombuffer(binary.content[length:], "<f4")).all()
        image = http.post("/v1/predict", content=sample_images(1)[0])
        assert image.status_code == 500 and "NaN" in strict_json(image.content)["error"], image.text
        assert http.get("/v2/health/ready").status_code == 200
