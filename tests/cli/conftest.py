"""Session fixtures: colour images and small real bundles (tests/bundle_factory.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundle_factory import colour_images, make_bundle


@pytest.fixture(scope="session")
def colour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("colours")
    colour_images(out)
    return out


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory, colour_dir: Path) -> Path:
    """Read-only: fp32 + validated int8 ONNX, golden samples. Copy it before changing anything."""
    return make_bundle(tmp_path_factory.mktemp("bundle") / "colours", sorted(colour_dir.glob("*.png")))
