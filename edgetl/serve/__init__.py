"""The device daemon: `edgetl serve`.

Serves bundles over HTTP with the Open Inference Protocol (KServe v2, Triton-client compatible),
a convenience ``/v1/predict`` image endpoint and Prometheus ``/metrics``; watches a model directory
and hot-swaps verified bundle versions; bounds memory with admission control; talks to systemd.

Torch-free by contract: this package never imports torch, torchvision or timm. The web stack
(starlette, uvicorn, prometheus-client, python-multipart) is imported lazily, from the ``serve`` extra.
"""

from edgetl.serve.config import ServeConfig

__all__ = ["ServeConfig", "run_server"]


def run_server(config: ServeConfig, **kwargs):
    """Serve until SIGTERM/SIGINT and a graceful drain (see `edgetl.serve.server.run_server`)."""
    from edgetl.serve.server import run_server as _run

    return _run(config, **kwargs)
