"""Prometheus metrics of the daemon, on a registry of its own (no global state shared between apps).

Names (all prefixed ``edgetl_``):
- ``requests_total{model,endpoint,status}`` and ``request_duration_seconds{model,endpoint,status}``
- ``inference_batch_rows{model}``: rows per executed batch (micro-batching at work)
- ``queue_depth`` / ``inflight``: requests waiting / running
- ``model_loads_total{model,result}``: verified-and-loaded (``ok``) or rejected (``failed``) bundles
- ``model_swaps_total{model}``: hot swaps to a new version; ``model_unloads_total{model}``
- ``model_ready{model}`` and ``model_info{model,version,backend,precision,artifact}``
- ``model_last_failure_timestamp_seconds{model}``
"""

from __future__ import annotations

from typing import Any

from edgetl import lazy
from edgetl.lazy import lazy_import

prometheus_client = lazy_import("prometheus_client", "serve", purpose="the /metrics endpoint")

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
UNKNOWN_MODEL = "_unknown"


class ServeMetrics:
    """The metric families of one daemon instance."""

    def __init__(self) -> None:
        prom = self._prom = lazy.load(prometheus_client)
        self.registry = prom.CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = prom.Counter(
            "edgetl_requests", "HTTP requests by model, endpoint and status code",
            ["model", "endpoint", "status"], registry=r,
        )
        self.latency = prom.Histogram(
            "edgetl_request_duration_seconds", "Request latency by model, endpoint and status code",
            ["model", "endpoint", "status"], buckets=LATENCY_BUCKETS, registry=r,
        )
        self.batch_rows = prom.Histogram(
            "edgetl_inference_batch_rows", "Rows per executed inference batch",
            ["model"], buckets=(1, 2, 4, 8, 16, 32, 64), registry=r,
        )
        self.queue_depth = prom.Gauge("edgetl_queue_depth", "Admitted requests waiting for a slot", registry=r)
        self.inflight = prom.Gauge("edgetl_inflight", "Inferences running now", registry=r)
        self.loads = prom.Counter(
            "edgetl_model_loads", "Bundle versions verified and loaded (ok) or rejected (failed)",
            ["model", "result"], registry=r,
        )
        self.swaps = prom.Counter("edgetl_model_swaps", "Hot swaps to a new model version", ["model"], registry=r)
        self.unloads = prom.Counter("edgetl_model_unloads", "Models unloaded", ["model"], registry=r)
        self.ready = prom.Gauge("edgetl_model_ready", "1 while the model serves", ["model"], registry=r)
        self.info = prom.Gauge(
            "edgetl_model_info", "The version and inference backend serving each model (value 1)",
            ["model", "version", "backend", "precision", "artifact"], registry=r,
        )
        self.last_failure = prom.Gauge(
            "edgetl_model_last_failure_timestamp_seconds", "When a bundle of this model last failed verification",
            ["model"], registry=r,
        )
        self._info_labels: dict[str, tuple[str, ...]] = {}

    def observe_request(self, model: str, endpoint: str, status: int, seconds: float) -> None:
        labels = (model, endpoint, str(status))
        self.requests.labels(*labels).inc()
        self.latency.labels(*labels).observe(seconds)

    def set_serving(self, model: str, version: str, describe: dict[str, Any]) -> None:
        old = self._info_labels.pop(model, None)
        if old is not None:
            self.info.remove(*old)
        labels = (
            model,
            version,
            str(describe.get("backend", "?")),
            str(describe.get("precision", "?")),
            str(describe.get("artifact", "?")).rsplit("/", 1)[-1],
        )
        self.info.labels(*labels).set(1)
        self._info_labels[model] = labels
        self.ready.labels(model).set(1)

    def set_unloaded(self, model: str) -> None:
        old = self._info_labels.pop(model, None)
        if old is not None:
            self.info.remove(*old)
        self.ready.labels(model).set(0)

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
