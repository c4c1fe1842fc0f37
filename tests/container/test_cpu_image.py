"""Build the CPU image with podman on a locally made Debian base and serve a real bundle from it.

Runs scripts/container_smoke.sh (see its header for the steps) and asserts on its JSON summary.
Skipped, with the reason, where podman/runc (or debootstrap, when no base image is cached yet) are
not installed, or when not root: scripts/install_container_tools.sh installs them. Cold (debootstrap
+ build) about 5 minutes on 2 cores, warm (cached base and wheels) about 1.5; EDGETL_SKIP_CONTAINER=1
skips it on purpose.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "container_smoke.sh"
CACHE = Path(os.environ.get("EDGETL_CI_CACHE", "/var/cache/edgetl-ci"))

pytestmark = [pytest.mark.container, pytest.mark.slow]


def _missing() -> str | None:
    if os.environ.get("EDGETL_SKIP_CONTAINER") == "1":
        return "EDGETL_SKIP_CONTAINER=1"
    if os.name != "posix" or os.geteuid() != 0:
        return "needs root (podman with vfs storage as root)"
    tools = [t for t in ("podman", "runc") if shutil.which(t) is None]
    cached_base = any(CACHE.glob("base-*.tar"))
    if shutil.which("debootstrap") is None and not cached_base:
        tools.append("debootstrap")
    if tools:
        return f"container tools not installed: {', '.join(tools)} (run scripts/install_container_tools.sh)"
    return None


@pytest.fixture(scope="module")
def summary(tmp_path_factory: pytest.TempPathFactory) -> dict:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    pytest.importorskip("tritonclient.http", reason="the smoke client needs tritonclient[http]")
    pytest.importorskip("onnx", reason="the demo bundle is written with onnx")
    out = tmp_path_factory.mktemp("smoke") / "summary.json"
    proc = subprocess.run(["bash", str(SCRIPT), "--summary", str(out)], capture_output=True, text=True,
                          timeout=1500, cwd=ROOT)
    assert out.exists(), f"no summary (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    doc = json.loads(out.read_text())
    doc["_exit"] = proc.returncode
    doc["_log"] = proc.stderr[-4000:]
    return doc


def test_image_builds_small(summary):
    assert summary["image_bytes"] > 0
    # Base (Debian + python3, ~130 MB) + ONNX Runtime CPU, numpy, Pillow and the daemon.
    assert summary["image_bytes"] < 450e6, summary["image_bytes"]


def test_ready_and_both_prediction_apis_answer(summary):
    checks = summary["checks"]
    assert checks["ready"], summary["_log"]
    assert checks["v1_predict_red"], summary["client"]
    assert checks["v2_infer_blue"], summary["client"]
    assert summary["client"]["v2_infer"]["max_abs"] < 1e-3
    assert checks["healthcheck"], "the image's HEALTHCHECK failed against the running daemon"


def test_sigterm_drains_and_exits_zero(summary):
    assert summary["exit_code"] == "0", summary["_log"]
    assert summary["stop_seconds"] < 30
    assert summary["passed"] and summary["_exit"] == 0
