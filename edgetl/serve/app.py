"""The HTTP application: Open Inference Protocol (KServe v2) endpoints, ``/v1/predict``, ``/metrics``.

Endpoints:
    GET  /v2/health/live | /v2/health/ready          probes (never need the token)
    GET  /v2                                         server metadata
    GET  /v2/models/{name}[/versions/{v}]            model metadata (+ serving version, rejected bundles)
    GET  /v2/models/{name}[/versions/{v}]/ready      model readiness
    GET  /v2/models/{name}[/versions/{v}]/config     a Triton-style model configuration
    POST /v2/models/{name}[/versions/{v}]/infer      tensors as JSON or with the binary tensor extension
    POST /v2/repository/index                        models and their states
    POST /v2/repository/models/{name}/load|unload    explicit repository control
    POST /v1/predict[?model=&top_k=]                 an image (raw bytes or multipart) -> labels/boxes
    POST /v1/models/{name}/predict                   the same for a named model
    GET  /metrics                                    Prometheus exposition

Errors always have the protocol's shape ``{"error": "..."}``: 400 bad input, 401 missing token,
404 unknown model, 413 body too large (the connection is then closed), 503 busy (with
``Retry-After``), not ready, or shutting down; 500 when the model produced NaN or infinite values
that a JSON response cannot carry. Every JSON body is RFC 8259 JSON: no ``NaN`` or ``Infinity``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from edgetl import __version__
from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.preprocess import load_image
from edgetl.serve.config import ServeConfig
from edgetl.serve.limits import (
    DRAIN_EXPIRED_MESSAGE,
    Admission,
    BodyLimitMiddleware,
    BodyTooLarge,
    DrainExpired,
    DrainGuard,
    MicroBatcher,
    Overloaded,
    _send_error,
)
from edgetl.serve.metrics import UNKNOWN_MODEL, ServeMetrics
from edgetl.serve.models import LoadedModel, ModelManager, ModelNotFound, VerificationError
from edgetl.serve.protocol import NonFiniteOutput, ProtocolError, encode_infer_response, parse_infer_request

applications = lazy_import("starlette.applications", "serve", purpose="the HTTP daemon")
responses = lazy_import("starlette.responses", "serve", purpose="the HTTP daemon")
routing = lazy_import("starlette.routing", "serve", purpose="the HTTP daemon")
log = logging.getLogger("edgetl.serve")

PUBLIC_PATHS = ("/v2/health/live", "/v2/health/ready")
_PARSE_IN_THREAD_BYTES = 64 * 1024


class ServeState:
    """Everything one daemon instance shares between requests.

    Args:
        config: the settings.
        loader: predictor loader passed to `ModelManager` (tests may pass their own).
    """

    def __init__(self, config: ServeConfig, loader: Any = None) -> None:
        self.config = config
        self.metrics = ServeMetrics()
        kwargs = {"loader": loader} if loader is not None else {}
        self.manager = ModelManager(config, self.metrics, **kwargs)
        self.admission = Admission(config.max_concurrency, config.max_queue)
        self.executor = ThreadPoolExecutor(max_workers=config.max_concurrency + 2, thread_name_prefix="edgetl-infer")
        self.token = config.read_token()
        self.draining = False
        #: Set once the drain timeout has passed after SIGTERM (see `DrainGuard`).
        self.drain_expired = asyncio.Event()
        self.metrics.queue_depth.set_function(lambda: self.admission.queued)
        self.metrics.inflight.set_function(lambda: self.admission.running)

    @property
    def batching(self) -> bool:
        return self.config.batch_max > 1

    def batcher(self, model: LoadedModel, kind: str) -> MicroBatcher:
        def factory() -> MicroBatcher:
            run = _tensor_batch_runner(model) if kind == "tensor" else _image_batch_runner(model)
            return MicroBatcher(
                run,
                max_batch=self.config.batch_max,
                max_delay_s=self.config.batch_delay_ms / 1000.0,
                admission=self.admission,
                executor=self.executor,
                on_batch=lambda rows: self.metrics.batch_rows.labels(model.name).observe(rows),
            )

        return model.batcher(kind, factory)

    async def run(self, fn: Any, *args: Any) -> Any:
        """Run ``fn`` in an execution slot of the inference pool."""
        async with self.admission.slot():
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)


def _tensor_batch_runner(model: LoadedModel):
    def run(items: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        batch = items[0] if len(items) == 1 else np.concatenate(items)
        outputs = model.predictor.predict_batch(batch)
        results, start = [], 0
        for item in items:
            stop = start + len(item)
            results.append({k: v[start:stop] for k, v in outputs.items()})
            start = stop
        return results

    return run


def _image_batch_runner(model: LoadedModel):
    def run(items: list[tuple[list[Any], int]]) -> list[list[Any]]:
        images = [img for imgs, _ in items for img in imgs]
        top_k = max(k for _, k in items)
        predicted = model.predictor.predict(images, top_k=top_k)
        results, start = [], 0
        for imgs, k in items:
            chunk = predicted[start : start + len(imgs)]
            start += len(imgs)
            results.append([_trim_top_k(r, k) for r in chunk])
        return results

    return run


def _trim_top_k(result: Any, k: int) -> Any:
    if dataclasses.is_dataclass(result) and hasattr(result, "top_k"):
        return dataclasses.replace(result, top_k=list(result.top_k)[:k])
    return result


# -- responses -------------------------------------------------------------------------------------

def _json(doc: Any, status: int = 200, headers: dict[str, str] | None = None) -> Any:
    try:
        body = json.dumps(doc, default=_jsonable, allow_nan=False).encode()
    except ValueError:  # a NaN or an infinity in a descriptive field (a metric): JSON has none, send null
        plain = json.loads(json.dumps(doc, default=_jsonable))
        body = json.dumps(_finite_or_none(plain), allow_nan=False).encode()
    return responses.Response(body, status_code=status, media_type="application/json", headers=headers)


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite_or_none(v) for v in value]
    return value


def _count_non_finite(value: Any) -> int:
    if isinstance(value, float):
        return 0 if math.isfinite(value) else 1
    if isinstance(value, dict):
        return sum(_count_non_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_count_non_finite(v) for v in value)
    return 0


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _error_response(exc: BaseException) -> tuple[Any, int]:
    """Map an exception to the protocol's error document and a status code."""
    headers = None
    if isinstance(exc, Overloaded):
        status, headers = 503, {"Retry-After": str(exc.retry_after)}
    elif isinstance(exc, BodyTooLarge):
        # Close the connection: the rest of an over-limit body is never read, and a client still
        # streaming it would otherwise keep the connection (and uvicorn's keep-alive) open.
        status, headers = 413, {"Connection": "close"}
        exc = BadInputError("request body exceeds the size limit (--max-body-mb)")
    elif isinstance(exc, DrainExpired):
        log.warning("drain timeout: a request whose body had not arrived got 503")
        status, headers = 503, {"Connection": "close"}
        exc = RuntimeError(DRAIN_EXPIRED_MESSAGE)
    elif isinstance(exc, NonFiniteOutput):
        log.warning("%s", exc)
        status = 500
    elif isinstance(exc, ModelNotFound):
        status = 404
    elif isinstance(exc, (BadInputError, VerificationError)):
        status = 400
    else:
        log.exception("internal error while serving a request", exc_info=exc)
        status = 500
        exc = RuntimeError(f"internal error: {type(exc).__name__}: {exc}")
    message = exc.message if isinstance(exc, BadInputError) else str(exc)
    if isinstance(exc, BadInputError) and exc.hint:
        message = f"{message} (hint: {exc.hint})"
    return _json({"error": message}, status, headers), status


# -- the app ---------------------------------------------------------------------------------------

def create_app(state: ServeState) -> Any:
    """Build the ASGI app (Starlette) wrapped in the auth and body-limit middlewares.

    Args:
        state: the shared `ServeState`; the caller runs ``state.manager.poll`` / ``watch`` and closes it.
    """
    Starlette, Route = applications.Starlette, routing.Route

    config, manager, metrics = state.config, state.manager, state.metrics
    Response = responses.Response

    def endpoint(kind: str, model_param: str | None = "name"):
        """Wrap a handler: errors -> protocol error documents, and request metrics per model."""

        def wrap(handler):
            async def route(request):
                start = time.perf_counter()
                model = request.path_params.get(model_param, "") if model_param else ""
                try:
                    response = await handler(request)
                    status = response.status_code
                except Exception as exc:
                    response, status = _error_response(exc)
                if kind == "predict":
                    label = getattr(request.state, "model", None) or UNKNOWN_MODEL
                elif model_param:
                    label = model if model in manager.records else UNKNOWN_MODEL
                else:
                    label = ""
                metrics.observe_request(label, kind, status, time.perf_counter() - start)
                return response

            return route

        return wrap

    # -- health and metadata --------------------------------------------------------------------
    @endpoint("health", None)
    async def live(request):
        return _json({"live": True})

    @endpoint("health", None)
    async def ready(request):
        if state.draining:
            return _json({"ready": False, "error": "shutting down"}, 503)
        if not manager.ready():
            return _json({"ready": False, "error": "no model is serving yet"}, 503)
        return _json({"ready": True})

    @endpoint("metadata", None)
    async def server_metadata(request):
        return _json(
            {"name": "edgetl", "version": __version__, "extensions": ["binary_tensor_data", "model_repository"]},
        )

    @endpoint("metadata")
    async def model_metadata(request):
        record = manager.get(request.path_params["name"])
        serving = record.serving
        version = request.path_params.get("version")
        if version and (serving is None or version != serving.version):
            raise ModelNotFound(f"model {record.name!r} version {version} is not serving")
        doc: dict[str, Any] = {"name": record.name, "versions": [serving.version] if serving else []}
        if serving is not None:
            doc["platform"] = f"edgetl_{serving.describe.get('backend', 'unknown')}"
            doc["inputs"] = [serving.input.to_dict()]
            doc["outputs"] = [o.to_dict() for o in serving.outputs]
        doc["parameters"] = {
            "state": "READY" if serving else record.state,
            "task": serving.task if serving else None,
            "labels": serving.labels if serving else None,
            "serving": serving.summary() if serving else None,
            "reason": record.reason or None,
            "rejected": list(record.failures),
        }
        return _json(doc)

    @endpoint("metadata")
    async def model_ready(request):
        record = manager.get(request.path_params["name"])
        version = request.path_params.get("version")
        ok = record.serving is not None and version in (None, record.serving.version) and not state.draining
        return _json({"name": record.name, "ready": ok}, 200 if ok else 503)

    @endpoint("metadata")
    async def model_config(request):
        with manager.acquire(request.path_params["name"], request.path_params.get("version")) as model:
            dims = lambda shape: shape[1:]  # noqa: E731
            doc = {
                "name": model.name,
                "platform": f"edgetl_{model.describe.get('backend', 'unknown')}",
                "max_batch_size": config.max_batch_rows,
                "input": [{"name": model.input.name, "data_type": "TYPE_FP32", "dims": dims(model.input.shape)}],
                "output": [
                    {"name": o.name, "data_type": f"TYPE_{o.datatype}", "dims": dims(o.shape)} for o in model.outputs
                ],
                "dynamic_batching": {"max_queue_delay_microseconds": int(config.batch_delay_ms * 1000)}
                if state.batching
                else None,
            }
        return _json(doc)

    # -- inference --------------------------------------------------------------------------------
    @endpoint("infer")
    async def infer(request):
        with manager.acquire(request.path_params["name"], request.path_params.get("version")) as model:
            body = await _read_body(request, config.max_body_bytes)
            header_length = request.headers.get("inference-header-content-length")
            if len(body) > _PARSE_IN_THREAD_BYTES:
                loop = asyncio.get_running_loop()
                parsed = await loop.run_in_executor(None, parse_infer_request, body, header_length)
            else:
                parsed = parse_infer_request(body, header_length)
            batch = _check_inputs(parsed.inputs, model, config.max_batch_rows)
            output_names = [o.name for o in model.outputs]
            requested = parsed.outputs or []
            unknown = [o.name for o in requested if o.name not in output_names]
            if unknown:
                raise ProtocolError(f"unknown output(s) {unknown}; the model has {output_names}")
            with state.admission.ticket():
                if state.batching:
                    outputs = await state.batcher(model, "tensor").submit(batch, rows=len(batch))
                else:
                    outputs = await state.run(model.predictor.predict_batch, batch)
            if requested:
                selected = {o.name: outputs[o.name] for o in requested}
                binary = {o.name: o.binary for o in requested}
            else:
                selected = {n: outputs[n] for n in output_names if n in outputs}
                binary = dict.fromkeys(selected, parsed.binary_output)
            payload, headers = encode_infer_response(
                model_name=model.name, model_version=model.version, request_id=parsed.id,
                outputs=selected, binary=binary,
            )
        media = headers.pop("content-type")
        return Response(payload, media_type=media, headers=headers)

    async def predict_images(request, name: str | None):
        name = name or request.query_params.get("model") or _default_model(manager)
        request.state.model = name if name in manager.records else UNKNOWN_MODEL
        top_k = _int_param(request.query_params.get("top_k"), "top_k", default=5, low=1, high=1000)
        payloads = await _image_payloads(request, config)
        with manager.acquire(name) as model, state.admission.ticket():
            loop = asyncio.get_running_loop()
            images = await loop.run_in_executor(state.executor, _decode_images, payloads, config.max_pixels)
            top_k = min(top_k, max(1, len(model.labels)))
            if state.batching:
                results = await state.batcher(model, "image").submit((images, top_k), rows=len(images))
            else:
                results = await state.run(_predict_images, model, images, top_k)
            dicts = _result_dicts(results)
            bad = _count_non_finite(dicts)
            if bad:
                raise NonFiniteOutput(
                    f"model {model.name!r} produced {bad} NaN or infinite number(s) in its results (scores or "
                    "boxes), which JSON cannot carry; the model is broken for this input"
                )
            return _json(
                {"model_name": model.name, "model_version": model.version, "task": model.task, "results": dicts},
            )

    @endpoint("predict", None)
    async def predict(request):
        return await predict_images(request, None)

    @endpoint("predict", "name")
    async def predict_named(request):
        return await predict_images(request, request.path_params["name"])

    # -- repository -------------------------------------------------------------------------------
    @endpoint("repository", None)
    async def repository_index(request):
        return _json(manager.index())

    @endpoint("repository")
    async def repository_load(request):
        record = await manager.load(request.path_params["name"])
        return _json({"name": record.name, "version": record.serving.version, "state": "READY"})

    @endpoint("repository")
    async def repository_unload(request):
        await manager.unload(request.path_params["name"])
        return _json({"name": request.path_params["name"], "state": "UNAVAILABLE"})

    # -- metrics ------------------------------------------------------------------------------------
    async def metrics_endpoint(request):
        text, content_type = metrics.render()
        return Response(text, headers={"content-type": content_type})

    base = "/v2/models/{name}"
    versioned = "/v2/models/{name}/versions/{version}"
    routes = [
        Route("/v2/health/live", live, methods=["GET"]),
        Route("/v2/health/ready", ready, methods=["GET"]),
        Route("/v2", server_metadata, methods=["GET"]),
        Route("/v2/repository/index", repository_index, methods=["POST"]),
        Route("/v2/repository/models/{name}/load", repository_load, methods=["POST"]),
        Route("/v2/repository/models/{name}/unload", repository_unload, methods=["POST"]),
        Route("/v1/predict", predict, methods=["POST"]),
        Route("/v1/models/{name}/predict", predict_named, methods=["POST"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    for prefix in (base, versioned):
        routes += [
            Route(prefix, model_metadata, methods=["GET"]),
            Route(prefix + "/ready", model_ready, methods=["GET"]),
            Route(prefix + "/config", model_config, methods=["GET"]),
            Route(prefix + "/infer", infer, methods=["POST"]),
        ]

    async def not_found(request, exc):
        status = getattr(exc, "status_code", 404)
        detail = getattr(exc, "detail", None) or "not found"
        return _json({"error": f"{request.method} {request.url.path}: {detail}"}, status)

    app = Starlette(routes=routes, exception_handlers={404: not_found, 405: not_found})
    app.state.serve = state
    wrapped: Any = BodyLimitMiddleware(app, config.max_body_bytes)
    if state.token is not None:
        wrapped = BearerAuthMiddleware(wrapped, state.token)
    return DrainGuard(wrapped, state.drain_expired, lambda: state.draining)


# -- request helpers -------------------------------------------------------------------------------

async def _read_body(request: Any, limit: int) -> bytes:
    body = await request.body()
    encoding = request.headers.get("content-encoding", "").lower()
    if encoding in ("", "identity"):
        return body
    if encoding not in ("gzip", "deflate"):
        raise BadInputError(f"unsupported Content-Encoding {encoding!r}; use gzip, deflate or none")
    # Bounded decompression: a small compressed body must not expand past the body limit.
    inflater = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        data = inflater.decompress(body, limit + 1)
    except zlib.error as exc:
        raise BadInputError(f"cannot {encoding}-decode the request body: {exc}") from exc
    if len(data) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge()
    return data


def _check_inputs(inputs: list[Any], model: LoadedModel, max_rows: int) -> np.ndarray:
    """The one NCHW float32 batch of a request, checked against the model's input signature."""
    spec = model.input
    if len(inputs) != 1:
        raise ProtocolError(f"model {model.name!r} takes exactly one input ({spec.name!r}), got {len(inputs)}")
    tensor = inputs[0]
    if tensor.name != spec.name:
        raise ProtocolError(f"unknown input {tensor.name!r}; model {model.name!r} takes {spec.name!r}")
    if tensor.datatype != spec.datatype:
        raise ProtocolError(f"input {spec.name!r} must be {spec.datatype}, got {tensor.datatype}")
    shape = tensor.shape
    expected = spec.shape
    if len(shape) != len(expected) or any(e != -1 and e != s for e, s in zip(expected[1:], shape[1:])):
        raise ProtocolError(f"input {spec.name!r} has shape {shape}; the model expects {expected} (-1: any)")
    rows = shape[0]
    if not 1 <= rows <= max_rows:
        raise ProtocolError(f"batch size {rows} is outside 1..{max_rows}")
    return np.ascontiguousarray(tensor.array, dtype=np.float32)


def _default_model(manager: ModelManager) -> str:
    names = manager.serving_names()
    if len(names) == 1:
        return names[0]
    if not names:
        raise ModelNotFound("no model is serving")
    raise BadInputError(f"several models serve ({', '.join(names)}); pass ?model=NAME or /v1/models/NAME/predict")


def _int_param(raw: str | None, name: str, *, default: int, low: int, high: int) -> int:
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError as exc:
        raise BadInputError(f"{name} must be an integer, got {raw!r}") from exc
    if not low <= value <= high:
        raise BadInputError(f"{name} must be in {low}..{high}, got {value}")
    return value


async def _image_payloads(request: Any, config: ServeConfig) -> list[tuple[str, bytes]]:
    """The request's images as ``(what an error message calls it, bytes)``."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        try:
            form = await request.form(max_files=config.max_images, max_fields=config.max_images + 8)
        except BodyTooLarge:
            raise
        except Exception as exc:  # malformed multipart or over the file count
            raise BadInputError(f"cannot parse the multipart body: {exc}") from exc
        payloads = []
        for key, value in form.multi_items():
            if hasattr(value, "read"):
                label = f"part {key!r}" + (f" ({value.filename})" if getattr(value, "filename", None) else "")
                payloads.append((label, await value.read()))
        await form.close()
        if not payloads:
            raise BadInputError("the multipart body holds no file; send the image as a file field")
        return payloads
    body = await _read_body(request, config.max_body_bytes)
    if not body:
        raise BadInputError("empty body: send the image bytes (JPEG, PNG...) or a multipart form with a file")
    return [("the request body", body)]


def _decode_images(payloads: list[tuple[str, bytes]], max_pixels: int) -> list[Any]:
    return [load_image(payload, max_pixels=max_pixels, name=label) for label, payload in payloads]


def _predict_images(model: LoadedModel, images: list[Any], top_k: int) -> list[Any]:
    return list(model.predictor.predict(images, top_k=top_k))


def _result_dicts(results: list[Any]) -> list[dict[str, Any]]:
    from edgetl.runtime.results import result_to_dict

    return [result_to_dict(r) for r in results]


class BearerAuthMiddleware:
    """ASGI middleware: every path except the health probes needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: Any, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") in PUBLIC_PATHS:
            await self.app(scope, receive, send)
            return
        given = b""
        for key, value in scope.get("headers", []):
            if key == b"authorization":
                given = value
                break
        if not hmac.compare_digest(given, self._expected):
            await _send_error(
                send, 401, "missing or wrong bearer token (Authorization: Bearer <token>)",
                headers=[(b"www-authenticate", b'Bearer realm="edgetl"')],
            )
            return
        await self.app(scope, receive, send)
