"""``edgetl serve``: the device daemon (Open Inference Protocol over HTTP, hot swap, systemd)."""

from __future__ import annotations

import logging
from pathlib import Path

import click

from edgetl.cli.common import config_option, emit_json, hand_logging_to_root, handle_errors, json_option, say
from edgetl.cli.options import device_option, precision_option
from edgetl.preprocess import DEFAULT_MAX_PIXELS


@click.command()
@click.argument("bundle", required=False, type=click.Path(file_okay=False, path_type=Path))
@click.option("--models", "models", type=click.Path(file_okay=False, path_type=Path),
              help="Model repository to watch: DIR/<name>/ or DIR/<name>/<version>/ bundles.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind (0.0.0.0 exposes it).")
@click.option("--port", default=8000, show_default=True, type=int, help="TCP port (0 picks a free one).")
@click.option("--unix-socket", type=click.Path(dir_okay=False, path_type=Path),
              help="Listen on this Unix socket instead of TCP (mode 0660).")
@click.option("--token-file", type=click.Path(dir_okay=False, path_type=Path),
              help="File with a bearer token required on every request except the health probes.")
@click.option("--max-concurrency", default=2, show_default=True, type=int, help="Inferences running at once.")
@click.option("--max-queue", default=32, show_default=True, type=int,
              help="Requests waiting beyond those; more get 503 + Retry-After.")
@click.option("--max-body-mb", default=16.0, show_default=True, type=float, help="Request body limit.")
@click.option("--max-pixels", default=DEFAULT_MAX_PIXELS, show_default=True, type=int,
              help="Largest decoded image (width x height); larger ones get 400 before decoding.")
@click.option("--max-images", default=16, show_default=True, type=int, help="Files per multipart /v1/predict.")
@click.option("--batch-max", default=1, show_default=True, type=int,
              help="Dynamic micro-batching: rows per batch (1 = off).")
@click.option("--batch-delay-ms", default=2.0, show_default=True, type=float,
              help="How long a request waits for others to batch with.")
@click.option("--backend", default="auto", show_default=True,
              type=click.Choice(["auto", "onnxruntime", "tensorrt", "torch"]), help="Inference backend.")
@precision_option("best", help="Artifact precision to serve.")
@device_option("auto")
@click.option("--watch-interval", default=2.0, show_default=True, type=float,
              help="Seconds between model directory polls (0: no watching).")
@click.option("--require-golden", is_flag=True, help="Reject bundles without golden samples.")
@click.option("--drain-timeout", default=30.0, show_default=True, type=float,
              help="Seconds in-flight requests get to finish on SIGTERM.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.option("--access-log", is_flag=True, help="Log every request (uvicorn access log).")
@config_option
@json_option
@handle_errors
def command(bundle: Path | None, models: Path | None, host: str, port: int, unix_socket: Path | None,
            token_file: Path | None, max_concurrency: int, max_queue: int, max_body_mb: float, max_pixels: int,
            max_images: int, batch_max: int, batch_delay_ms: float, backend: str, precision: str, device: str,
            watch_interval: float, require_golden: bool, drain_timeout: float, log_level: str, access_log: bool,
            as_json: bool) -> None:
    """Serve BUNDLE (or every bundle under --models DIR) over HTTP until SIGTERM.

    \b
    Open Inference Protocol (KServe v2; tritonclient.http works unchanged):
      GET  /v2/health/live  /v2/health/ready  /v2  /v2/models/NAME[/versions/V][/ready]
      POST /v2/models/NAME/infer            (JSON tensors or the binary tensor extension)
      POST /v2/repository/index  /v2/repository/models/NAME/load|unload
    For people:  curl --data-binary @cat.jpg http://127.0.0.1:8000/v1/predict
    Metrics:     GET /metrics (Prometheus)
    New bundle versions dropped into --models are verified (hashes, load, golden outputs) before they
    replace the serving one; a failing one is rejected and the old one keeps serving.
    With --json, one JSON line on stdout says where it listens once it is ready.
    """
    from edgetl.serve.config import ServeConfig
    from edgetl.serve.server import run_server

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    hand_logging_to_root()
    config = ServeConfig(
        bundle=bundle, models_dir=models, host=host, port=port, unix_socket=unix_socket, token_file=token_file,
        max_concurrency=max_concurrency, max_queue=max_queue, max_body_mb=max_body_mb, max_pixels=max_pixels,
        max_images=max_images, batch_max=batch_max, batch_delay_ms=batch_delay_ms, backend=backend,
        precision=precision, device=device, watch_interval=watch_interval, require_golden=require_golden,
        drain_timeout=drain_timeout,
    )
    if host not in ("127.0.0.1", "::1", "localhost") and unix_socket is None and token_file is None:
        say(f"warning: listening on {host} without --token-file: anyone who can reach this port can use it",
            fg="yellow")

    def listening(info) -> None:
        if as_json:
            # One compact line, so a supervisor can read it while the daemon keeps running.
            doc = {"event": "listening", "url": info.url, "host": info.host, "port": info.port,
                   "unix_socket": info.unix_socket, "models": info.models}
            emit_json(doc, indent=None)

    run_server(config, on_listening=listening, log_level="warning" if log_level != "debug" else "info")
