"""The pieces of a training loop: optimizer, warm-up + cosine schedule, one epoch, one evaluation pass.

`edgetl.train.classify` composes them into a run; each piece is small enough to test alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgetl.data.torch_datasets import BadItem
from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="training")

DEFAULT_WEIGHT_DECAY = {"adamw": 0.01, "sgd": 1e-4}


def build_optimizer(param_groups: list[dict[str, Any]], name: str, weight_decay: float | None, *,
                    include_frozen: bool = False) -> Any:
    """AdamW or SGD (Nesterov momentum 0.9); biases and norm weights get no weight decay.

    Args:
        param_groups: each with ``params``, ``lr``, ``name`` (e.g. `edgetl.train.strategies.TrainPlan`).
        name: ``"adamw"`` or ``"sgd"``.
        weight_decay: None uses the optimizer's default (`DEFAULT_WEIGHT_DECAY`).
        include_frozen: keep parameters that do not require a gradient now; the optimizer skips them
            while they have none, and a schedule that unfreezes them later needs no new optimizer.
    """

    if name not in DEFAULT_WEIGHT_DECAY:
        raise BadInputError(f"unknown optimizer {name!r}", hint="use adamw or sgd")
    decay = DEFAULT_WEIGHT_DECAY[name] if weight_decay is None else float(weight_decay)
    groups = []
    for group in param_groups:
        params = [p for p in group["params"] if include_frozen or p.requires_grad]
        with_decay = [p for p in params if p.ndim > 1]
        without = [p for p in params if p.ndim <= 1]
        for suffix, chosen, wd in (("", with_decay, decay), ("_no_decay", without, 0.0)):
            if chosen:
                groups.append({"params": chosen, "lr": group["lr"], "initial_lr": group["lr"],
                               "weight_decay": wd, "name": group["name"] + suffix})
    if name == "adamw":
        return torch.optim.AdamW(groups)
    return torch.optim.SGD(groups, momentum=0.9, nesterov=True)


def lr_factor(step: int, total_steps: int, warmup_steps: int, min_factor: float = 0.01) -> float:
    """Linear warm-up over ``warmup_steps``, then cosine decay to ``min_factor`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def set_lr(optimizer: Any, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


@dataclass
class StepContext:
    """What one training step needs besides the batch."""

    model: Any
    optimizer: Any
    loss_fn: Any
    device: Any
    total_steps: int
    warmup_steps: int
    step: int = 0
    max_steps: int | None = None
    grad_clip: float | None = 1.0
    amp: bool = False
    channels_last: bool = False
    scaler: Any = None
    on_step: Callable[[int], None] | None = None
    bad: list[BadItem] = field(default_factory=list)

    @property
    def done(self) -> bool:
        return self.max_steps is not None and self.step >= self.max_steps


def _to_device(ctx: StepContext, images: Any, labels: Any) -> tuple[Any, Any]:

    images = images.to(ctx.device, non_blocking=True)
    if ctx.channels_last and images.ndim == 4:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(ctx.device, non_blocking=True)


def train_step(ctx: StepContext, forward: Callable[[Any], Any], images: Any, labels: Any) -> tuple[float, int]:
    """One optimizer step; returns ``(summed loss, correct predictions)`` for the batch."""

    set_lr(ctx.optimizer, lr_factor(ctx.step, ctx.total_steps, ctx.warmup_steps))
    images, labels = _to_device(ctx, images, labels)
    with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=ctx.amp):
        logits = forward(images)
        loss = ctx.loss_fn(logits.float(), labels)
    ctx.optimizer.zero_grad(set_to_none=True)
    if ctx.scaler is not None:
        ctx.scaler.scale(loss).backward()
        ctx.scaler.unscale_(ctx.optimizer)
    else:
        loss.backward()
    if ctx.grad_clip:
        params = [p for g in ctx.optimizer.param_groups for p in g["params"]]
        torch.nn.utils.clip_grad_norm_(params, ctx.grad_clip)
    if ctx.scaler is not None:
        ctx.scaler.step(ctx.optimizer)
        ctx.scaler.update()
    else:
        ctx.optimizer.step()
    if not torch.isfinite(loss):
        raise BadInputError(
            f"training diverged at step {ctx.step} (loss {float(loss)})", hint="lower --lr or keep --grad-clip on"
        )
    ctx.step += 1
    if ctx.on_step is not None:
        ctx.on_step(ctx.step)
    return float(loss.detach()) * len(labels), int((logits.argmax(1) == labels).sum())


def run_epoch(ctx: StepContext, forward: Callable[[Any], Any], batches: Any, bar: Any = None) -> dict[str, float]:
    """Train over ``batches`` of ``(images, labels, bad items)``; stops early at ``max_steps``."""
    loss_sum, correct, seen = 0.0, 0, 0
    for images, labels, bad in batches:
        ctx.bad += bad
        if images is not None and not ctx.done:
            batch_loss, batch_correct = train_step(ctx, forward, images, labels)
            loss_sum, correct, seen = loss_sum + batch_loss, correct + batch_correct, seen + len(labels)
        if bar is not None:
            bar.update(len(bad) + (0 if images is None else len(images)))
            if seen:
                bar.set_postfix(loss=f"{loss_sum / seen:.3f}", acc=f"{100 * correct / seen:.1f}")
        if ctx.done:
            break
    return {"train_loss": loss_sum / max(seen, 1), "train_top1": 100.0 * correct / max(seen, 1), "images": seen}


def predict(
    forward: Callable[[Any], Any], batches: Any, device: Any, *, amp: bool = False, channels_last: bool = False
) -> tuple[Any, Any, list[BadItem]]:
    """Logits and labels over ``batches`` (no grad); returns ``(logits [N, C] float32 CPU, labels, bad)``."""

    all_logits, all_labels, bad = [], [], []
    with torch.no_grad():
        for images, labels, failed in batches:
            bad += failed
            if images is None:
                continue
            images = images.to(device)
            if channels_last and images.ndim == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type="cuda", dtype=torch.float16, enabled=amp):
                logits = forward(images)
            all_logits.append(logits.float().cpu())
            all_labels.append(labels)
    if not all_logits:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long), bad
    return torch.cat(all_logits), torch.cat(all_labels), bad


def tensor_batches(features: Any, labels: Any, batch_size: int, generator: Any = None,
                   select: Callable[[Any], Any] | None = None) -> Any:
    """Shuffled (when ``generator`` is given) mini-batches over in-memory tensors, loader-shaped.

    ``select`` picks this process's share of the shuffled order (data-parallel training).
    """

    n = len(labels)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    if select is not None:
        order = select(order)
    for start in range(0, len(order), batch_size):
        index = order[start : start + batch_size]
        yield features[index], labels[index], []
