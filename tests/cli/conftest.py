"""Fixtures of the CLI tests: a bundle with an INT8 model of the tiny checkpoint."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def int8_bundle(tmp_path_factory: pytest.TempPathFactory, fp32_bundle: Path, digits_dir: Path) -> Path:
    """Read-only: the exported tiny checkpoint plus a min-max INT8 graph. Copy it before changing it."""
    from edgetl.quantize import quantize_bundle

    out = Path(shutil.copytree(fp32_bundle, tmp_path_factory.mktemp("int8") / "bundle"))
    quantize_bundle(out, "int8", calib_data=digits_dir, calib_size=8, method="minmax")
    return out
