"""`train_classifier`: fine-tune a registered pretrained classifier on a small dataset.

A run writes into ``cfg.out``: ``best.pt`` (best validation top-1), ``last.pt`` (latest state, with
optimizer and progress for ``resume``), ``metrics.json``, ``curves.png``, ``confusion.png`` and
``config.yaml`` (the resolved configuration, reusable as ``edgetl train classify --config``).
Before the first epoch the run logs its dataset (classes, counts per split and class, how the validation
split was made, skipped files) and its plan with an estimated time (`edgetl.train.announce`).

Ctrl-C: ``last.pt`` is written atomically at the end of every epoch, so an interrupted run keeps the
state of its last complete epoch (or, if none completed, the current weights) and ``metrics.json``
says ``"status": "interrupted"``; ``resume`` continues from there.

Reproducibility: on the CPU, the same config gives the same weights. Every epoch reseeds the
shuffling, augmentation and dropout from ``(seed, epoch)``, so a resumed run continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetl.data.imagefolder import ClassificationData, load_classification_data
from edgetl.data.torch_datasets import BadItem, ImageDataset, make_loader
from edgetl.data.transforms import SpecTransform, train_transform
from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec
from edgetl.train import announce, distributed
from edgetl.train.checkpoint import CheckpointMeta
from edgetl.train.config import RunConfig
from edgetl.train.engine import (
    EpochOutcome,
    TrainingRun,
    progress_bar,
    seed_epoch,
    seed_everything,
)
from edgetl.train.loop import StepContext, build_optimizer, predict, run_epoch, tensor_batches
from edgetl.train.metrics import classification_metrics
from edgetl.train.report import plot_confusion, plot_curves
from edgetl.train.strategies import DEFAULT_LR, apply_strategy, check_strategy

torch = lazy_import("torch", "train", purpose="training")


@dataclass
class TrainConfig(RunConfig):
    """A classifier fine-tuning run: the shared options (`edgetl.train.config.RunConfig`) and these.

    Args:
        data: dataset folder (``train/<class>/*`` [+ ``val/``]) or a ``path,label`` CSV.
        model: registry name (`edgetl.models.list_models`).
        strategy: ``linear-probe`` | ``partial`` | ``full`` | ``scratch`` (`edgetl.train.strategies`).
        unfreeze: ``partial``: backbone stages trained, counted from the end.
        lr: head learning rate; None picks the strategy's default (`DEFAULT_LR`; SGD 10x).
        backbone_lr_scale: backbone learning rate as a fraction of ``lr`` (``partial``, ``full``).
        img_size: input side in pixels; None for the model's pretrained size.
        augment: random resized crop + colour jitter (+ flips, see ``hflip``) on training images.
        hflip: random horizontal flips while augmenting (turn off for digits, text, arrows...).
        label_smoothing: cross-entropy label smoothing.
        warmup_epochs: linear warm-up before the cosine decay (capped at half the run).
    """

    model: str = "efficientnet_lite0"
    backbone_lr_scale: float = 0.1
    unfreeze: int = 2
    hflip: bool = True
    label_smoothing: float = 0.1

    def validate(self) -> None:
        """Refuse impossible settings with a message naming the option."""
        check_strategy(self.strategy)
        if not str(self.data):
            raise BadInputError("no dataset given", hint="pass --data DIR (train/<class>/*) or a CSV file")
        checks = [
            (self.epochs >= 1, "--epochs must be >= 1"),
            (self.batch_size >= 1, "--batch-size must be >= 1"),
            (self.lr is None or self.lr > 0, "--lr must be > 0"),
            (self.backbone_lr_scale >= 0, "--backbone-lr-scale must be >= 0"),
            (0 <= self.label_smoothing < 1, "--label-smoothing must be in [0, 1)"),
            (self.warmup_epochs >= 0, "--warmup-epochs must be >= 0"),
            (self.patience is None or self.patience >= 1, "--patience must be >= 1"),
            (self.max_steps is None or self.max_steps >= 1, "--max-steps must be >= 1"),
            (self.img_size is None or self.img_size >= 16, "--img-size must be >= 16"),
            (self.workers >= 0, "--workers must be >= 0"),
            (0 < self.val_fraction < 1, "--val-fraction must be in (0, 1)"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             "--device must be auto, cpu or cuda"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class TrainResult:
    """What a run produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_top1: float
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
    images_per_second: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    best_epoch: int = 0
    stopped: str = "completed"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(run_dir=str(self.run_dir), best_checkpoint=str(self.best_checkpoint),
                 last_checkpoint=str(self.last_checkpoint))
        d["skipped"] = [f"{p}: {why}" for p, why in self.skipped]
        return d


def _dataset_digest(data: ClassificationData) -> str:
    digest = hashlib.sha256("\n".join(data.classes).encode())
    for split, samples in (("train", data.train), ("val", data.val)):
        for s in samples:
            digest.update(f"{split}:{Path(s.path).name}:{s.label}\n".encode())
    return digest.hexdigest()[:16]


class _Run(TrainingRun):
    """A classifier run: the data, model, strategy and loss; `TrainingRun` runs the epochs."""

    task = "classify"

    def __init__(self, cfg: TrainConfig, progress: bool, on_step: Callable[[int], None] | None) -> None:

        super().__init__(cfg, progress, on_step)
        self.cfg: TrainConfig = cfg
        self.cuda = self.device.type == "cuda"
        self.data = load_classification_data(cfg.data, val_fraction=cfg.val_fraction, seed=cfg.seed)
        self.check_dataset(_dataset_digest(self.data))
        from edgetl.models import create, get_model_info

        info = get_model_info(cfg.model)
        self.spec: PreprocessSpec = info.preprocess_spec(cfg.img_size)
        weights = "none" if cfg.strategy == "scratch" else cfg.weights
        if cfg.strategy != "scratch" and weights in ("none", None):
            raise BadInputError(
                f"--strategy {cfg.strategy} with --weights none trains from random weights",
                hint="use --strategy scratch for that, or give pretrained weights",
            )
        seed_everything(cfg.seed)
        self.model = create(cfg.model, weights=weights, num_classes=len(self.data.classes))
        self.weights_source = self.model.edgetl_weights
        lr = cfg.lr if cfg.lr is not None else DEFAULT_LR[cfg.strategy] * (10 if cfg.optimizer == "sgd" else 1)
        lr = self.lr = self.scaled_lr(lr)
        self.plan = apply_strategy(
            self.model, cfg.strategy, lr=lr, unfreeze=cfg.unfreeze, backbone_lr_scale=cfg.backbone_lr_scale
        )
        self.place_model(self.model)
        self.optimizer = build_optimizer(self.plan.param_groups, cfg.optimizer, cfg.weight_decay)
        self.loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
        self.scaler = torch.amp.GradScaler("cuda") if self.amp else None
        self.best_eval: dict[str, Any] | None = None
        self.bad: list[BadItem] = []
        self.feature_seconds = 0.0
        self._epoch_fn: Callable[[StepContext, int], dict[str, Any]] | None = None
        self._ctx: StepContext | None = None
        self._last_eval: dict[str, Any] | None = None
        if cfg.resume:
            self.resume(cfg.resume)

    # -- checkpoints -----------------------------------------------------------------------------
    def meta(self, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        return CheckpointMeta(
            task="classify",
            model=self.cfg.model,
            labels=list(self.data.classes),
            preprocess=self.spec,
            model_args={"num_classes": len(self.data.classes)},
            train_config={**self.cfg.to_dict(), "resolved_lr": self.lr, "plan": self.plan.describe()},
            epoch=epoch,
            metrics=metrics,
            provenance={
                "base_model": self.cfg.model,
                "weights_source": self.weights_source,
                "dataset": str(self.cfg.data),
                "dataset_digest": _dataset_digest(self.data),
                "device": str(self.device),
            },
        )

    def check_resume(self, path: Path, raw: dict[str, Any], meta: CheckpointMeta) -> None:
        super().check_resume(path, raw, meta)
        if meta.labels != list(self.data.classes):
            raise BadInputError(
                f"--resume {path}: its labels {meta.labels} differ from the dataset's {self.data.classes}"
            )

    # -- training --------------------------------------------------------------------------------
    def _bar(self, total: int, desc: str) -> Any:
        return progress_bar(total, desc, "img", self.progress)

    def _drop_single(self) -> bool:
        """A last batch of one image cannot train BatchNorm (no batch statistics): it is skipped."""
        n = self.per_rank(len(self.data.train))
        return self.cfg.strategy != "linear-probe" and n > 1 and n % self.cfg.batch_size == 1

    def _steps_per_epoch(self) -> int:
        n, b = self.per_rank(len(self.data.train)), self.cfg.batch_size
        return max(1, n // b if self._drop_single() else -(-n // b))

    def _context(self) -> StepContext:
        cfg = self.cfg
        spe = self._steps_per_epoch()
        total = self.total_steps(spe)
        warmup = min(int(round(cfg.warmup_epochs * spe)), total // 2)
        return StepContext(
            model=self.model, optimizer=self.optimizer, loss_fn=self.loss_fn, device=self.device,
            total_steps=total, warmup_steps=warmup, step=self.step, max_steps=cfg.max_steps,
            grad_clip=cfg.grad_clip, amp=self.amp, channels_last=self.channels_last, scaler=self.scaler,
            on_step=self.on_step, bad=self.bad,
        )

    def train_and_evaluate(self, epoch: int) -> EpochOutcome:
        if self._ctx is None:
            self._ctx = self._context()
        if self._epoch_fn is None:
            self._epoch_fn = (self._linear_probe_epochs() if self.cfg.strategy == "linear-probe"
                              else self._image_epochs())
        before = self._ctx.step
        record = self._epoch_fn(self._ctx, epoch)
        self.step = self._ctx.step
        evaluation = record.pop("eval")
        entry = {
            "epoch": epoch,
            "step": self.step,
            "train_loss": round(record["train_loss"], 5),
            "train_top1": round(record["train_top1"], 3),
            "val_loss": round(record["val_loss"], 5),
            "val_top1": evaluation["top1"],
            "val_top5": evaluation["top5"],
            "lr": self.optimizer.param_groups[0]["lr"],
            "images": record["images"],
        }
        steps = self.step - before
        return EpochOutcome(entry=entry, score=evaluation["top1"], metrics=entry, steps=steps,
                            full_epoch=steps >= self._steps_per_epoch() or self.cfg.strategy == "linear-probe")

    def on_best(self, outcome: EpochOutcome) -> None:
        self.best_eval = self._last_eval

    def announce(self) -> None:
        """Log the dataset and the plan before the first epoch (`edgetl.train.announce`).

        The time estimate runs the model on a few training images, so it is only measured when
        someone listens (the logger is enabled for INFO).
        """
        if not announce.log.isEnabledFor(logging.INFO):
            return
        cfg = self.cfg
        epochs = max(0, cfg.epochs - self.start_epoch + 1)
        steps = None if cfg.max_steps is None else max(0, cfg.max_steps - self.step)
        lines = announce.dataset_lines(self.data, source=str(cfg.data), val_fraction=cfg.val_fraction,
                                       seed=cfg.seed)
        per_image, setup = announce.measure(self.model, self.data.train, self.spec, device=self.device,
                                            channels_last=self.channels_last)
        seconds = announce.estimate_seconds(cfg.strategy, per_image=per_image, setup=setup,
                                            train_images=len(self.data.train),
                                            val_images=len(self.data.val), epochs=epochs, steps=steps,
                                            batch_size=cfg.batch_size)
        lines.append(announce.plan_line(strategy=cfg.strategy, epochs=epochs, train_images=len(self.data.train),
                                        batch_size=cfg.batch_size * self.dist.world, img_size=self.spec.size[0],
                                        device=self.device,
                                        seconds=seconds if per_image else None, max_steps=steps))
        if self.dist.enabled:
            lines.append(self.parallel_line())
        if self.start_epoch > 1:
            lines.append(f"  resuming at epoch {self.start_epoch} (step {self.step})")
        announce.announce(lines)

    def _image_epochs(self) -> Callable[[StepContext, int], dict[str, Any]]:

        cfg = self.cfg
        train_ds = ImageDataset(self.data.train, train_transform(self.spec, cfg.augment, hflip=cfg.hflip))
        val_loader = make_loader(ImageDataset(self.data.val, SpecTransform(self.spec)),
                                 batch_size=cfg.batch_size * 2, shuffle=False, workers=cfg.workers)
        forward = self.parallel(self.model, sync_bn=True)

        def one_epoch(ctx: StepContext, epoch: int) -> dict[str, Any]:
            generator = seed_epoch(cfg.seed, epoch, self.dist.rank)
            sampler = self.sampler(train_ds, epoch)
            loader = make_loader(train_ds, batch_size=cfg.batch_size, shuffle=sampler is None, workers=cfg.workers,
                                 generator=generator, pin_memory=self.cuda, sampler=sampler,
                                 drop_last=self._drop_single())
            self.plan.apply_train_mode(self.model)
            t0 = time.perf_counter()
            with self._bar(self.per_rank(len(train_ds)), f"epoch {epoch}/{cfg.epochs}") as bar:
                record = self._reduced(run_epoch(ctx, forward, loader, bar))
            self.train_seconds += time.perf_counter() - t0
            self.sync_state()
            self.model.eval()

            def evaluate() -> tuple[float, dict[str, Any], list[BadItem]]:
                logits, labels, bad = predict(self.model, val_loader, self.device, amp=self.amp,
                                              channels_last=self.channels_last)
                with torch.no_grad():
                    val_loss = float(self.loss_fn(logits, labels)) if len(labels) else 0.0
                return val_loss, classification_metrics(logits, labels, self.data.classes), bad

            val_loss, evaluation, bad = distributed.broadcast_object(self.dist, evaluate() if self.is_main else None,
                                                                      "sharing the validation result")
            ctx.bad += bad
            record["val_loss"] = val_loss
            record["eval"] = self._last_eval = evaluation
            return record

        return one_epoch

    def _reduced(self, record: dict[str, Any]) -> dict[str, Any]:
        """The epoch's training loss, top-1 and image count over every rank."""
        seen = record["images"]
        loss_sum, correct, seen = distributed.all_reduce_sum(
            self.dist, [record["train_loss"] * seen, record["train_top1"] * seen / 100.0, seen])
        self.train_images += int(seen)
        return {"train_loss": loss_sum / max(seen, 1), "train_top1": 100.0 * correct / max(seen, 1),
                "images": int(seen)}

    def _linear_probe_epochs(self) -> Callable[[StepContext, int], dict[str, Any]]:

        from edgetl.train.features import extract_features

        cfg = self.cfg
        t0 = time.perf_counter()
        cached = {}
        rank, world = self.dist.rank, self.dist.world
        for split, samples in (("train", self.data.train), ("val", self.data.val)):
            mine = samples[rank::world]  # each rank encodes its share once; the shares are gathered
            with self._bar(len(mine), f"caching {split} features") as bar:
                part = extract_features(
                    self.model, mine, self.spec, batch_size=max(cfg.batch_size, 64), device=self.device,
                    workers=cfg.workers, progress=bar.update, channels_last=self.channels_last, amp=self.amp,
                )
            parts = distributed.gather_objects(self.dist, part, f"gathering the cached {split} features")
            feats = torch.cat([p[0] for p in parts if len(p[1])] or [parts[0][0]])
            labels = torch.cat([p[1] for p in parts])
            self.bad += [b for p in parts for b in p[2]]
            cached[split] = (feats.to(self.device), labels.to(self.device))
        self.feature_seconds = time.perf_counter() - t0
        self.train_seconds += self.feature_seconds
        head = self.model.get_classifier()
        forward = self.parallel(head, sync_bn=False)

        def one_epoch(ctx: StepContext, epoch: int) -> dict[str, Any]:
            generator = seed_epoch(cfg.seed, epoch)  # the same permutation on every rank; each takes its share
            head.train()
            feats, labels = cached["train"]
            t1 = time.perf_counter()
            batches = tensor_batches(feats, labels, cfg.batch_size, generator,
                                     select=lambda order: distributed.shard(self.dist, len(labels), order))
            record = self._reduced(run_epoch(ctx, forward, batches))
            self.train_seconds += time.perf_counter() - t1
            head.eval()
            with torch.no_grad():
                val_feats, val_labels = cached["val"]
                logits = head(val_feats).float().cpu()
                val_labels = val_labels.cpu()
                record["val_loss"] = float(self.loss_fn(logits, val_labels)) if len(val_labels) else 0.0
            record["eval"] = self._last_eval = classification_metrics(logits, val_labels, self.data.classes)
            return record

        return one_epoch

    def epoch_line(self, entry: dict[str, Any]) -> str:
        return (f"epoch {entry['epoch']}: loss {entry['train_loss']:.4f}  train top-1 {entry['train_top1']:.1f}%  "
                f"val top-1 {entry['val_top1']:.1f}%  (best {self.best_score:.1f}% @ {self.best_epoch})")

    # -- reports ---------------------------------------------------------------------------------
    def _skipped(self) -> list[tuple[str, str]]:
        seen = {p for p, _ in self.data.skipped}
        extra = [(b.path, b.reason) for b in self.bad if b.path not in seen and not seen.add(b.path)]
        return list(self.data.skipped) + extra

    def document(self, status: str) -> dict[str, Any]:
        skipped = self._skipped()
        timing = {"train_seconds": round(self.train_seconds, 3), "feature_cache_seconds":
                  round(self.feature_seconds, 3), "train_images": self.train_images}
        if status != "running":
            timing["total_seconds"] = self.seconds
        return {
            "status": status,
            "task": "classify",
            "model": self.cfg.model,
            "strategy": self.cfg.strategy,
            "plan": self.plan.describe(),
            "weights": self.weights_source,
            "labels": self.data.classes,
            "data": self.data.summary(),
            "preprocess": self.spec.to_dict(),
            "best": {"epoch": self.best_epoch, "val_top1": self.best_score,
                     **({k: self.best_eval[k] for k in ("top5", "per_class", "confusion")} if self.best_eval else {})},
            "history": self.history,
            "skipped": {"count": len(skipped), "files": [f"{p}: {why}" for p, why in skipped]},
            "timing": timing,
            "config": self.cfg.to_dict(),
        }

    def draw(self) -> None:
        plot_curves(self.history, self.run_dir / "curves.png")
        if self.best_eval is not None:
            plot_confusion(self.best_eval["confusion"], self.data.classes, self.run_dir / "confusion.png",
                           title=f"validation, epoch {self.best_epoch}: top-1 {self.best_score:.1f}%")

    def result(self, stopped: str) -> TrainResult:
        return TrainResult(
            run_dir=self.run_dir,
            best_checkpoint=self.run_dir / "best.pt",
            last_checkpoint=self.run_dir / "last.pt",
            best_top1=self.best_score,
            history=self.history,
            seconds=self.seconds,
            images_per_second=self.images_per_second,
            skipped=self._skipped(),
            best_epoch=self.best_epoch,
            stopped=stopped,
        )


def train_classifier(
    cfg: TrainConfig, progress: bool = True, on_step: Callable[[int], None] | None = None
) -> TrainResult:
    """Fine-tune a classifier as configured; see the module docstring for the run directory.

    Args:
        cfg: the run's configuration.
        progress: tqdm bars and a line per epoch on stderr.
        on_step: called with the global step after every optimizer step (tests, custom logging).

    Raises:
        BadInputError: bad data or settings (exit code 2).
        EnvironmentMissingError: no pretrained weights offline, or ``--device cuda`` without a GPU (3).
        KeyboardInterrupt: after writing a usable ``last.pt`` and ``metrics.json``.
    """
    try:
        run = _Run(cfg, progress, on_step)
        return run.result(run.fit())
    finally:
        distributed.teardown()
