"""The daemon as a real process: systemd notification, SIGTERM drain and exit codes, torch-free imports."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pytest
from polling import wait_until

BODY = json.dumps({"inputs": [{"name": "input", "datatype": "FP32", "shape": [1, 3, 32, 32],
                               "data": np.zeros(3 * 32 * 32).tolist()}]}).encode()


def _serve_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgetl.cli.main", "serve", *args]


def _collect(sock: socket.socket, into: list[str], stop: threading.Event) -> None:
    sock.settimeout(0.1)
    while not stop.is_set():
        try:
            into.append(sock.recv(4096).decode())
        except TimeoutError:
            continue
        except OSError:
            return


@pytest.mark.slow
def test_sd_notify_and_sigterm_drain_under_load(tmp_path, serve_bundles) -> None:
    models = tmp_path / "models"
    shutil.copytree(serve_bundles["v1"], models / "tiny" / "1")
    notify_path = tmp_path / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    messages: list[str] = []
    stop_collect = threading.Event()
    collector = threading.Thread(target=_collect, args=(notify, messages, stop_collect))
    collector.start()
    env = {**os.environ, "NOTIFY_SOCKET": str(notify_path), "WATCHDOG_USEC": "400000"}
    proc = subprocess.Popen(
        _serve_cmd("--models", str(models), "--port", "0", "--json", "--watch-interval", "0.5",
                   "--drain-timeout", "20"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )
    try:
        line = proc.stdout.readline()
        assert line, proc.stderr.read()
        info = json.loads(line)
        assert info["event"] == "listening" and info["models"] == ["tiny"]
        url, port = info["url"], info["port"]
        wait_until(lambda: any("READY=1" in m for m in messages), 10, "READY=1")
        wait_until(lambda: sum("WATCHDOG=1" in m for m in messages) >= 2, 10, "two WATCHDOG=1 keep-alives")
        assert httpx.get(f"{url}/v2/health/ready").status_code == 200

        # Load: clients on fresh connections, plus one request whose body is still arriving at SIGTERM.
        outcomes: list = []
        stop = threading.Event()
        deadline = time.monotonic() + 30

        def hammer() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    r = httpx.post(f"{url}/v2/models/tiny/infer", content=BODY, headers={"connection": "close"},
                                   timeout=30)
                    outcomes.append(r.status_code)
                except httpx.TransportError:
                    outcomes.append("refused")  # not accepted any more: the listening socket is closed
                    return

        threads = [threading.Thread(target=hammer) for _ in range(3)]
        for t in threads:
            t.start()
        wait_until(lambda: len(outcomes) >= 10, 20, "load before SIGTERM")
        slow = socket.create_connection(("127.0.0.1", port), timeout=30)
        head = (f"POST /v2/models/tiny/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(BODY)}\r\n\r\n").encode()
        slow.sendall(head + BODY[:100])
        time.sleep(0.2)
        before = len(outcomes)
        proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        slow.sendall(BODY[100:])  # the in-flight request completes after the signal
        reply = b""
        while b"\r\n\r\n" not in reply or len(reply.split(b"\r\n\r\n", 1)[1]) < 10:
            chunk = slow.recv(65536)
            if not chunk:
                break
            reply += chunk
        slow.close()
        assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
        stop.set()
        for t in threads:
            t.join(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        stop_collect.set()
        collector.join(5)
        notify.close()
    statuses = [o for o in outcomes if o != "refused"]
    assert statuses and all(s == 200 for s in statuses), outcomes
    assert all(o == 200 for o in outcomes[:before])
    assert any("STOPPING=1" in m for m in messages)
    assert "draining" in proc.stderr.read()


def test_cli_refuses_a_corrupt_bundle_with_exit_code_2(tmp_path, serve_bundles) -> None:
    from bundles import corrupt_copy

    corrupt_copy(serve_bundles["v1"], tmp_path / "corrupt")
    result = subprocess.run(_serve_cmd(str(tmp_path / "corrupt"), "--port", "0"), capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 2
    assert "sha256 mismatch" in result.stderr
    nothing = subprocess.run(_serve_cmd(), capture_output=True, text=True, timeout=60)
    assert nothing.returncode == 2 and "nothing to serve" in nothing.stderr


def test_serve_stack_never_imports_torch(serve_bundles) -> None:
    code = f"""
import sys
from edgetl.serve.config import ServeConfig
from edgetl.serve.app import ServeState, create_app
from edgetl.serve.server import serve_async
from edgetl.serve.models import Candidate, default_loader, fingerprint, verify_and_load
import edgetl.cli.serve
from pathlib import Path
config = ServeConfig(bundle=Path({str(serve_bundles["v1"])!r}))
create_app(ServeState(config))
model = verify_and_load(Candidate("tiny", "1", config.bundle, fingerprint(config.bundle)), config, default_loader)
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "torchvision", "timm"))
assert not heavy, heavy
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
