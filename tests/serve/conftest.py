"""Fixtures for the daemon tests: tiny real bundles and a running server on 127.0.0.1."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from bundles import make_bundle


@pytest.fixture(scope="session")
def serve_bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two good bundles of the same model name (different weights) and one with wrong golden outputs."""
    root = tmp_path_factory.mktemp("serve-bundles")
    return {
        "v1": make_bundle(root / "v1", seed=0),
        "v2": make_bundle(root / "v2", seed=1),
        "bad_golden": make_bundle(root / "bad_golden", seed=2, golden_seed=1),
    }


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, serve_bundles: dict[str, Path]) -> Iterator:
    """A daemon serving model ``tiny`` (version 1) with a 1 MiB body limit; shared by a test module."""
    import shutil

    from edgetl.serve.config import ServeConfig
    from edgetl.serve.server import BackgroundServer

    models = tmp_path_factory.mktemp("repo")
    shutil.copytree(serve_bundles["v1"], models / "tiny" / "1")
    config = ServeConfig(models_dir=models, port=0, max_body_mb=1.0, watch_interval=0)
    with BackgroundServer(config) as server:
        yield server
