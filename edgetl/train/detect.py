"""Fine-tune a YOLO-style detector: ``train_detector(DetectTrainConfig(...))``.

A run writes into ``cfg.out``: ``best.pt`` (best validation mAP@0.5:0.95), ``last.pt``,
``metrics.json`` (per-epoch history), ``curves.png`` (losses and mAP) and ``config.yaml`` (reusable as
``edgetl train detect --config``). Checkpoints hold the EMA weights, the ones that are evaluated and
deployed.

Transfer strategies: ``frozen`` (backbone fixed, neck and head learn), ``partial`` (the stem and the
earliest blocks fixed), ``full`` (everything learns), ``scratch`` (random backbone, everything learns).
``freeze_epochs`` trains the first epochs with the whole backbone frozen, then switches to the strategy:
the new head settles before its gradients reach the pretrained features.

The epochs, seeding, schedule, EMA, checkpoints and resume are the shared training core
(`edgetl.train.engine`); this module supplies the detector, its data, augmentation and loss.

Ctrl-C and ``resume``: ``last.pt`` holds the EMA weights (deployable as is) plus the raw training
weights, optimizer, EMA and progress, so ``--resume`` continues exactly where the last complete epoch
ended.

Reproducibility: on the CPU the same config gives the same weights (each epoch reseeds shuffling and
augmentation from ``(seed, epoch)``), with or without an interruption and resume in between.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.train import distributed
from edgetl.train.checkpoint import CheckpointMeta
from edgetl.train.config import RunConfig
from edgetl.train.engine import (
    EpochOutcome,
    TrainingRun,
    check_device_name,
    make_ema,
    progress_bar,
    seed_epoch,
    seed_everything,
)
from edgetl.train.loop import build_optimizer, lr_factor, set_lr

torch = lazy_import("torch", "train", purpose="training")

log = logging.getLogger(__name__)

STRATEGIES = ("frozen", "partial", "full", "scratch")


@dataclass
class DetectTrainConfig(RunConfig):
    """A detector training run: the shared options (`edgetl.train.config.RunConfig`) and these.

    Args:
        data: data.yaml (YOLO layout) or COCO JSON.
        model: detector name (`edgetl.detect.list_detectors`).
        weights: backbone weights: ``pretrained``, ``none`` or a path to a state dict.
        strategy: ``frozen`` | ``partial`` | ``full`` | ``scratch`` (see the module docstring).
        freeze_epochs: epochs with the whole backbone frozen before the strategy applies.
        lr: peak learning rate (AdamW: 2e-3, SGD: 1e-2 when None).
        img_size: square input size, a multiple of 32.
        augment: flips, scale/translate and colour jitter on the training images.
        ema: evaluate and save an exponential moving average of the weights (timm's ``ModelEmaV3``).
        ema_decay: EMA decay at full strength (it ramps up over the first steps).
        eval_interval: validate every N epochs (and always after the last).
        threads: CPU threads for PyTorch during the run (0: PyTorch's default). One thread is often
            faster on a small, busy machine, where threads wait on each other.
        strict: label problems are errors instead of being clipped/dropped with a report.
    """

    model: str = "yolo-lite0-n"
    epochs: int = 30
    batch_size: int = 16
    weight_decay: float | None = 0.05
    img_size: int | None = 320
    grad_clip: float | None = 10.0
    out: str | Path = "runs/det"
    freeze_epochs: int = 0
    ema: bool = True
    ema_decay: float = 0.999
    eval_interval: int = 1
    threads: int = 0
    strict: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        """Reject inconsistent settings before any work starts (exit code 2 at the CLI)."""
        from edgetl.detect.model import get_detector_info

        if not str(self.data):
            raise BadInputError("no dataset given", hint="pass --data path/to/data.yaml")
        get_detector_info(self.model)
        if self.strategy not in STRATEGIES:
            raise BadInputError(f"unknown strategy {self.strategy!r}; expected one of {STRATEGIES}")
        if self.optimizer not in ("adamw", "sgd"):
            raise BadInputError(f"unknown optimizer {self.optimizer!r}; expected adamw or sgd")
        if self.img_size is None or self.img_size < 32 or self.img_size % 32:
            raise BadInputError(f"--img-size must be a positive multiple of 32, got {self.img_size}")
        for name in ("epochs", "batch_size", "eval_interval"):
            if int(getattr(self, name)) < 1:
                raise BadInputError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.freeze_epochs < 0:
            raise BadInputError(f"freeze_epochs must be >= 0, got {self.freeze_epochs}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise BadInputError(f"ema_decay must be in [0, 1), got {self.ema_decay}")
        if self.lr is not None and self.lr <= 0:
            raise BadInputError(f"lr must be positive, got {self.lr}")
        check_device_name(self.device)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DetectTrainConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"unknown detector training options {unknown}")
        return cls(**data)


@dataclass
class DetectTrainResult:
    """What a run produced: files, the best mAP and the per-epoch history."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    best_map: float
    best_map50: float
    best_epoch: int
    history: list[dict[str, Any]]
    seconds: float
    images_per_second: float
    stopped: str = "completed"
    issues: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("run_dir", "best_checkpoint", "last_checkpoint"):
            d[key] = str(d[key])
        return d


def _dataset_digest(data: Any) -> str:
    import hashlib

    digest = hashlib.sha256()
    for split, samples in (("train", data.train), ("val", data.val)):
        for s in samples:
            digest.update(f"{split}:{Path(s.path).name}:{s.boxes.round(1).tobytes().hex()}:{s.labels.tobytes().hex()}"
                          .encode())
    return digest.hexdigest()[:16]


def plot_detection_curves(history: list[dict[str, Any]], path: str | Path) -> Path | None:
    """Training losses and validation mAP per epoch (PNG, written atomically)."""
    if not history:
        return None
    from edgetl.fileio import atomic_path
    from edgetl.lazy import require

    matplotlib = require("matplotlib", "train", purpose="training plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("loss", "box", "cls", "dfl"):
        ax_loss.plot(epochs, [h[f"train_{key}"] for h in history], "o-", label=key)
    ax_loss.set(xlabel="epoch", ylabel="train loss", title="loss")
    evaluated = [h for h in history if h.get("map") is not None]
    ax_map.plot([h["epoch"] for h in evaluated], [h["map50"] for h in evaluated], "o-", label="mAP@0.5")
    ax_map.plot([h["epoch"] for h in evaluated], [h["map"] for h in evaluated], "o-", label="mAP@0.5:0.95")
    ax_map.set(xlabel="epoch", ylabel="mAP", title="validation", ylim=(0, 1))
    for ax in (ax_loss, ax_map):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


class _Run(TrainingRun):
    """A detector run: the data, model, loss and augmentation; `TrainingRun` runs the epochs."""

    task = "detect"

    def __init__(self, cfg: DetectTrainConfig, progress: bool, on_step: Callable[[int], None] | None) -> None:

        from edgetl.data.detection import load_detection_data
        from edgetl.detect.loss import DetectionLoss
        from edgetl.detect.model import build_detector, detector_preprocess_spec

        super().__init__(cfg, progress, on_step)
        self.cfg: DetectTrainConfig = cfg
        self.data = load_detection_data(cfg.data, strict=cfg.strict, val_fraction=cfg.val_fraction, seed=cfg.seed)
        if self.data.issues:
            log.warning("%s", self.data.report(max_files=5))
        if not self.data.val:
            raise BadInputError(f"{cfg.data}: no validation images", hint="add a val split or more train images")
        self.check_dataset(_dataset_digest(self.data))
        seed_everything(cfg.seed)
        weights = "none" if cfg.strategy == "scratch" else cfg.weights
        self.model = self.place_model(build_detector(cfg.model, num_classes=len(self.data.classes), weights=weights))
        self.spec = detector_preprocess_spec(cfg.model, cfg.img_size)
        self.lr = self.scaled_lr(cfg.lr or (2e-3 if cfg.optimizer == "adamw" else 1e-2))
        groups = [{"params": list(module.parameters()), "lr": self.lr * scale, "name": name}
                  for name, module, scale in (("backbone", self.model.backbone, cfg.backbone_lr_scale),
                                              ("neck", self.model.neck, 1.0), ("head", self.model.head, 1.0))]
        self.optimizer = build_optimizer(groups, cfg.optimizer, cfg.weight_decay, include_frozen=True)
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.loss = DetectionLoss(len(self.data.classes), self.model.reg_max)
        self.ema = make_ema(self.model, cfg.ema_decay) if cfg.ema else None
        self.best: dict[str, Any] = {"map": -1.0, "map50": 0.0, "epoch": 0}
        self._val_images: Any = None
        self._forward: Any = None
        self._forward_mode = ""
        if cfg.resume:
            self.resume(cfg.resume)
            if self.best_epoch:
                self.best = {"map": self.best_score, "epoch": self.best_epoch, "map50": 0.0, **self.best_metrics}

    # ---- pieces ----------------------------------------------------------------------------------
    def announce(self) -> None:
        if self.dist.enabled:
            log.info("%s", self.parallel_line().strip())

    def _backbone_mode(self, epoch: int) -> str:
        if epoch <= self.cfg.freeze_epochs or self.cfg.strategy == "frozen":
            return "frozen"
        return {"partial": "partial", "full": "full", "scratch": "full"}[self.cfg.strategy]

    def _drop_last(self) -> bool:
        return self.per_rank(len(self.data.train)) > self.cfg.batch_size

    def _steps_per_epoch(self) -> int:
        n, b = self.per_rank(len(self.data.train)), self.cfg.batch_size
        return max(1, n // b if self._drop_last() else -(-n // b))

    def _loader(self, epoch: int) -> Any:

        from edgetl.detect.dataset import DetectionTorchDataset, collate_detections

        dataset = DetectionTorchDataset(self.data.train, self.spec, train=True, augment=self.cfg.augment)
        generator = seed_epoch(self.cfg.seed, epoch, self.dist.rank)
        sampler = self.sampler(dataset, epoch)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=sampler is None, generator=generator, sampler=sampler,
            num_workers=self.cfg.workers, collate_fn=collate_detections, drop_last=self._drop_last(),
        )

    def _train_forward(self, mode: str) -> Any:
        """The training forward (``forward_train``), wrapped for data-parallel training; rebuilt when the
        backbone's trainable set changes, since DistributedDataParallel fixes it when it is built."""
        if self._forward is None or mode != self._forward_mode:

            class TrainForward(torch.nn.Module):
                def __init__(self, model: Any) -> None:
                    super().__init__()
                    self.model = model

                def forward(self, images: Any) -> Any:
                    return self.model.forward_train(images)

            self._forward = self.parallel(TrainForward(self.model), sync_bn=mode != "frozen")
            self._forward_mode = mode
        return self._forward

    def _eval_model(self) -> Any:
        return self.ema.module if self.ema is not None else self.model

    def meta(self, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:
        return CheckpointMeta(
            task="detect", model=self.cfg.model, labels=list(self.data.classes), preprocess=self.spec,
            model_args=self.model.model_args(), train_config=self.cfg.to_dict(), epoch=epoch, metrics=metrics,
            provenance={"backbone": self.model.info.backbone, "backbone_weights": self.model.weights_source,
                        "dataset": str(self.cfg.data), "dataset_source": self.data.source,
                        "dataset_digest": _dataset_digest(self.data)},
        )

    def check_resume(self, path: Path, raw: dict[str, Any], meta: CheckpointMeta) -> None:
        super().check_resume(path, raw, meta)
        if meta.labels != list(self.data.classes):
            raise BadInputError(f"--resume {path}: its classes {meta.labels} differ from the dataset's "
                                f"{list(self.data.classes)}")

    def _train_epoch(self, epoch: int, loader: Any) -> dict[str, float]:

        model, cfg = self.model, self.cfg
        mode = self._backbone_mode(epoch)
        model.set_backbone_trainable(mode)
        forward = self._train_forward(mode)
        model.train()
        total = self.total_steps(self._steps_per_epoch())
        warmup = min(int(cfg.warmup_epochs * self._steps_per_epoch()), max(0, total - 1))
        sums = {"loss": 0.0, "box": 0.0, "cls": 0.0, "dfl": 0.0}
        batches = images_seen = 0
        bar = progress_bar(len(loader), f"epoch {epoch}/{cfg.epochs}", "batch", self.progress)
        started = time.perf_counter()
        for images, targets in loader:
            if self.done:
                break
            set_lr(self.optimizer, lr_factor(self.step, total, warmup, min_factor=0.05))
            images = images.to(self.device, non_blocking=True)
            if self.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            targets = targets.to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.amp):
                outputs = forward(images)
            loss, parts = self.loss(outputs, targets)
            if not torch.isfinite(loss):
                raise BadInputError(f"the loss became {float(loss)} at step {self.step}",
                                    hint="lower --lr, or check the labels with `edgetl data check`")
            self.optimizer.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            if cfg.grad_clip:
                self.scaler.unscale_(self.optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
            if self.ema is not None:
                self.ema.step(model)
            self.step += 1
            if self.on_step is not None:
                self.on_step(self.step)
            batches += 1
            images_seen += images.shape[0]
            sums["loss"] += float(loss.detach())
            for key in ("box", "cls", "dfl"):
                sums[key] += parts[key]
            bar.set_postfix(loss=f"{sums['loss'] / batches:.3f}")
            bar.update(1)
        bar.close()
        self.train_seconds += time.perf_counter() - started
        keys = list(sums)
        totals = distributed.all_reduce_sum(self.dist, [sums[k] for k in keys] + [batches, images_seen])
        images = int(totals[-1])  # what the epoch trained on across processes (a last partial batch is dropped)
        self.train_images += images
        means = {f"train_{k}": v / max(1, totals[-2]) for k, v in zip(keys, totals)}
        return means | {"steps": batches, "images": images}

    def train_and_evaluate(self, epoch: int) -> EpochOutcome:
        from edgetl.detect.evaluate import PreparedImages, evaluate_model

        cfg = self.cfg
        if self._val_images is None and self.is_main:
            self._val_images = PreparedImages([s.path for s in self.data.val], self.spec,
                                              batch_size=max(1, cfg.batch_size))
        record: dict[str, Any] = {"epoch": epoch, "backbone": self._backbone_mode(epoch)}
        record |= self._train_epoch(epoch, self._loader(epoch))
        record["lr"] = self.optimizer.param_groups[-1]["lr"]
        score, metrics = None, self.last_metrics
        self.sync_state()
        if epoch % cfg.eval_interval == 0 or epoch == cfg.epochs or self.done:
            result = distributed.broadcast_object(
                self.dist, evaluate_model(self._eval_model(), self.data.val, list(self.data.classes), self.spec,
                                          device=self.device, images=self._val_images) if self.is_main else None,
                "sharing the validation result")
            m_all, m50 = float(result["map"] or 0.0), float(result["map50"] or 0.0)
            record |= {"map50": m50, "map": m_all}
            metrics = {"map50": m50, "map": m_all, "per_class": result.get("per_class", {})}
            score = m_all
        else:
            record |= {"map50": None, "map": None}
        record["seconds"] = round(time.perf_counter() - self.started, 2)
        return EpochOutcome(entry=record, score=score, metrics=metrics, steps=record["steps"],
                            full_epoch=record["steps"] >= self._steps_per_epoch())

    def on_best(self, outcome: EpochOutcome) -> None:
        self.best = {"map": outcome.score, "map50": outcome.metrics["map50"], "epoch": outcome.entry["epoch"],
                     "per_class": outcome.metrics.get("per_class", {})}

    def epoch_line(self, entry: dict[str, Any]) -> str:
        return f"epoch {entry['epoch']}: loss {entry['train_loss']:.4f} mAP {entry['map']}"

    def document(self, status: str) -> dict[str, Any]:
        return {
            "task": "detect",
            "status": status,
            "model": self.cfg.model,
            "classes": list(self.data.classes),
            "train_images": len(self.data.train),
            "val_images": len(self.data.val),
            "val_source": self.data.val_source,
            "best": self.best,
            "history": self.history,
            "label_issues": self.data.issue_counts(),
            "seconds": round(self.seconds, 2),
            "images_per_second": self.images_per_second,
            "config": self.cfg.to_dict(),
            "device": str(self.device),
        }

    def draw(self) -> None:
        plot_detection_curves(self.history, self.run_dir / "curves.png")

    def result(self, stopped: str) -> DetectTrainResult:
        return DetectTrainResult(
            run_dir=self.run_dir, best_checkpoint=self.run_dir / "best.pt", last_checkpoint=self.run_dir / "last.pt",
            best_map=float(self.best["map"]), best_map50=float(self.best["map50"]), best_epoch=int(self.best["epoch"]),
            history=self.history, seconds=round(self.seconds, 2), images_per_second=self.images_per_second,
            stopped=stopped, issues=self.data.issue_counts(),
        )


def train_detector(cfg: DetectTrainConfig, progress: bool = True,
                   on_step: Callable[[int], None] | None = None) -> DetectTrainResult:
    """Fine-tune a detector and write its run directory.

    Args:
        cfg: the run configuration.
        progress: show a progress bar per epoch on stderr.
        on_step: called with the global step after every optimizer step (tests, custom logging).

    Returns:
        A `DetectTrainResult` (checkpoints, best mAP, per-epoch history, throughput).

    Raises:
        BadInputError: bad settings or dataset (exit code 2).
        EnvironmentMissingError: no pretrained weights offline, or ``--device cuda`` without a GPU (3).
        KeyboardInterrupt: after writing a usable ``last.pt`` and ``metrics.json``.
    """

    previous = torch.get_num_threads()
    if cfg.threads and cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    try:
        run = _Run(cfg, progress, on_step)
        return run.result(run.fit())
    finally:
        distributed.teardown()
        torch.set_num_threads(previous)
