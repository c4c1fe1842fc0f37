"""The FP32 bundle shared by the export, quantize and validate tests (exported once per session)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def fp32_bundle(request: pytest.FixtureRequest, tiny_checkpoint: Path, digits_dir: Path,
                tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pristine exported bundle; tests copy it (`bundle_copy`) before changing anything."""
    cached = getattr(request.config, "_edgetl_fp32_bundle", None)
    if cached is None:
        from edgetl.export import export_checkpoint

        cached = tmp_path_factory.mktemp("exported") / "bundle"
        export_checkpoint(tiny_checkpoint, cached, parity_data=digits_dir, golden=4)
        request.config._edgetl_fp32_bundle = cached
    return cached


@pytest.fixture
def bundle_copy(fp32_bundle: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))
