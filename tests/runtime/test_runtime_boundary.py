"""The device boundary: the runtime works without torch, torchvision or timm.

1. In a fresh interpreter, importing the device-side packages imports none of them.
2. (slow) In a fresh virtualenv holding only edgetl and the runtime extra's distributions, a bundle
   loads and predicts, through the library and the ``edgetl`` command.
"""

from __future__ import annotations

import importlib.metadata as md
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FORBIDDEN = ("torch", "torchvision", "timm")
DEVICE_MODULES = ["edgetl.runtime", "edgetl.runtime.predictor", "edgetl.runtime.bench", "edgetl.bundle",
                  "edgetl.bundle.check", "edgetl.bundle.pack", "edgetl.runtime.info", "edgetl.runtime.golden",
                  "edgetl.runtime.extensions", "edgetl.preprocess",
                  "edgetl.cli.predict", "edgetl.cli.bench", "edgetl.cli.info", "edgetl.cli.bundle"]


def test_device_modules_never_import_torch(colour_bundle: Path, colour_dir: Path) -> None:
    modules = list(DEVICE_MODULES)
    if importlib.util.find_spec("edgetl.serve") is not None:
        modules.append("edgetl.serve")
    code = (
        "import importlib, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "import edgetl.runtime\n"
        f"p = edgetl.runtime.load({str(colour_bundle)!r})\n"
        f"assert p.predict({str(colour_dir / 'red_0.png')!r}).label == 'red'\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r})\n"
        "print(bad)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def _runtime_distributions() -> list[str]:
    """edgetl's core dependencies plus the runtime extra, closed over their own requirements."""
    edgetl_reqs = md.requires("edgetl") or []
    wanted = [r for r in edgetl_reqs if "extra ==" not in r or re.search(r"extra == .runtime.", r)]
    queue = [re.split(r"[ ;<>=!~\[]", r, maxsplit=1)[0] for r in wanted]
    seen: dict[str, md.Distribution] = {}
    while queue:
        name = queue.pop()
        key = name.lower().replace("_", "-")
        if key in seen:
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            continue
        seen[key] = dist
        for req in dist.requires or []:
            if "extra ==" in req:
                continue
            marker_ok = ";" not in req or "python_version" in req or "platform" in req or "sys_platform" in req
            if marker_ok:
                queue.append(re.split(r"[ ;<>=!~\[(]", req, maxsplit=1)[0])
    return sorted(seen)


def _link_distribution(dist: md.Distribution, site: Path) -> None:
    tops = {Path(str(f)).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
    base = Path(dist.locate_file(""))
    for top in tops:
        src, dst = base / top, site / top
        if src.exists() and not dst.exists():
            dst.symlink_to(src)


@pytest.mark.slow
def test_runtime_from_fresh_virtualenv_with_only_the_runtime_extra(
    tmp_path: Path, colour_bundle: Path, colour_dir: Path
) -> None:
    """Offline and fast: edgetl is built into a wheel and pip-installed with --no-deps; the runtime
    extra's distributions (and nothing else) are linked in from this environment's site-packages,
    exactly as a device install would have them.
    """
    src = tmp_path / "src"
    shutil.copytree(REPO / "edgetl", src / "edgetl", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels), str(src)], check=True, capture_output=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                    str(next(wheels.glob("edgetl-*.whl")))], check=True, capture_output=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    names = _runtime_distributions()
    assert "onnxruntime-gpu" in names and "numpy" in names and "torch" not in names
    for name in names:
        _link_distribution(md.distribution(name), site)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PATH"] = f"{venv / 'bin'}:{env.get('PATH', '')}"
    code = (
        "import importlib.util, sys, edgetl.runtime\n"
        f"assert all(importlib.util.find_spec(m) is None for m in {FORBIDDEN!r}), 'torch reachable'\n"
        f"p = edgetl.runtime.load({str(colour_bundle)!r})\n"
        f"print(p.predict({str(colour_dir / 'blue_1.png')!r}).label, p.describe()['backend'])\n"
    )
    out = subprocess.run([str(py), "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["blue", "onnxruntime"]
    cli = subprocess.run([str(venv / "bin" / "edgetl"), "predict", str(colour_bundle), str(colour_dir), "--json"],
                         capture_output=True, text=True, env=env, cwd=tmp_path)
    assert cli.returncode == 0, cli.stderr
    doc = json.loads(cli.stdout)
    assert doc["ok"] == 12 and doc["errors"] == 0
