"""Open Inference Protocol (KServe v2) tensors: decode requests, encode responses.

Supports the JSON tensor encoding and the binary tensor data extension used by Triton clients: a
request body may hold a JSON header of ``Inference-Header-Content-Length`` bytes followed by the raw
little-endian bytes of every input whose ``parameters.binary_data_size`` is set, and outputs are sent
back the same way when the client asks for ``binary_data`` (per output) or ``binary_data_output``
(per request). Nothing here knows about models or HTTP frameworks, so it is tested on its own.

Numbers: JSON (RFC 8259) has no NaN or infinity, yet Python's ``json`` reads and writes the literals
``NaN``/``Infinity`` and a finite number such as ``1e39`` becomes infinity in FP32. Requests are
therefore checked after decoding: a float input holding NaN, an infinity or a value outside its
datatype's range is refused, naming the tensor (the binary extension included, as its bytes may
encode NaN too). Responses never put a non-finite number into JSON: such an output raises
`NonFiniteOutput`, and only the binary extension carries it.

Nesting: the JSON decoder recurses once per nesting level, so a body of 100 000 ``[`` would exhaust
the stack. The depth is measured first by a linear, non-recursive scan (`json_depth`) and anything
deeper than `MAX_JSON_DEPTH` is refused before decoding.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.errors import BadInputError

#: Protocol datatype -> numpy dtype (little-endian on the wire).
DATATYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("bool"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_NP_TO_DATATYPE = {dt.newbyteorder("=") if dt.itemsize > 1 else dt: name for name, dt in DATATYPES.items()}

#: Largest number of elements one input may declare; bounds memory before any allocation.
MAX_ELEMENTS = 1 << 28
#: Deepest nesting of JSON arrays and objects accepted in a request. A request needs 3 levels plus
#: one per dimension of a tensor sent as nested lists (the flat form needs one).
MAX_JSON_DEPTH = 32

_QUOTE, _BACKSLASH = ord('"'), ord("\\")
_OPENERS, _CLOSERS = (ord("["), ord("{")), (ord("]"), ord("}"))


class ProtocolError(BadInputError):
    """A request that does not follow the protocol (HTTP 400)."""


class NonFiniteOutput(Exception):
    """The model produced NaN or infinite values in an output the client asked for as JSON.

    JSON cannot carry them (RFC 8259), and writing ``NaN`` would break every strict client, so the
    response is an error instead; the binary extension carries the values unchanged.
    """


@dataclass
class InputTensor:
    name: str
    datatype: str
    shape: list[int]
    array: np.ndarray


@dataclass
class RequestedOutput:
    name: str
    binary: bool


@dataclass
class InferRequest:
    """A decoded ``POST .../infer`` body."""

    id: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] = field(default_factory=list)
    binary_output: bool = False
    parameters: dict[str, Any] = field(default_factory=dict)


def datatype_of(array: np.ndarray) -> str:
    """The protocol datatype name of a numpy array."""
    dtype = array.dtype.newbyteorder("=") if array.dtype.itemsize > 1 else array.dtype
    try:
        return _NP_TO_DATATYPE[dtype]
    except KeyError as exc:
        raise ProtocolError(f"cannot send numpy dtype {array.dtype} over the protocol") from exc


def parse_infer_request(body: bytes, header_length: str | int | None = None) -> InferRequest:
    """Decode an inference request body.

    Args:
        body: the whole HTTP body.
        header_length: the ``Inference-Header-Content-Length`` header, when the binary extension is used.

    Raises:
        ProtocolError: malformed JSON, missing fields, inconsistent shapes or sizes.
    """
    json_part, binary = _split_body(body, header_length)
    check_json_depth(json_part)
    try:
        doc = json.loads(json_part.decode("utf-8-sig"))
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"request body is not valid JSON: not UTF-8 ({exc})") from exc
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ProtocolError(f"request body is not valid JSON: {exc}") from exc
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object with an 'inputs' list")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise ProtocolError("request needs a non-empty 'inputs' list")
    params = doc.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError("'parameters' must be an object")

    inputs, offset = [], 0
    for index, raw in enumerate(raw_inputs):
        tensor, used = _parse_input(raw, index, binary, offset)
        inputs.append(tensor)
        offset += used
    if offset != len(binary):
        raise ProtocolError(
            f"binary body holds {len(binary)} bytes after the JSON header but the inputs declare {offset}"
        )

    outputs = []
    raw_outputs = doc.get("outputs") or []
    if not isinstance(raw_outputs, list):
        raise ProtocolError("'outputs' must be a list")
    default_binary = bool(params.get("binary_data_output", False))
    for raw in raw_outputs:
        if not isinstance(raw, dict) or not isinstance(raw.get("name"), str):
            raise ProtocolError("each requested output needs a 'name'")
        out_params = raw.get("parameters") or {}
        if not isinstance(out_params, dict):
            raise ProtocolError(f"output {raw['name']!r}: 'parameters' must be an object")
        outputs.append(RequestedOutput(raw["name"], bool(out_params.get("binary_data", default_binary))))
    request_id = doc.get("id")
    return InferRequest(
        id=str(request_id) if request_id is not None else None,
        inputs=inputs,
        outputs=outputs,
        binary_output=default_binary,
        parameters=params,
    )


def json_depth(text: bytes) -> int:
    """The deepest nesting of arrays and objects in UTF-8 JSON text, found without recursion.

    Vectorised over the positions of quotes and brackets only, so the cost is linear in the body
    and small for the flat lists clients send. Brackets inside strings are skipped: a quote counts
    unless an odd run of backslashes precedes it. In UTF-8 these ASCII bytes never occur inside a
    multi-byte character. On text that is not JSON the result may be wrong, but the decoder refuses
    such text at the first bad byte, before descending into anything the scan did not count.
    """
    buf = np.frombuffer(text, dtype=np.uint8)
    quotes = np.flatnonzero(buf == _QUOTE)
    slashes = np.flatnonzero(buf == _BACKSLASH)
    if quotes.size and slashes.size:
        starts = np.ones(slashes.size, dtype=bool)
        starts[1:] = slashes[1:] != slashes[:-1] + 1
        run_start = np.maximum.accumulate(np.where(starts, slashes, 0))  # first backslash of each one's run
        last = np.searchsorted(slashes, quotes - 1, side="right") - 1  # the last backslash before each quote
        safe = np.maximum(last, 0)
        touching = (last >= 0) & (slashes[safe] == quotes - 1)
        run = np.where(touching, quotes - run_start[safe], 0)
        quotes = quotes[run % 2 == 0]
    brackets = np.flatnonzero(np.isin(buf, _OPENERS + _CLOSERS))
    outside = np.searchsorted(quotes, brackets) % 2 == 0  # an even number of quotes before: not in a string
    brackets = brackets[outside]
    if not brackets.size:
        return 0
    steps = np.where(np.isin(buf[brackets], _OPENERS), 1, -1)
    return int(np.cumsum(steps).max())


def check_json_depth(text: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """Raise `ProtocolError` when ``text`` nests deeper than ``limit``; free when it cannot."""
    if text.count(b"[") + text.count(b"{") <= limit:  # the common flat request: no scan needed
        return
    depth = json_depth(text)
    if depth > limit:
        raise ProtocolError(
            f"request JSON is nested deeper than {limit} levels ({depth}); send tensor data as a flat list"
        )


def _split_body(body: bytes, header_length: str | int | None) -> tuple[bytes, bytes]:
    if header_length is None or header_length == "":
        return body, b""
    try:
        length = int(header_length)
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from exc
    if not 0 < length <= len(body):
        raise ProtocolError(
            f"Inference-Header-Content-Length {length} does not fit the {len(body)}-byte body"
        )
    return body[:length], body[length:]


def _parse_input(raw: Any, index: int, binary: bytes, offset: int) -> tuple[InputTensor, int]:
    if not isinstance(raw, dict):
        raise ProtocolError(f"inputs[{index}] must be an object")
    name = raw.get("name")
    if not isinstance(name, str) or not name:
        raise ProtocolError(f"inputs[{index}] needs a 'name'")
    datatype = raw.get("datatype")
    if datatype not in DATATYPES:
        if datatype == "BYTES":
            raise ProtocolError(f"input {name!r}: BYTES tensors are not supported by this server")
        raise ProtocolError(f"input {name!r}: unknown datatype {datatype!r}; expected one of {sorted(DATATYPES)}")
    shape = raw.get("shape")
    if (
        not isinstance(shape, list)
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers, got {shape!r}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {shape} has {count} elements, over the limit of {MAX_ELEMENTS}")
    dtype = DATATYPES[datatype]
    params = raw.get("parameters") or {}
    if not isinstance(params, dict):
        raise ProtocolError(f"input {name!r}: 'parameters' must be an object")
    size = params.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size < 0:
            raise ProtocolError(f"input {name!r}: binary_data_size must be a non-negative integer")
        if size != count * dtype.itemsize:
            raise ProtocolError(
                f"input {name!r}: binary_data_size {size} != {count} elements x {dtype.itemsize} bytes for {datatype}"
            )
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: body ends before its {size} binary bytes")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        _check_finite(name, datatype, array)
        return InputTensor(name, datatype, list(shape), array), size
    if "data" not in raw:
        raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    data = raw["data"]
    try:
        with np.errstate(over="ignore"):  # 1e39 -> inf in FP32: reported below with the tensor's name
            array = np.asarray(data, dtype=dtype)
    except (TypeError, ValueError, OverflowError) as exc:
        raise ProtocolError(f"input {name!r}: 'data' is not a {datatype} array ({exc})") from exc
    if array.size != count:
        raise ProtocolError(f"input {name!r}: 'data' has {array.size} elements but shape {shape} needs {count}")
    _check_finite(name, datatype, array)
    return InputTensor(name, datatype, list(shape), array.reshape(shape)), 0


def _check_finite(name: str, datatype: str, array: np.ndarray) -> None:
    """Refuse NaN, infinities and numbers the datatype cannot hold: a model turns them into garbage."""
    if array.dtype.kind != "f":
        return
    finite = np.isfinite(array).reshape(-1)
    if finite.all():
        return
    bad = int(finite.size - np.count_nonzero(finite))
    first = int(np.argmin(finite))
    values = "value is" if bad == 1 else "values are"
    raise ProtocolError(
        f"input {name!r}: {bad} {values} NaN, infinite or outside the {datatype} range (the first at flat "
        f"index {first}); send finite numbers only"
    )


def encode_infer_response(
    *,
    model_name: str,
    model_version: str,
    request_id: str | None,
    outputs: dict[str, np.ndarray],
    binary: dict[str, bool],
) -> tuple[bytes, dict[str, str]]:
    """Encode outputs as a response body; returns ``(body, headers)``.

    Args:
        outputs: output name -> array, in the order they are sent.
        binary: output name -> send as binary data (the extension) instead of JSON.

    Raises:
        NonFiniteOutput: an output to be sent as JSON holds NaN or an infinity.
    """
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version}
    if request_id is not None:
        doc["id"] = request_id
    tensors, blobs = [], []
    for name, array in outputs.items():
        array = np.asarray(array)
        entry: dict[str, Any] = {"name": name, "datatype": datatype_of(array), "shape": list(array.shape)}
        if binary.get(name, False):
            little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
            raw = little.tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            blobs.append(raw)
        else:
            if array.dtype.kind == "f":
                finite = np.isfinite(array)
                if not finite.all():
                    raise NonFiniteOutput(
                        f"the model produced {finite.size - np.count_nonzero(finite)} NaN or infinite value(s) in "
                        f"output {name!r}, which JSON cannot carry; request the output with the binary tensor "
                        'extension ("parameters": {"binary_data": true}) to receive them'
                    )
            entry["data"] = array.reshape(-1).tolist()
        tensors.append(entry)
    doc["outputs"] = tensors
    header = json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()
    if not blobs:
        return header, {"content-type": "application/json"}
    return header + b"".join(blobs), {
        "content-type": "application/octet-stream",
        "inference-header-content-length": str(len(header)),
    }
