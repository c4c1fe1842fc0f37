"""A new classifier head starts at zero: the first loss is ln(C), whatever the class count."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from edgetl.data.samples import FASHION_NAMES, write_fashion  # noqa: E402
from edgetl.models import create  # noqa: E402
from edgetl.train.checkpoint import CheckpointMeta, save_checkpoint  # noqa: E402
from edgetl.train.classify import TrainConfig, train_classifier  # noqa: E402
from edgetl.train.strategies import apply_strategy  # noqa: E402


@pytest.fixture(scope="module")
def fashion3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three Fashion-MNIST classes, 6 training and 2 validation images each."""
    root = tmp_path_factory.mktemp("fashion3") / "data"
    write_fashion(root, train_per_class=6, val_per_class=2, size=32)
    for name in FASHION_NAMES[3:]:
        shutil.rmtree(root / "train" / name)
        shutil.rmtree(root / "val" / name)
    return root


@pytest.mark.parametrize("strategy", ["linear-probe", "partial"])
def test_first_loss_is_ln_of_the_class_count(strategy: str, fashion3: Path, tmp_path: Path) -> None:
    # one step over the whole training set: the epoch's loss is the loss before any update
    cfg = TrainConfig(data=fashion3, out=tmp_path / "run", strategy=strategy, unfreeze=1, img_size=32, epochs=1,
                      batch_size=18, max_steps=1, augment=False, hflip=False, device="cpu")
    result = train_classifier(cfg, progress=False)
    assert result.history[0]["train_loss"] == pytest.approx(math.log(3), abs=0.01)


def test_a_new_head_is_zeroed_and_a_loaded_one_is_kept(tmp_path: Path) -> None:
    model = create("efficientnet_lite0", num_classes=3)
    assert model.edgetl_new_head
    apply_strategy(model, "linear-probe", lr=1e-3)
    assert not model.classifier.weight.any() and not model.classifier.bias.any()
    assert not create("efficientnet_lite0", num_classes=1000).edgetl_new_head  # the ImageNet head

    with torch.no_grad():
        model.classifier.weight.normal_()
    meta = CheckpointMeta(task="classify", model="efficientnet_lite0", labels=["a", "b", "c"],
                          preprocess=model.edgetl_info.preprocess_spec(32), model_args={"num_classes": 3})
    path = save_checkpoint(tmp_path / "tuned.pt", model.state_dict(), meta)
    tuned = create("efficientnet_lite0", weights=str(path), num_classes=3)
    assert not tuned.edgetl_new_head
    apply_strategy(tuned, "partial", lr=1e-3, unfreeze=1)
    assert torch.equal(tuned.classifier.weight, model.classifier.weight)
    assert create("efficientnet_lite0", weights=str(path), num_classes=5).edgetl_new_head
