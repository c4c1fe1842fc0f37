"""Transfer-learning strategies: which parameters train, at which learning rate, and BatchNorm mode.

- ``linear-probe``: the backbone is frozen; only the new head trains (on cached features, see
  `edgetl.train.features`). The strongest choice with very few images per class.
- ``partial``: the last ``unfreeze`` backbone stages and the head train; earlier stages stay frozen.
- ``full``: everything trains; the backbone at ``backbone_lr_scale`` times the head's learning rate,
  so the pretrained features are adjusted rather than overwritten.
- ``scratch``: random initialisation, everything trains at one learning rate (the baseline that shows
  what pretraining buys).

A new classifier head starts at zero (`init_new_head`): every class gets the same logit, so the first
loss is ln(number of classes). timm's default initialisation of EfficientNet heads draws weights
uniformly from ±1/sqrt(num_classes), scaled for 1000 classes; with a handful of classes and pooled
features of norm 20-60 (they are not normalised), the first logits spread by ±10 and the first loss is
6 (3 classes) to 16 (10 classes). The head then spends its epochs unlearning that start: on the
Fashion-MNIST sample (96 px, 20 epochs) the linear probe reached 67 % top-1 from timm's start and 83 %
from zero. A zero start is safe for the last layer: the rows still get different gradients because
the targets differ.

Frozen parts keep their BatchNorm running statistics: their BN layers stay in eval mode during
training (`TrainPlan.apply_train_mode`), so a small, differently distributed dataset cannot drift the
ImageNet statistics the frozen weights were fitted with.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="training")

STRATEGIES = ("linear-probe", "partial", "full", "scratch")
#: AdamW head learning rates per strategy (SGD uses 10x); chosen on the digits benchmark.
DEFAULT_LR = {"linear-probe": 5e-3, "partial": 2e-3, "full": 2e-3, "scratch": 3e-3}


def check_strategy(name: str) -> str:
    if name not in STRATEGIES:
        raise BadInputError(f"unknown strategy {name!r}", hint=f"choose one of {', '.join(STRATEGIES)}")
    return name


def classifier_name(model: Any) -> str:
    """The attribute name of the model's classifier head (``classifier`` or ``fc``)."""
    head = model.get_classifier()
    for name, module in model.named_children():
        if module is head:
            return name
    raise BadInputError(f"{type(model).__name__}: cannot locate the classifier head")


def backbone_stages(model: Any) -> list[list[Any]]:
    """The backbone in order, as groups of modules: ``[stem, stage 1, ..., stage N]``.

    ``--unfreeze N`` counts over stages 1..N from the end. Layers between the last stage and the
    classifier (EfficientNet's ``conv_head``/``bn2``, MobileNetV3's ``conv_head``) join the last stage.
    """
    head = classifier_name(model)
    children = [(n, m) for n, m in model.named_children() if n != head]
    if hasattr(model, "blocks"):  # timm EfficientNet / MobileNet family
        index = [n for n, _ in children].index("blocks")
        stem = [m for _, m in children[:index]]
        stages = [[block] for block in model.blocks]
        stages[-1] += [m for _, m in children[index + 1 :]]
    elif hasattr(model, "layer1"):  # ResNet
        names = [n for n, _ in children]
        first = names.index("layer1")
        stem = [m for _, m in children[:first]]
        stages = [[m] for n, m in children[first:] if n.startswith("layer")]
        stages[-1] += [m for n, m in children[first:] if not n.startswith("layer")]
    else:
        stem, stages = [], [[m] for _, m in children]
    return [stem, *stages]


def init_new_head(model: Any) -> bool:
    """Zero the classifier head when it is new (``model.edgetl_new_head``); True when it did.

    A head loaded from the weights (a fine-tuned checkpoint with the same classes) is left as it is.
    """

    if not getattr(model, "edgetl_new_head", False):
        return False
    head = model.get_classifier()
    with torch.no_grad():
        for param in head.parameters():
            param.zero_()
    model.edgetl_new_head = False
    return True


@dataclass
class TrainPlan:
    """The outcome of applying a strategy to a model."""

    strategy: str
    param_groups: list[dict[str, Any]]
    frozen_modules: list[Any] = field(default_factory=list)
    trainable_params: int = 0
    total_params: int = 0
    trainable_stages: int = 0

    def apply_train_mode(self, model: Any) -> None:
        """``model.train()``, then put the BatchNorm layers of frozen parts back in eval mode."""

        model.train()
        for module in self.frozen_modules:
            for sub in module.modules():
                if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm):
                    sub.eval()

    def describe(self) -> dict[str, Any]:
        return {
            "strategy": self.strategy,
            "trainable_params": self.trainable_params,
            "total_params": self.total_params,
            "trainable_stages": self.trainable_stages,
            "lr": [g["lr"] for g in self.param_groups],
        }


def apply_strategy(
    model: Any, strategy: str, *, lr: float, unfreeze: int = 2, backbone_lr_scale: float = 0.1
) -> TrainPlan:
    """Freeze/unfreeze ``model`` in place for ``strategy`` and build the optimizer parameter groups.

    A new classifier head is zeroed first (`init_new_head`), so training starts from a loss of ln(C).

    Args:
        model: a timm classifier from `edgetl.models.create`.
        strategy: one of `STRATEGIES`.
        lr: the head's learning rate.
        unfreeze: ``partial`` only: how many backbone stages, counted from the end, train.
        backbone_lr_scale: backbone learning rate as a fraction of ``lr`` (``partial`` and ``full``).
    """
    check_strategy(strategy)
    init_new_head(model)
    groups = backbone_stages(model)
    stages = groups[1:]
    if strategy == "partial" and not 0 <= unfreeze <= len(stages):
        raise BadInputError(
            f"--unfreeze {unfreeze}: {type(model).__name__} has {len(stages)} stages", hint=f"use 0..{len(stages)}"
        )
    if strategy == "linear-probe":
        trainable_groups: list[list[Any]] = []
    elif strategy == "partial":
        trainable_groups = stages[len(stages) - unfreeze :] if unfreeze else []
        if unfreeze == len(stages):
            trainable_groups = groups
    else:
        trainable_groups = groups
    trainable_ids = {id(m) for group in trainable_groups for m in group}
    frozen = [m for group in groups for m in group if id(m) not in trainable_ids]
    for module in frozen:
        module.requires_grad_(False)
    backbone_params = []
    for group in trainable_groups:
        for module in group:
            module.requires_grad_(True)
            backbone_params += [p for p in module.parameters()]
    head = model.get_classifier()
    head.requires_grad_(True)
    head_params = list(head.parameters())
    scale = 1.0 if strategy == "scratch" else backbone_lr_scale
    param_groups = [{"params": head_params, "lr": lr, "name": "head"}]
    if backbone_params:
        param_groups.append({"params": backbone_params, "lr": lr * scale, "name": "backbone"})
    trainable = sum(p.numel() for g in param_groups for p in g["params"])
    return TrainPlan(
        strategy=strategy,
        param_groups=param_groups,
        frozen_modules=frozen,
        trainable_params=trainable,
        total_params=sum(p.numel() for p in model.parameters()),
        trainable_stages=len(stages) if trainable_groups is groups else len(trainable_groups),
    )
