"""The Open Inference Protocol codec on its own: JSON and binary tensors, both directions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgetl.serve.protocol import ProtocolError, encode_infer_response, parse_infer_request


def _binary_request(x: np.ndarray, extra: dict | None = None) -> tuple[bytes, int]:
    header = json.dumps({
        "inputs": [{"name": "input", "datatype": "FP32", "shape": list(x.shape),
                    "parameters": {"binary_data_size": x.nbytes}}],
        **(extra or {}),
    }).encode()
    return header + x.astype("<f4").tobytes(), len(header)


def test_json_and_binary_inputs_decode_to_the_same_array() -> None:
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 2, 2)
    body = json.dumps({"id": "r1", "inputs": [{"name": "input", "datatype": "FP32", "shape": [2, 3, 2, 2],
                                                "data": x.ravel().tolist()}]}).encode()
    parsed = parse_infer_request(body)
    assert parsed.id == "r1" and parsed.inputs[0].array.shape == (2, 3, 2, 2)
    blob, length = _binary_request(x)
    parsed_bin = parse_infer_request(blob, str(length))
    np.testing.assert_array_equal(parsed.inputs[0].array, parsed_bin.inputs[0].array)


@pytest.mark.parametrize(
    ("body", "header", "message"),
    [
        (b"{not json", None, "not valid JSON"),
        (b"[]", None, "JSON object"),
        (b'{"inputs": []}', None, "non-empty"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [2], "data": [1]}]}', None, "needs 2"),
        (b'{"inputs": [{"name": "input", "datatype": "FP99", "shape": [1], "data": [1]}]}', None, "unknown datatype"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [-1], "data": []}]}', None, "non-negative"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [65536, 65536, 64], "data": []}]}', None,
         "over the limit"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": ["x"]}]}', None, "not a FP32"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}]}', "999", "does not fit"),
        (b'{"inputs": [{"name": "input", "datatype": "FP32", "shape": [1], "data": [1]}]}', "abc", "integer"),
    ],
)
def test_malformed_requests_are_protocol_errors(body: bytes, header: str | None, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_infer_request(body, header)


def test_binary_sizes_must_match_shape_and_body() -> None:
    x = np.zeros((1, 3, 2, 2), np.float32)
    blob, length = _binary_request(x)
    with pytest.raises(ProtocolError, match="after the JSON header"):
        parse_infer_request(blob + b"\0\0\0\0", str(length))
    with pytest.raises(ProtocolError, match="body ends"):
        parse_infer_request(blob[:-4], str(length))
    bad = blob.replace(f'"binary_data_size": {x.nbytes}'.encode(), b'"binary_data_size": 8')
    with pytest.raises(ProtocolError, match="binary_data_size 8"):
        parse_infer_request(bad, str(length - len(str(x.nbytes)) + 1))


def test_response_binary_and_json_outputs() -> None:
    logits = np.array([[1.5, -2.0]], np.float32)
    body, headers = encode_infer_response(model_name="m", model_version="3", request_id="7",
                                          outputs={"logits": logits}, binary={"logits": True})
    length = int(headers["inference-header-content-length"])
    doc = json.loads(body[:length])
    assert doc["model_version"] == "3" and doc["id"] == "7"
    assert doc["outputs"][0]["parameters"]["binary_data_size"] == 8
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(1, 2), logits)
    body, headers = encode_infer_response(model_name="m", model_version="3", request_id=None,
                                          outputs={"logits": logits}, binary={})
    assert headers == {"content-type": "application/json"}
    assert json.loads(body)["outputs"][0] == {"name": "logits", "datatype": "FP32", "shape": [1, 2],
                                              "data": [1.5, -2.0]}


@pytest.mark.parametrize(
    ("text", "depth"),
    [
        (b'{"a": [1, [2, {"b": []}]]}', 5),
        (b'{"s": "[[[[[[", "t": [1]}', 2),  # brackets inside a string do not count
        (b'{"s": "\\"[[[[", "t": [[1]]}', 3),  # an escaped quote does not end the string
        (b'{"s": "\\\\", "t": [[[1]]]}', 4),  # an escaped backslash does not escape the closing quote
        (b'{"s": "\\\\\\"[[[[\\\\", "t": []}', 2),
        (b"[" + b"[]," * 999 + b"[]]", 2),
        (b"", 0),
    ],
)
def test_json_depth_skips_strings(text: bytes, depth: int) -> None:
    from edgetl.serve.protocol import json_depth

    json.loads(text or b"0")  # each case is valid JSON
    assert json_depth(text) == depth


def test_json_depth_limit_and_time() -> None:
    import time

    from edgetl.serve.protocol import MAX_JSON_DEPTH

    data = "[" * (MAX_JSON_DEPTH - 3) + "0" + "]" * (MAX_JSON_DEPTH - 3)
    ok = f'{{"inputs": [{{"name": "input", "datatype": "FP32", "shape": [1], "data": {data}}}]}}'.encode()
    assert parse_infer_request(ok).inputs[0].array.shape == (1,)
    with pytest.raises(ProtocolError, match=f"nested deeper than {MAX_JSON_DEPTH}"):
        parse_infer_request(ok.replace(b"[0]", b"[[0]]"))
    start = time.perf_counter()
    for hostile in (b"[" * 8_000_000, b'"\\' * 4_000_000 + b"[" * 100, b'["' * 4_000_000):
        with pytest.raises(ProtocolError):
            parse_infer_request(hostile)
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_outputs_are_not_written_as_json(value: float) -> None:
    from edgetl.serve.protocol import NonFiniteOutput

    logits = np.array([[1.0, value]], np.float32)
    with pytest.raises(NonFiniteOutput, match="output 'logits'"):
        encode_infer_response(model_name="m", model_version="1", request_id=None, outputs={"logits": logits},
                              binary={})
    body, headers = encode_infer_response(model_name="m", model_version="1", request_id=None,
                                          outputs={"logits": logits}, binary={"logits": True})
    length = int(headers["inference-header-content-length"])
    np.testing.assert_array_equal(np.frombuffer(body[length:], "<f4").reshape(1, 2), logits)
