"""Real clients against a running daemon: tritonclient.http (unchanged) and plain HTTP, plus bad input."""

from __future__ import annotations

import gzip
import io
import json
import struct
import zlib

import httpx
import numpy as np
import pytest
from bundles import sample_images
from PIL import Image


@pytest.fixture(scope="module")
def reference(serve_bundles):
    from edgetl.runtime import load

    predictor = load(serve_bundles["v1"], backend="onnxruntime", device="cpu")
    yield predictor
    predictor.close()


@pytest.fixture(scope="module")
def triton(served):
    import tritonclient.http as th

    client = th.InferenceServerClient(served.url.removeprefix("http://"))
    yield client
    client.close()


def test_tritonclient_health_metadata_and_infer_match_the_predictor(served, triton, reference) -> None:
    import tritonclient.http as th

    assert triton.is_server_live() and triton.is_server_ready()
    assert triton.is_model_ready("tiny") and triton.is_model_ready("tiny", "1")
    assert not triton.is_model_ready("tiny", "7")
    server = triton.get_server_metadata()
    assert server["name"] == "edgetl" and "binary_tensor_data" in server["extensions"]
    meta = triton.get_model_metadata("tiny")
    assert meta["versions"] == ["1"]
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, 3, 32, 32]}]
    assert meta["outputs"] == [{"name": "logits", "datatype": "FP32", "shape": [-1, 10]}]
    assert meta["parameters"]["serving"]["golden"]["passed"] is True
    assert triton.get_model_config("tiny")["input"][0]["dims"] == [3, 32, 32]

    x = np.random.default_rng(0).normal(size=(5, 3, 32, 32)).astype(np.float32)
    expected = reference.predict_batch(x)["logits"]
    for binary_in in (True, False):
        for binary_out in (True, False):
            tensor = th.InferInput("input", list(x.shape), "FP32")
            tensor.set_data_from_numpy(x, binary_data=binary_in)
            result = triton.infer("tiny", [tensor], request_id="abc",
                                  outputs=[th.InferRequestedOutput("logits", binary_data=binary_out)])
            np.testing.assert_allclose(result.as_numpy("logits"), expected, rtol=1e-6, atol=1e-6)
            assert result.get_response()["model_version"] == "1" and result.get_response()["id"] == "abc"
    # No outputs named: all outputs come back binary (the client sets binary_data_output).
    tensor = th.InferInput("input", [1, 3, 32, 32], "FP32")
    tensor.set_data_from_numpy(x[:1])
    result = triton.infer("tiny", [tensor], model_version="1", request_compression_algorithm="gzip")
    np.testing.assert_allclose(result.as_numpy("logits"), expected[:1], rtol=1e-6, atol=1e-6)
    assert triton.get_model_repository_index() == [{"name": "tiny", "state": "READY", "version": "1"}]


def test_v1_predict_matches_predictor_predict(served, reference) -> None:
    images = sample_images(3, seed=5)
    with httpx.Client(base_url=served.url, timeout=30) as http:
        raw = http.post("/v1/predict?top_k=3", content=images[0], headers={"content-type": "image/png"})
        assert raw.status_code == 200, raw.text
        expected = reference.predict(images[0], top_k=3)
        got = raw.json()["results"][0]
        assert got["label"] == expected.label and got["index"] == expected.index
        assert got["score"] == pytest.approx(expected.score, abs=1e-6)
        assert [t["label"] for t in got["top_k"]] == [lab for lab, _ in expected.top_k]
        multi = http.post("/v1/models/tiny/predict", files=[("file", (f"{i}.png", b, "image/png"))
                                                           for i, b in enumerate(images)])
        assert multi.status_code == 200, multi.text
        assert [r["label"] for r in multi.json()["results"]] == [r.label for r in reference.predict(images)]


def strict_json(body: bytes) -> dict:
    """Parse a response as RFC 8259 JSON: NaN, Infinity and -Infinity are not JSON and fail the test."""

    def refuse(literal: str) -> None:
        raise AssertionError(f"response holds {literal}, which is not JSON: {body[:200]!r}")

    return json.loads(body, parse_constant=refuse)


def _png_bomb(width: int = 20000, height: int = 20000) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\0" * (1 + 3 * width) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


def _truncated_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()[: len(buf.getvalue()) // 2]


def _infer_json(shape, datatype="FP32", name="input") -> bytes:
    count = int(np.prod(shape))
    return json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape, "data": [0] * count}]}).encode()


def _infer_values(values: str, shape: list[int]) -> bytes:
    """A JSON infer body whose ``data`` is the literal text ``values`` (JSON-invalid literals included)."""
    head = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "data": [0]}]})
    return head.replace("[0]", f"[{values}]").encode()


def _binary_infer(x: np.ndarray) -> dict:
    header = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                                     "parameters": {"binary_data_size": x.nbytes}}]}).encode()
    return {"content": header + x.astype("<f4").tobytes(),
            "headers": {"inference-header-content-length": str(len(header))}}


_PIXELS = 3 * 32 * 32
_NAN_PIXELS = np.zeros((1, 3, 32, 32), np.float32)
_NAN_PIXELS[0, 1, 2, 3] = np.nan

BAD_REQUESTS = [
    ("truncated jpeg", "/v1/predict", {"content": _truncated_jpeg()}, 400, "cannot decode"),
    ("text as image", "/v1/predict", {"content": b"this is not an image"}, 400, "cannot decode"),
    ("png bomb 20000x20000", "/v1/predict", {"content": _png_bomb()}, 400, "exceeds"),
    ("png over --max-pixels", "/v1/predict", {"content": _png_bomb(8000, 8000)}, 400, "exceeds the limit of"),
    ("empty body", "/v1/predict", {"content": b""}, 400, "empty body"),
    ("multipart without file", "/v1/predict", {"files": {"field": (None, "x")}}, 400, "no file"),
    ("bad top_k", "/v1/predict?top_k=zero", {"content": b"x"}, 400, "top_k"),
    ("wrong shape", "/v2/models/tiny/infer", {"content": _infer_json([1, 3, 16, 16])}, 400, "expects"),
    ("wrong rank", "/v2/models/tiny/infer", {"content": _infer_json([3, 32, 32])}, 400, "expects"),
    ("wrong dtype", "/v2/models/tiny/infer", {"content": _infer_json([1, 3, 32, 32], "INT64")}, 400, "must be FP32"),
    ("wrong input name", "/v2/models/tiny/infer", {"content": _infer_json([1, 3, 32, 32], name="x")}, 400,
     "unknown input"),
    ("too many rows", "/v2/models/tiny/infer", {"content": _infer_json([65, 3, 1, 1])}, 400, "expects"),
    ("malformed json", "/v2/models/tiny/infer", {"content": b'{"inputs": [ {'}, 400, "not valid JSON"),
    ("unknown output", "/v2/models/tiny/infer",
     {"content": json.dumps({"inputs": json.loads(_infer_json([1, 3, 32, 32]))["inputs"],
                             "outputs": [{"name": "nope"}]}).encode()}, 400, "unknown output"),
    ("unknown model", "/v2/models/nope/infer", {"content": _infer_json([1, 3, 32, 32])}, 404, "unknown model"),
    ("unknown version", "/v2/models/tiny/versions/9/infer", {"content": _infer_json([1, 3, 32, 32])}, 404,
     "version 9"),
    ("unknown model metadata", "/v1/models/nope/predict", {"content": b"x"}, 404, "unknown model"),
    ("oversize body", "/v2/models/tiny/infer", {"content": b"0" * (2 * 2**20)}, 413, "exceeds the limit"),
    ("oversize streamed body", "/v1/predict", {"content": iter([b"0" * 2**19] * 4)}, 413, "size limit"),
    ("gzip bomb", "/v2/models/tiny/infer",
     {"content": gzip.compress(b" " * (8 * 2**20)), "headers": {"content-encoding": "gzip"}}, 413, "size limit"),
    ("bad encoding", "/v2/models/tiny/infer", {"content": b"x", "headers": {"content-encoding": "br"}}, 400,
     "Content-Encoding"),
    ("unknown route", "/v3/whatever", {"content": b""}, 404, "Not Found"),
    ("NaN in JSON data", "/v2/models/tiny/infer",
     {"content": _infer_values(", ".join(["0"] * (_PIXELS - 1) + ["NaN"]), [1, 3, 32, 32])}, 400,
     "input 'input': 1 value is NaN, infinite"),
    ("Infinity in JSON data", "/v2/models/tiny/infer",
     {"content": _infer_values(", ".join(["Infinity"] + ["0"] * (_PIXELS - 1)), [1, 3, 32, 32])}, 400,
     "input 'input': 1 value is NaN, infinite"),
    ("-Infinity in JSON data", "/v2/models/tiny/infer",
     {"content": _infer_values(", ".join(["-Infinity"] * 2 + ["0"] * (_PIXELS - 2)), [1, 3, 32, 32])}, 400,
     "input 'input': 2 values are NaN, infinite"),
    ("1e39 overflows FP32", "/v2/models/tiny/infer",
     {"content": _infer_values(", ".join(["1e39"] + ["0"] * (_PIXELS - 1)), [1, 3, 32, 32])}, 400,
     "outside the FP32 range"),
    ("NaN in binary data", "/v2/models/tiny/infer", _binary_infer(_NAN_PIXELS), 400,
     "input 'input': 1 value is NaN, infinite"),
    ("JSON nested 100000 deep", "/v2/models/tiny/infer", {"content": b"[" * 100_000 + b"]" * 100_000}, 400,
     "nested deeper than"),
    ("deep nesting inside data", "/v2/models/tiny/infer",
     {"content": _infer_values("[" * 5000 + "0" + "]" * 5000, [1])}, 400, "nested deeper than"),
]


@pytest.mark.parametrize(
    ("what", "path", "kwargs", "status", "message"), BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS]
)
def test_bad_input_gets_a_4xx_with_a_reason(served, what, path, kwargs, status, message) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        response = http.post(path, **kwargs)
        assert response.status_code == status, (what, response.text)
        assert message in strict_json(response.content)["error"], response.json()
        # The server keeps serving after every bad request.
        assert http.get("/v2/health/ready").status_code == 200
        ok = http.post("/v2/models/tiny/infer", content=_infer_json([1, 3, 32, 32]))
        assert ok.status_code == 200, ok.text


def test_metrics_count_requests_per_model_and_status(served) -> None:
    with httpx.Client(base_url=served.url, timeout=30) as http:
        http.post("/v2/models/tiny/infer", content=_infer_json([1, 3, 32, 32]))
        http.post("/v2/models/tiny/infer", content=b"{")
        text = http.get("/metrics").text
    assert 'edgetl_requests_total{endpoint="infer",model="tiny",status="200"}' in text
    assert 'edgetl_requests_total{endpoint="infer",model="tiny",status="400"}' in text
    assert 'edgetl_request_duration_seconds_bucket{endpoint="infer",le="0.1",model="tiny",status="200"}' in text
    info = 'edgetl_model_info{artifact="model.onnx",backend="onnxruntime",model="tiny",precision="fp32",version="1"}'
    assert f"{info} 1.0" in text
    assert "edgetl_queue_depth 0.0" in text
    assert 'edgetl_model_loads_total{model="tiny",result="ok"} 1.0' in text
