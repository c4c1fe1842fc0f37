"""The layers of docs/architecture.md, enforced: import-linter's contracts, plus what it cannot see.

`lint-imports` reads import statements (at module level or inside functions). An optional dependency
named in `edgetl.lazy.lazy_import("...")` is a string to it, so the second test reads those names and
holds the device side to the same rule: no torch and no workstation package, lazily or not.
"""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "edgetl"
DEVICE_SIDE = ("bundle", "runtime", "serve", "preprocess.py", "errors.py", "fileio.py", "lazy.py", "tables.py")
WORKSTATION = ("cli", "demo", "validate", "quantize", "compile", "export", "detect", "train", "metrics", "models",
               "data")
NEVER_ON_DEVICE = ("torch", "torchvision", "timm", "onnx", *(f"edgetl.{name}" for name in WORKSTATION))
#: Modules allowed to import by name with importlib: the mechanism itself, the CLI's lazy verb loaders
#: (its own submodules, so that ``edgetl --help`` stays fast), and the training code being rebuilt.
IMPORTLIB_ALLOWED = {"lazy.py", "errors.py", "cli/main.py", "cli/data.py", "cli/train.py"}


def _lint_imports() -> str | None:
    found = shutil.which("lint-imports") or str(Path(sys.executable).with_name("lint-imports"))
    return found if Path(found).is_file() else None


@pytest.mark.skipif(_lint_imports() is None, reason="import-linter is not installed (pip install 'edgetl[dev]')")
def test_import_contracts_hold() -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    out = subprocess.run([_lint_imports(), "--no-cache"], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "0 broken" in out.stdout
    for contract in ("Layers", "Nothing but the CLI imports the CLI", "The device side never imports torch",
                     "No import cycles"):
        assert contract in out.stdout


def _lazy_targets(path: Path) -> list[tuple[int, str]]:
    """``(line, module)`` of every ``lazy_import("module", ...)`` / ``require("module", ...)`` in a file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in ("lazy_import", "require", "optional_import") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _device_files() -> list[Path]:
    files: list[Path] = []
    for name in DEVICE_SIDE:
        target = PACKAGE / name
        files += sorted(target.rglob("*.py")) if target.is_dir() else [target]
    return files


def test_device_side_lazy_imports_stay_on_the_device_side() -> None:
    files = _device_files()
    assert len(files) > 20  # the walk found the packages
    bad = [f"{path.relative_to(REPO)}:{line} lazily imports {module}"
           for path in files for line, module in _lazy_targets(path)
           if any(module == banned or module.startswith(banned + ".") for banned in NEVER_ON_DEVICE)]
    assert not bad, "\n".join(bad)


def test_one_lazy_import_mechanism() -> None:
    """Optional dependencies go through `edgetl.lazy`; importlib by name is left to the mechanism itself."""
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE).as_posix()
        if rel in IMPORTLIB_ALLOWED or rel.startswith("train/") or rel == "detect/train.py":
            continue
        text = path.read_text(encoding="utf-8")
        for needle in ("import_module(", "find_spec(", "optional_import("):
            if needle in text:
                offenders.append(f"{rel}: {needle}")
    assert not offenders, "\n".join(offenders)
