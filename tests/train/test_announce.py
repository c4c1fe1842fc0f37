"""A training run says what it is about to do (dataset, split, skipped files, plan, time) before it starts."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgetl.data import load_classification_data  # noqa: E402
from edgetl.data.samples import FASHION_NAMES, write_fashion  # noqa: E402
from edgetl.train import announce  # noqa: E402
from edgetl.train.classify import TrainConfig, train_classifier  # noqa: E402


def _fashion(root: Path, classes: int, *, val_folder: bool) -> Path:
    write_fashion(root, train_per_class=5, val_per_class=2, size=32)
    for name in FASHION_NAMES[classes:]:
        shutil.rmtree(root / "train" / name)
        shutil.rmtree(root / "val" / name)
    if not val_folder:
        shutil.rmtree(root / "val")
    return root


def _cfg(data: Path, out: Path) -> TrainConfig:
    return TrainConfig(data=data, out=out, strategy="linear-probe", img_size=32, epochs=2, batch_size=8,
                       augment=False, hflip=False, device="cpu")


def test_the_dataset_and_plan_are_logged_before_the_first_step(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    root = _fashion(tmp_path / "data", 3, val_folder=False)
    (root / "train" / "pullover" / "broken.png").write_bytes(b"not a png")
    caplog.set_level(logging.INFO, logger="edgetl.train.announce")
    lines_at_first_step: list[str] = []

    def on_step(step: int) -> None:
        if step == 1:
            lines_at_first_step.extend(r.getMessage() for r in caplog.records)

    train_classifier(_cfg(root, tmp_path / "run"), progress=False, on_step=on_step)
    text = "\n".join(lines_at_first_step)
    assert "3 classes, 12 training and 3 validation images" in text
    assert "20 % of the training images per class, carved out automatically" in text
    assert "pullover 4/1, t-shirt 4/1, trouser 4/1" in text
    assert "skipped 1 unreadable file(s)" in text and "broken.png" in text
    assert "plan: linear-probe, 2 epoch(s)" in text and "estimated time about" in text
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "edgetl.train.announce")


def test_a_val_folder_and_no_skipped_files_are_said_too(tmp_path: Path) -> None:
    data = load_classification_data(_fashion(tmp_path / "data", 10, val_folder=True))
    lines = announce.dataset_lines(data, source="data")
    assert lines[0] == "dataset from data: 10 classes, 50 training and 20 validation images"
    assert "own val/ split" in lines[1] and lines[-1].endswith("skipped: none (every file decoded)")


def test_nothing_is_measured_when_nobody_listens(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    logging.getLogger("edgetl.train.announce").setLevel(logging.WARNING)
    monkeypatch.setattr(announce, "measure", lambda *a, **k: pytest.fail("measured without a listener"))
    try:
        train_classifier(_cfg(_fashion(tmp_path / "data", 2, val_folder=True), tmp_path / "run"), progress=False)
    finally:
        logging.getLogger("edgetl.train.announce").setLevel(logging.NOTSET)


def test_estimates_scale_with_the_work() -> None:
    probe = announce.estimate_seconds("linear-probe", per_image=0.01, train_images=1000, val_images=300, epochs=50)
    assert probe == pytest.approx(13.0)  # one backbone pass, whatever the epochs
    full = announce.estimate_seconds("full", per_image=0.01, train_images=1000, val_images=300, epochs=2)
    partial = announce.estimate_seconds("partial", per_image=0.01, train_images=1000, val_images=300, epochs=2)
    assert full == pytest.approx(2 * (30 + 3)) and partial < full
    capped = announce.estimate_seconds("full", per_image=0.01, train_images=1000, val_images=300, epochs=10,
                                       steps=10, batch_size=50)
    assert capped == pytest.approx(15 + 3)  # 500 images trained, one evaluation
    assert [announce.format_duration(s) for s in (0.2, 42, 600, 7200)] == ["1 s", "42 s", "10 min", "2.0 h"]
