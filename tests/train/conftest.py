"""A smaller digits sample for training runs: 5 train and 2 val images per class, 32 px."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def tiny_digits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.data.samples import write_digits

    out = tmp_path_factory.mktemp("train-data") / "digits"
    write_digits(out, train_per_class=5, val_per_class=2, size=32, seed=0)
    return out
