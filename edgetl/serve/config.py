"""The daemon's settings in one dataclass, shared by the CLI, the app and the tests."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from edgetl.errors import BadInputError
from edgetl.preprocess import DEFAULT_MAX_PIXELS


@dataclass
class ServeConfig:
    """Settings of `edgetl serve`.

    Args:
        bundle: serve this one bundle directory (name from its manifest).
        models_dir: a model repository to watch: ``DIR/<name>/manifest.json`` (one unversioned bundle)
            or ``DIR/<name>/<version>/manifest.json`` (numeric versions; the highest verified one serves).
        host, port: TCP address; 127.0.0.1 by default, port 0 picks a free port.
        unix_socket: listen on this Unix socket path instead of TCP.
        token_file: file holding a bearer token that every request (except health probes) must carry.
        max_concurrency: inferences running at once; ``max_queue``: requests allowed to wait beyond them.
        max_body_mb: request body limit; ``max_pixels``: decoded image limit (decompression bombs).
        max_images: images per multipart ``/v1/predict`` request.
        max_batch_rows: largest batch dimension accepted in one tensor request.
        batch_max, batch_delay_ms: dynamic micro-batching (``batch_max`` 1 turns it off).
        backend, precision, device: passed to `edgetl.runtime.load`.
        watch_interval: seconds between model-directory polls (0 disables watching).
        require_golden: reject bundles without golden samples instead of loading them with a warning.
        drain_timeout: seconds in-flight requests get to finish after SIGTERM.
    """

    bundle: Path | None = None
    models_dir: Path | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    unix_socket: Path | None = None
    token_file: Path | None = None
    max_concurrency: int = 2
    max_queue: int = 32
    max_body_mb: float = 16.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_images: int = 16
    max_batch_rows: int = 64
    batch_max: int = 1
    batch_delay_ms: float = 2.0
    backend: str = "auto"
    precision: str = "best"
    device: str = "auto"
    watch_interval: float = 2.0
    require_golden: bool = False
    drain_timeout: float = 30.0

    def __post_init__(self) -> None:
        if self.bundle is None and self.models_dir is None:
            raise BadInputError("nothing to serve", hint="pass a bundle directory or --models DIR")
        checks = [
            (self.max_concurrency >= 1, "--max-concurrency must be >= 1"),
            (self.max_queue >= 0, "--max-queue must be >= 0"),
            (self.max_body_mb > 0, "--max-body-mb must be > 0"),
            (self.max_pixels > 0, "--max-pixels must be > 0"),
            (self.batch_max >= 1, "--batch-max must be >= 1"),
            (self.batch_delay_ms >= 0, "--batch-delay-ms must be >= 0"),
            (self.watch_interval >= 0, "--watch-interval must be >= 0"),
            (0 <= self.port <= 65535, "--port must be in 0..65535"),
            (self.max_images >= 1, "--max-images must be >= 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)
        for name in ("bundle", "models_dir", "unix_socket", "token_file"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, Path(value))
        if self.models_dir is not None and not self.models_dir.is_dir():
            raise BadInputError(f"--models {self.models_dir}: not a directory")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2**20)

    def read_token(self) -> str | None:
        """The bearer token from ``token_file`` (first line, stripped), or None when auth is off."""
        if self.token_file is None:
            return None
        try:
            token = self.token_file.read_text(encoding="utf-8").strip().splitlines()
        except OSError as exc:
            raise BadInputError(f"--token-file {self.token_file}: cannot read ({exc})") from exc
        if not token or len(token[0].strip()) < 16:
            raise BadInputError(
                f"--token-file {self.token_file}: the token must be at least 16 characters",
                hint="generate one with: python -c 'import secrets; print(secrets.token_urlsafe(32))'",
            )
        return token[0].strip()
