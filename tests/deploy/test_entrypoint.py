"""The container entrypoint and health probe, run for real on the host.

`docker/entrypoint.sh` is executed with stand-ins for the two programs it drives: an ``edgetl`` on
PATH that records each call, and a ``python`` (EDGETL_PYTHON) that answers "does TensorRT import?"
and "does this bundle already have a matching engine?" as the test says. The stand-ins record the
exact argv, so a wrong call (a missing flag, a compile where none is due) fails the test.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"
HEALTHCHECK = ROOT / "docker" / "healthcheck.py"

FAKE_EDGETL = """#!/bin/sh
# Record the call (argv as JSON), then behave as the environment says.
python3 -c 'import json, os, sys; open(os.environ["CALLS"], "a").write(json.dumps({"argv": sys.argv[1:]}) + "\\n")' "$@"
if [ "$1" = "compile" ]; then
    [ -n "${FAKE_COMPILE_FAIL:-}" ] && exit 4
    sleep "${FAKE_COMPILE_SECONDS:-0}"
    touch "$2/.engine"
fi
exit 0
"""

FAKE_PYTHON = """#!/bin/sh
# `python -c "import tensorrt"`: FAKE_TRT=1 says it imports. `python - BUNDLE` (engine check, script
# on stdin): an engine matches when FAKE_ENGINE=1 or a compile left BUNDLE/.engine behind.
if [ "$1" = "-c" ]; then
    case "$2" in *"import tensorrt"*) [ "${FAKE_TRT:-0}" = 1 ] && exit 0 || exit 1 ;; esac
    exit 99
fi
if [ "$1" = "-" ]; then
    cat > /dev/null
    if [ "${FAKE_ENGINE:-0}" = 1 ] || [ -e "$2/.engine" ]; then echo "engine ok for $2"; exit 0; fi
    echo "the bundle has no TensorRT engines"; exit 1
fi
exit 98
"""


@pytest.fixture()
def env(tmp_path: Path) -> dict:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "edgetl").write_text(FAKE_EDGETL)
    (bin_dir / "edgetl").chmod(0o755)
    (bin_dir / "fake-python").write_text(FAKE_PYTHON)
    (bin_dir / "fake-python").chmod(0o755)
    models = tmp_path / "models"
    (models / "cats").mkdir(parents=True)
    (models / "cats" / "manifest.json").write_text("{}")
    (models / "dogs" / "2").mkdir(parents=True)  # versioned layout: <name>/<version>/
    (models / "dogs" / "2" / "manifest.json").write_text("{}")
    (models / "notes").mkdir()  # not a bundle
    return {
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "EDGETL_MODELS": str(models),
        "EDGETL_PYTHON": str(bin_dir / "fake-python"),
        "CALLS": str(tmp_path / "calls.jsonl"),
        "HOME": str(tmp_path),
    }


def run(env: dict, *args: str, **extra: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    proc = subprocess.run(["sh", str(ENTRYPOINT), *args], env={**env, **extra}, capture_output=True, text=True,
                          timeout=60)
    calls_file = Path(env["CALLS"])
    calls = [json.loads(line) for line in calls_file.read_text().splitlines()] if calls_file.exists() else []
    return proc, calls


def serve_argv(env: dict, *more: str) -> list[str]:
    return ["serve", "--models", env["EDGETL_MODELS"], "--host", "0.0.0.0", "--port", "8000", *more]


def test_without_tensorrt_it_just_serves(env):
    proc, calls = run(env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [c["argv"] for c in calls] == [serve_argv(env)]
    assert "TensorRT not available" in proc.stdout


def test_with_tensorrt_it_compiles_each_bundle_lacking_an_engine_then_serves(env):
    proc, calls = run(env, FAKE_TRT="1")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    models = env["EDGETL_MODELS"]
    assert [c["argv"] for c in calls] == [
        ["compile", f"{models}/cats", "--precision", "best"],
        ["compile", f"{models}/dogs/2", "--precision", "best"],
        serve_argv(env),
    ]
    assert proc.stdout.count("engine ready for") == 2


def test_matching_engines_are_not_rebuilt(env):
    proc, calls = run(env, FAKE_TRT="1", FAKE_ENGINE="1")
    assert [c["argv"] for c in calls] == [serve_argv(env)]
    assert "engine found for" in proc.stdout


def test_containers_sharing_a_volume_compile_each_bundle_once(env):
    """Two entrypoints start together on one volume: the second waits for the lock, then finds engines."""
    extra = {"FAKE_TRT": "1", "FAKE_COMPILE_SECONDS": "1"}
    procs = [subprocess.Popen(["sh", str(ENTRYPOINT)], env={**env, **extra}, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    calls = [json.loads(line)["argv"] for line in Path(env["CALLS"]).read_text().splitlines()]
    compiles = sorted(c[1] for c in calls if c[0] == "compile")
    models = env["EDGETL_MODELS"]
    assert compiles == [f"{models}/cats", f"{models}/dogs/2"]
    assert sum(c[0] == "serve" for c in calls) == 2
    assert sum(out.count("engine found for") for out in outputs) == 2


def test_failed_compile_still_serves_with_onnxruntime(env):
    proc, calls = run(env, FAKE_TRT="1", FAKE_COMPILE_FAIL="1")
    assert proc.returncode == 0
    assert calls[-1]["argv"] == serve_argv(env)
    assert "engine compilation failed" in proc.stdout and "exit 4" in proc.stdout


def test_compile_can_be_disabled_and_tuned(env):
    _, calls = run(env, FAKE_TRT="1", EDGETL_COMPILE="0")
    assert [c["argv"] for c in calls] == [serve_argv(env)]
    Path(env["CALLS"]).unlink()
    _, calls = run(env, FAKE_TRT="1", EDGETL_COMPILE_ARGS="--precision int8 --workspace 512")
    assert calls[0]["argv"][2:] == ["--precision", "int8", "--workspace", "512"]


def test_flags_config_and_env_args_reach_serve(env, tmp_path: Path):
    config = tmp_path / "serve.yaml"
    config.write_text("max_concurrency: 4\n")
    _, calls = run(env, "--max-queue", "8", EDGETL_CONFIG=str(config), EDGETL_SERVE_ARGS="--access-log",
                   EDGETL_PORT="9000")
    argv = calls[-1]["argv"]
    assert argv[:7] == ["serve", "--models", env["EDGETL_MODELS"], "--host", "0.0.0.0", "--port", "9000"]
    assert argv[7:] == ["--config", str(config), "--max-queue", "8", "--access-log"]


def test_missing_config_file_is_a_warning_not_a_crash(env, tmp_path: Path):
    proc, calls = run(env, EDGETL_CONFIG=str(tmp_path / "absent.yaml"))
    assert proc.returncode == 0
    assert calls[-1]["argv"] == serve_argv(env)
    assert "does not exist" in proc.stdout


def test_a_command_runs_instead_of_the_daemon(env):
    proc, calls = run(env, "edgetl", "info", "--json")
    assert proc.returncode == 0
    assert [c["argv"] for c in calls] == [["info", "--json"]]


def test_missing_models_directory_exits_2_with_a_hint(env, tmp_path: Path):
    proc, calls = run(env, EDGETL_MODELS=str(tmp_path / "nowhere"))
    assert proc.returncode == 2
    assert "mount a volume" in proc.stdout
    assert calls == []


def test_serve_replaces_the_shell(env, tmp_path: Path):
    """exec: the daemon gets the entrypoint's PID, so SIGTERM from the runtime reaches it directly."""
    script = tmp_path / "bin" / "edgetl"
    script.write_text('#!/bin/sh\necho "$$" > "$CALLS.pid"\n')
    proc = subprocess.Popen(["sh", str(ENTRYPOINT)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    proc.wait(timeout=30)
    assert int(Path(env["CALLS"] + ".pid").read_text()) == proc.pid


# -- health probe --------------------------------------------------------------------------------------

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def daemon_stub():
    state = {"ready": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            code = state["ready"] if self.path == "/v2/health/ready" else 404
            self.send_response(code)
            self.end_headers()

        def log_message(self, *args):
            pass

    port = _free_port()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield port, state
    server.shutdown()
    server.server_close()


def _probe(port: int) -> int:
    return subprocess.run([sys.executable, str(HEALTHCHECK)], env={**os.environ, "EDGETL_PORT": str(port)},
                          capture_output=True, timeout=30).returncode


def test_healthcheck_follows_readiness(daemon_stub):
    port, state = daemon_stub
    assert _probe(port) == 0
    state["ready"] = 503
    assert _probe(port) == 1


def test_healthcheck_fails_when_nothing_listens():
    assert _probe(_free_port()) == 1
