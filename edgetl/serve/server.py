"""Running the daemon: sockets, uvicorn, model watching, systemd notification, graceful drain.

Lifecycle of `run_server`:
1. bind the TCP or Unix socket (port 0 picks a free port; the Unix socket gets mode 0660);
2. verify and load the models (a single BUNDLE that fails verification stops here with its error);
3. serve; send ``READY=1`` to systemd, then ``WATCHDOG=1`` keep-alives from the event loop;
4. on SIGTERM/SIGINT: readiness turns false, ``STOPPING=1``, no new connections, in-flight requests
   get ``drain_timeout`` seconds to finish, models are closed, and `run_server` returns normally
   (exit code 0), instead of re-raising the signal as uvicorn does by default. At the drain timeout
   a request still waiting for its body gets a JSON 503 (`edgetl.serve.limits.DrainGuard`);
   uvicorn's own timeout is `CANCEL_GRACE_S` later, for requests still computing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgetl import lazy
from edgetl.errors import BadInputError, BundleError
from edgetl.lazy import lazy_import
from edgetl.serve.app import ServeState, create_app
from edgetl.serve.config import ServeConfig
from edgetl.serve.notify import Notifier

uvicorn = lazy_import("uvicorn", "serve", purpose="the HTTP daemon")
log = logging.getLogger("edgetl.serve")

#: Seconds between the drain timeout (stalled uploads get 503) and uvicorn cancelling what still runs:
#: long enough for those 503s to be written before uvicorn's cancellation could preempt them.
CANCEL_GRACE_S = 1.0


@dataclass
class Listening:
    """Where the daemon listens, passed to ``on_listening`` once it accepts requests."""

    url: str
    host: str | None
    port: int | None
    unix_socket: str | None
    models: list[str]


def bind_socket(config: ServeConfig) -> socket.socket:
    """Create and bind the listening socket (uvicorn's asyncio server calls ``listen`` on it)."""
    if config.unix_socket is not None:
        path = config.unix_socket
        if path.exists() or path.is_symlink():
            if not stat.S_ISSOCK(path.lstat().st_mode):
                raise BadInputError(f"--unix-socket {path}: exists and is not a socket; refusing to replace it")
            path.unlink()
        path.parent.mkdir(parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(str(path))
        os.chmod(path, 0o660)
        return sock
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            config.host, config.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as exc:
        raise BadInputError(f"--host {config.host}: cannot resolve ({exc})") from exc
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise BadInputError(f"cannot listen on {config.host}:{config.port}: {exc.strerror}") from exc
    return sock


def _make_server_class(uvicorn: Any) -> type:
    class DrainingServer(uvicorn.Server):
        """uvicorn's server with our readiness, systemd hooks and a clean exit on SIGTERM."""

        def __init__(self, config: Any, state: ServeState, notifier: Notifier, on_started: Callable[[], None]):
            super().__init__(config)
            self.edgetl_state = state
            self.notifier = notifier
            self.on_started = on_started
            self.loop: asyncio.AbstractEventLoop | None = None

        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            self.loop = asyncio.get_running_loop()
            await super().startup(sockets=sockets)
            if self.started and not self.should_exit:
                self.on_started()

        def handle_exit(self, sig: int, frame: Any) -> None:
            state = self.edgetl_state
            if not state.draining:
                log.info("signal %s: draining in-flight requests (up to %.0f s)", sig, state.config.drain_timeout)
                state.draining = True
                self.notifier.stopping()
                if self.loop is not None:  # a signal handler runs between bytecodes: hand over to the loop
                    loop = self.loop
                    loop.call_soon_threadsafe(
                        lambda: loop.call_later(state.config.drain_timeout, state.drain_expired.set)
                    )
            super().handle_exit(sig, frame)

        @contextlib.contextmanager
        def capture_signals(self):
            # Like uvicorn's, but the signal is not re-raised afterwards: a drained daemon exits 0.
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            handled = (signal.SIGINT, signal.SIGTERM)
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in handled}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return DrainingServer


async def serve_async(
    config: ServeConfig,
    *,
    loader: Any = None,
    on_listening: Callable[[Listening], None] | None = None,
    notifier: Notifier | None = None,
    stop_event: asyncio.Event | None = None,
    log_level: str = "warning",
    access_log: bool = False,
) -> None:
    """Serve until a signal (or ``stop_event``) and a drain; see the module docstring.

    Args:
        config: the settings.
        loader: predictor loader (default: `edgetl.runtime.load`).
        on_listening: called once the socket accepts requests with the models loaded.
        notifier: systemd notifier (default: from the environment).
        stop_event: setting it starts the same drain as SIGTERM (in-process use).
        log_level, access_log: uvicorn's own logging.
    """
    lazy.load(uvicorn)  # a missing extra is reported before the socket is bound
    notifier = notifier or Notifier()
    sock = bind_socket(config)
    state = ServeState(config, loader=loader)
    watcher: asyncio.Task | None = None
    keepalive: asyncio.Task | None = None
    try:
        notifier.status("verifying and loading models")
        await state.manager.poll(force=True)
        if config.bundle is not None and config.models_dir is None and not state.manager.ready():
            record = next(iter(state.manager.records.values()), None)
            reason = record.reason if record else "unknown reason"
            raise BundleError(f"cannot serve {config.bundle}: {reason}")
        app = create_app(state)
        uv_config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,
            log_level=log_level,
            access_log=access_log,
            timeout_graceful_shutdown=config.drain_timeout + CANCEL_GRACE_S,
            timeout_keep_alive=5,
            server_header=False,
        )

        if config.unix_socket is not None:
            url, host, port = f"unix:{config.unix_socket}", None, None
        else:
            bound = sock.getsockname()
            host, port = config.host, int(bound[1])
            shown = f"[{host}]" if ":" in host else host
            url = f"http://{shown}:{port}"

        def started() -> None:
            models = state.manager.serving_names()
            log.info("listening on %s, serving %s", url, ", ".join(models) or "no model yet")
            notifier.ready(f"serving {', '.join(models) or 'no model yet'} on {url}")
            if on_listening is not None:
                uds = str(config.unix_socket) if config.unix_socket else None
                on_listening(Listening(url, host, port, uds, models))

        server = _make_server_class(uvicorn)(uv_config, state, notifier, started)
        if config.watch_interval > 0:
            watcher = asyncio.get_running_loop().create_task(state.manager.watch(config.watch_interval))
        if notifier.watchdog_s:
            keepalive = asyncio.get_running_loop().create_task(_keepalive(notifier))
        if stop_event is not None:
            asyncio.get_running_loop().create_task(_stop_on(stop_event, server))
        await server.serve(sockets=[sock])
    finally:
        for task in (watcher, keepalive):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await state.manager.aclose()
        state.executor.shutdown(wait=False, cancel_futures=True)
        sock.close()
        if config.unix_socket is not None:
            with contextlib.suppress(OSError):
                Path(config.unix_socket).unlink()
        log.info("stopped")


async def _keepalive(notifier: Notifier) -> None:
    while True:
        notifier.watchdog()
        await asyncio.sleep(notifier.watchdog_s or 1.0)


async def _stop_on(event: asyncio.Event, server: Any) -> None:
    await event.wait()
    server.handle_exit(signal.SIGTERM, None)


def run_server(config: ServeConfig, **kwargs: Any) -> None:
    """Blocking `serve_async`; returns after a graceful drain."""
    asyncio.run(serve_async(config, **kwargs))


class BackgroundServer:
    """The daemon on a thread of this process (tests and benchmarks): ``with BackgroundServer(cfg) as s: s.url``.

    Args:
        config: the settings (use port 0).
        loader: optional predictor loader.
        timeout: seconds to wait for the server to listen.
    """

    def __init__(self, config: ServeConfig, *, loader: Any = None, timeout: float = 60.0) -> None:
        self.config = config
        self._loader = loader
        self._timeout = timeout
        self._listening = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self.info: Listening | None = None
        self.state: ServeState | None = None
        self._thread = threading.Thread(target=self._main, name="edgetl-serve", daemon=True)

    @property
    def url(self) -> str:
        assert self.info is not None
        return self.info.url

    def _main(self) -> None:
        async def body() -> None:
            self._loop = asyncio.get_running_loop()
            self._stop = asyncio.Event()

            def listening(info: Listening) -> None:
                self.info = info
                self._listening.set()

            await serve_async(
                self.config, loader=self._loader, on_listening=listening,
                notifier=Notifier({}), stop_event=self._stop,
            )

        try:
            asyncio.run(body())
        except BaseException as exc:  # surfaced by start()
            self._error = exc
            self._listening.set()

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._listening.wait(self._timeout):
            raise TimeoutError(f"server did not start within {self._timeout} s")
        if self._error is not None:
            raise self._error
        return self

    def stop(self, timeout: float = 60.0) -> None:
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout)

    def __enter__(self) -> BackgroundServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
