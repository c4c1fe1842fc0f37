"""What each strategy trains, at which learning rate, and that frozen BatchNorm statistics stay put."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from edgetl.errors import BadInputError  # noqa: E402
from edgetl.models import create  # noqa: E402
from edgetl.train.strategies import apply_strategy, backbone_stages  # noqa: E402


def _trainable(module: torch.nn.Module) -> bool:
    return all(p.requires_grad for p in module.parameters())


def _frozen(module: torch.nn.Module) -> bool:
    return not any(p.requires_grad for p in module.parameters())


@pytest.fixture
def lite0() -> torch.nn.Module:
    return create("efficientnet_lite0", num_classes=4)


def test_linear_probe_trains_only_the_head(lite0: torch.nn.Module) -> None:
    plan = apply_strategy(lite0, "linear-probe", lr=1e-2)
    assert _trainable(lite0.classifier) and _frozen(lite0.blocks) and _frozen(lite0.conv_stem)
    assert plan.trainable_params == 1280 * 4 + 4
    assert [g["lr"] for g in plan.param_groups] == [1e-2]


def test_partial_unfreezes_the_last_stages_at_the_backbone_lr(lite0: torch.nn.Module) -> None:
    plan = apply_strategy(lite0, "partial", lr=1e-3, unfreeze=2, backbone_lr_scale=0.1)
    assert _trainable(lite0.blocks[6]) and _trainable(lite0.blocks[5]) and _trainable(lite0.conv_head)
    assert _frozen(lite0.blocks[4]) and _frozen(lite0.conv_stem)
    assert [g["name"] for g in plan.param_groups] == ["head", "backbone"]
    assert [g["lr"] for g in plan.param_groups] == pytest.approx([1e-3, 1e-4])
    with pytest.raises(BadInputError, match="has 7 stages"):
        apply_strategy(lite0, "partial", lr=1e-3, unfreeze=8)


def test_full_and_scratch_train_everything(lite0: torch.nn.Module) -> None:
    full = apply_strategy(lite0, "full", lr=1e-3, backbone_lr_scale=0.1)
    assert full.trainable_params == full.total_params
    assert [g["lr"] for g in full.param_groups] == pytest.approx([1e-3, 1e-4])
    scratch = apply_strategy(create("efficientnet_lite0", weights="none", num_classes=4), "scratch", lr=1e-3)
    assert [g["lr"] for g in scratch.param_groups] == pytest.approx([1e-3, 1e-3])


def test_frozen_batchnorm_statistics_do_not_move(lite0: torch.nn.Module) -> None:
    plan = apply_strategy(lite0, "partial", lr=1e-3, unfreeze=1)
    plan.apply_train_mode(lite0)
    frozen_bn, live_bn = lite0.blocks[2][0].bn1, lite0.bn2
    assert not frozen_bn.training and live_bn.training
    before = frozen_bn.running_mean.clone(), live_bn.running_mean.clone()
    lite0(torch.randn(4, 3, 32, 32) * 3 + 1)
    assert torch.equal(frozen_bn.running_mean, before[0])
    assert not torch.equal(live_bn.running_mean, before[1])


def test_resnet_stages_are_its_layers() -> None:
    model = create("resnet18", weights="none", num_classes=3)
    stages = backbone_stages(model)
    assert len(stages) == 5 and stages[4][0] is model.layer4
    apply_strategy(model, "partial", lr=1e-3, unfreeze=1)
    assert _trainable(model.layer4) and _frozen(model.layer3) and _trainable(model.fc)
