"""systemd service notification (``sd_notify``) without a dependency.

systemd passes ``NOTIFY_SOCKET`` (a Unix datagram socket path; a leading ``@`` means the abstract
namespace) to ``Type=notify`` services. The daemon sends ``READY=1`` once it listens with its models
loaded, ``WATCHDOG=1`` at half the ``WatchdogSec`` period (``WATCHDOG_USEC``) from its event loop, so
a wedged loop stops the keep-alives and systemd restarts it, ``STATUS=...`` lines, and ``STOPPING=1``
when it drains. Outside systemd every call is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger("edgetl.serve")


class Notifier:
    """Sends notifications to the socket named by ``NOTIFY_SOCKET`` (read once, at construction).

    Args:
        environ: the environment to read (``os.environ`` by default; tests pass their own).
    """

    def __init__(self, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        path = env.get("NOTIFY_SOCKET", "")
        self.address: str | bytes | None = None
        if path.startswith("@"):
            self.address = b"\0" + path[1:].encode()
        elif path.startswith("/"):
            self.address = path
        self.watchdog_s = _watchdog_seconds(env)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """Send ``KEY=VALUE`` lines in one datagram; returns whether it was delivered."""
        if self.address is None:
            return False
        payload = "\n".join(fields).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
                sock.connect(self.address)
                sock.sendall(payload)
            return True
        except OSError as exc:  # systemd gone or socket unreachable: never fatal
            log.warning("sd_notify to %r failed: %s", self.address, exc)
            return False

    def ready(self, status: str = "") -> bool:
        return self.send("READY=1", *([f"STATUS={status}"] if status else []))

    def stopping(self, status: str = "draining in-flight requests") -> bool:
        return self.send("STOPPING=1", f"STATUS={status}")

    def status(self, text: str) -> bool:
        return self.send(f"STATUS={text}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")


def _watchdog_seconds(env: dict[str, str] | os._Environ) -> float | None:
    """The keep-alive period (half of ``WatchdogSec``), or None when the watchdog is off or not ours."""
    usec = env.get("WATCHDOG_USEC")
    if not usec:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 2e6 if value > 0 else None
