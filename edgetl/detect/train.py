"""Fine-tune a YOLO-style detector: ``train_detector(DetectTrainConfig(...))``.

A run writes into ``cfg.out``: ``best.pt`` (best validation mAP@0.5:0.95), ``last.pt``,
``metrics.json`` (per-epoch history), ``curves.png`` (losses and mAP) and ``config.yaml`` (reusable as
``edgetl train detect --config``). Checkpoints hold the EMA weights, the ones that are evaluated and
deployed.

Transfer strategies: ``frozen`` (backbone fixed, neck and head learn), ``partial`` (the stem and the
earliest blocks fixed), ``full`` (everything learns), ``scratch`` (random backbone, everything learns).
``freeze_epochs`` trains the first epochs with the whole backbone frozen, then switches to the strategy:
the new head settles before its gradients reach the pretrained features.

Reproducibility: on the CPU the same config gives the same weights (each epoch reseeds shuffling and
augmentation from ``(seed, epoch)``).
"""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError

log = logging.getLogger(__name__)

STRATEGIES = ("frozen", "partial", "full", "scratch")


@dataclass
class DetectTrainConfig:
    """Everything a detector training run depends on (saved in ``config.yaml`` and checkpoints).

    Args:
        data: data.yaml (YOLO layout) or COCO JSON.
        model: detector name (`edgetl.detect.list_detectors`).
        weights: backbone weights: ``pretrained``, ``none`` or a path to a state dict.
        strategy: ``frozen`` | ``partial`` | ``full`` | ``scratch`` (see the module docstring).
        freeze_epochs: epochs with the whole backbone frozen before the strategy applies.
        epochs: training epochs.
        batch_size: images per step.
        lr: peak learning rate (AdamW: 2e-3, SGD: 1e-2 when None).
        backbone_lr_scale: the backbone's learning rate relative to ``lr``.
        optimizer: ``adamw`` or ``sgd``.
        weight_decay: on conv/linear weights (norms and biases get none).
        img_size: square input size, a multiple of 32.
        augment: flips, scale/translate and colour jitter on the training images.
        warmup_epochs: linear learning-rate warm-up, then cosine decay.
        ema: evaluate and save an exponential moving average of the weights.
        ema_decay: EMA decay at full strength (it ramps up over the first steps).
        amp: mixed precision on CUDA (ignored on the CPU).
        grad_clip: gradient norm clip (0: off).
        patience: stop after this many epochs without a better mAP (None: never).
        eval_interval: validate every N epochs (and always after the last).
        max_steps: stop after this many optimizer steps (smoke tests).
        seed: seeds the split, initialisation, shuffling and augmentation.
        device: ``auto`` | ``cpu`` | ``cuda``.
        out: run directory.
        workers: data-loader worker processes.
        threads: CPU threads for PyTorch during the run (0: PyTorch's default). One thread is often
            faster on a small, busy machine, where threads wait on each other.
        strict: label problems are errors instead of being clipped/dropped with a report.
        val_fraction: held-out fraction when the dataset has no validation split.
    """

    data: str | Path = ""
    model: str = "yolo-lite0-n"
    weights: str = "pretrained"
    strategy: str = "partial"
    freeze_epochs: int = 0
    epochs: int = 30
    batch_size: int = 16
    lr: float | None = None
    backbone_lr_scale: float = 1.0
    optimizer: str = "adamw"
    weight_decay: float = 0.05
    img_size: int = 320
    augment: bool = True
    warmup_epochs: float = 1.0
    ema: bool = True
    ema_decay: float = 0.999
    amp: bool = True
    grad_clip: float = 10.0
    patience: int | None = None
    eval_interval: int = 1
    max_steps: int | None = None
    seed: int = 0
    device: str = "auto"
    out: str | Path = "runs/det"
    workers: int = 0
    threads: int = 0
    strict: bool = False
    val_fraction: float = 0.2
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
        if self.img_size < 32 or self.img_size % 32:
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

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["data"], d["out"] = str(self.data), str(self.out)
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


class ModelEMA:
    """Exponential moving average of a model's weights (buffers copied), with a warm-up ramp so the
    first steps are not dominated by the random head.

    Args:
        model: the training model.
        decay: decay at full strength.
        tau: steps over which the decay ramps up (``decay * (1 - exp(-step / tau))``).
    """

    def __init__(self, model: Any, decay: float = 0.999, tau: float = 200.0) -> None:
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)
        self.decay, self.tau, self.updates = decay, tau, 0

    def update(self, model: Any) -> None:
        import torch

        self.updates += 1
        d = self.decay * (1 - math.exp(-self.updates / self.tau))
        with torch.no_grad():
            own = self.module.state_dict()
            for key, value in model.state_dict().items():
                if value.dtype.is_floating_point:
                    own[key].mul_(d).add_(value.detach(), alpha=1 - d)
                else:
                    own[key].copy_(value)


def _seed_all(seed: int) -> Any:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _resolve_device(name: str) -> Any:
    import torch

    from edgetl.errors import EnvironmentMissingError

    if name not in ("auto", "cpu", "cuda"):
        raise BadInputError(f"unknown device {name!r}; expected auto, cpu or cuda")
    if name == "cuda" and not torch.cuda.is_available():
        raise EnvironmentMissingError("--device cuda, but torch sees no CUDA GPU", hint="use --device cpu")
    return torch.device("cuda" if name != "cpu" and torch.cuda.is_available() else "cpu")


def _param_groups(model: Any, lr: float, backbone_scale: float, weight_decay: float) -> list[dict[str, Any]]:
    """Backbone and neck/head groups, each split into decayed weights and undecayed norms/biases.

    Frozen parameters are included: they have no gradient so the optimizer skips them, and unfreezing
    later needs no new optimizer.
    """
    groups = []
    for name, module, scale in (("backbone", model.backbone, backbone_scale),
                                ("neck", model.neck, 1.0), ("head", model.head, 1.0)):
        params = list(module.parameters())
        for suffix, chosen, wd in (("", [p for p in params if p.ndim > 1], weight_decay),
                                   ("_no_decay", [p for p in params if p.ndim <= 1], 0.0)):
            if chosen:
                groups.append({"params": chosen, "lr": lr * scale, "initial_lr": lr * scale,
                               "weight_decay": wd, "name": name + suffix})
    return groups


def _lr_factor(step: int, total: int, warmup: int, min_factor: float = 0.05) -> float:
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * progress))


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
    from edgetl.errors import optional_import
    from edgetl.fileio import atomic_path

    matplotlib = optional_import("matplotlib", "train", purpose="training plots")
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


class _Run:
    """One training run: holds the model, data, optimizer and bookkeeping."""

    def __init__(self, cfg: DetectTrainConfig, progress: bool) -> None:
        import torch

        from edgetl.data.detection import load_detection_data
        from edgetl.detect.model import build_detector, detector_preprocess_spec

        cfg.validate()
        self.cfg, self.progress = cfg, progress
        self.device = _resolve_device(cfg.device)
        self.run_dir = Path(cfg.out)
        self.data = load_detection_data(cfg.data, strict=cfg.strict, val_fraction=cfg.val_fraction, seed=cfg.seed)
        if self.data.issues:
            log.warning("%s", self.data.report(max_files=5))
        if not self.data.val:
            raise BadInputError(f"{cfg.data}: no validation images", hint="add a val split or more train images")
        _seed_all(cfg.seed)
        weights = "none" if cfg.strategy == "scratch" else cfg.weights
        self.model = build_detector(cfg.model, num_classes=len(self.data.classes), weights=weights).to(self.device)
        self.spec = detector_preprocess_spec(cfg.model, cfg.img_size)
        self.lr = cfg.lr or (2e-3 if cfg.optimizer == "adamw" else 1e-2)
        groups = _param_groups(self.model, self.lr, cfg.backbone_lr_scale, cfg.weight_decay)
        if cfg.optimizer == "adamw":
            self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        else:
            self.optimizer = torch.optim.SGD(groups, momentum=0.9, nesterov=True)
        self.use_amp = bool(cfg.amp and self.device.type == "cuda")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)
        from edgetl.detect.loss import DetectionLoss

        self.loss = DetectionLoss(len(self.data.classes), self.model.reg_max)
        self.ema = ModelEMA(self.model, cfg.ema_decay) if cfg.ema else None
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"map": -1.0, "map50": 0.0, "epoch": 0}
        self.step = 0
        self.images_seen = 0
        self.train_seconds = 0.0

    # ---- pieces ----------------------------------------------------------------------------------
    def _backbone_mode(self, epoch: int) -> str:
        if epoch <= self.cfg.freeze_epochs or self.cfg.strategy == "frozen":
            return "frozen"
        return {"partial": "partial", "full": "full", "scratch": "full"}[self.cfg.strategy]

    def _loader(self, epoch: int) -> Any:
        import torch

        from edgetl.detect.dataset import DetectionTorchDataset, collate_detections

        dataset = DetectionTorchDataset(self.data.train, self.spec, train=True, augment=self.cfg.augment)
        generator = _seed_all(self.cfg.seed * 100_003 + epoch)
        return torch.utils.data.DataLoader(
            dataset, batch_size=self.cfg.batch_size, shuffle=True, generator=generator,
            num_workers=self.cfg.workers, collate_fn=collate_detections, drop_last=len(dataset) > self.cfg.batch_size,
        )

    def _eval_model(self) -> Any:
        return self.ema.module if self.ema is not None else self.model

    def _meta(self, epoch: int, metrics: dict[str, Any]) -> Any:
        from edgetl.train.checkpoint import CheckpointMeta

        return CheckpointMeta(
            task="detect", model=self.cfg.model, labels=list(self.data.classes), preprocess=self.spec,
            model_args=self.model.model_args(), train_config=self.cfg.to_dict(), epoch=epoch, metrics=metrics,
            provenance={"backbone": self.model.info.backbone, "backbone_weights": self.model.weights_source,
                        "dataset": str(self.cfg.data), "dataset_source": self.data.source,
                        "dataset_digest": _dataset_digest(self.data)},
        )

    def _state_dict(self) -> dict[str, Any]:
        return {k: v.detach().cpu().clone() for k, v in self._eval_model().state_dict().items()}

    def _train_epoch(self, epoch: int, loader: Any, total_steps: int, warmup: int) -> dict[str, float]:
        import torch

        model, cfg = self.model, self.cfg
        model.set_backbone_trainable(self._backbone_mode(epoch))
        model.train()
        sums = {"loss": 0.0, "box": 0.0, "cls": 0.0, "dfl": 0.0}
        batches = 0
        bar = None
        if self.progress:
            from tqdm import tqdm

            bar = tqdm(total=len(loader), desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False)
        started = time.perf_counter()
        for images, targets in loader:
            if cfg.max_steps is not None and self.step >= cfg.max_steps:
                break
            for group in self.optimizer.param_groups:
                group["lr"] = group["initial_lr"] * _lr_factor(self.step, total_steps, warmup)
            images = images.to(self.device, non_blocking=True)
            targets = targets.to(self.device)
            with torch.autocast("cuda", dtype=torch.float16, enabled=self.use_amp):
                outputs = model.forward_train(images)
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
                self.ema.update(model)
            self.step += 1
            batches += 1
            self.images_seen += images.shape[0]
            sums["loss"] += float(loss.detach())
            for key in ("box", "cls", "dfl"):
                sums[key] += parts[key]
            if bar is not None:
                bar.set_postfix(loss=f"{sums['loss'] / batches:.3f}")
                bar.update(1)
        if bar is not None:
            bar.close()
        self.train_seconds += time.perf_counter() - started
        return {f"train_{k}": v / max(1, batches) for k, v in sums.items()} | {"steps": batches}

    # ---- the run ---------------------------------------------------------------------------------
    def run(self) -> DetectTrainResult:
        import yaml

        from edgetl.detect.evaluate import PreparedImages, evaluate_model
        from edgetl.fileio import write_json, write_text
        from edgetl.train.checkpoint import save_checkpoint

        cfg = self.cfg
        started = time.perf_counter()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        write_text(self.run_dir / "config.yaml", yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        val_images = PreparedImages([s.path for s in self.data.val], self.spec, batch_size=max(1, cfg.batch_size))
        steps_per_epoch = max(1, len(self._loader(0)))
        total_steps = steps_per_epoch * cfg.epochs
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        warmup = min(int(cfg.warmup_epochs * steps_per_epoch), max(0, total_steps - 1))
        stopped, since_best, epoch = "completed", 0, 0
        last_metrics: dict[str, Any] = {}
        try:
            for epoch in range(1, cfg.epochs + 1):
                record: dict[str, Any] = {"epoch": epoch, "backbone": self._backbone_mode(epoch)}
                record |= self._train_epoch(epoch, self._loader(epoch), total_steps, warmup)
                record["lr"] = self.optimizer.param_groups[-1]["lr"]
                finished = cfg.max_steps is not None and self.step >= cfg.max_steps
                if epoch % cfg.eval_interval == 0 or epoch == cfg.epochs or finished:
                    metrics = evaluate_model(self._eval_model(), self.data.val, list(self.data.classes), self.spec,
                                             device=self.device, images=val_images)
                    m_all, m50 = float(metrics["map"] or 0.0), float(metrics["map50"] or 0.0)
                    record |= {"map50": m50, "map": m_all}
                    last_metrics = {"map50": m50, "map": m_all, "per_class": metrics.get("per_class", {})}
                    if m_all > self.best["map"]:
                        self.best = {"map": m_all, "map50": m50, "epoch": epoch,
                                     "per_class": metrics.get("per_class", {})}
                        save_checkpoint(self.run_dir / "best.pt", self._state_dict(), self._meta(epoch, last_metrics))
                        since_best = 0
                    else:
                        since_best += 1
                else:
                    record |= {"map50": None, "map": None}
                record["seconds"] = round(time.perf_counter() - started, 2)
                self.history.append(record)
                log.info("epoch %d: loss %.4f mAP %s", epoch, record["train_loss"], record["map"])
                save_checkpoint(self.run_dir / "last.pt", self._state_dict(), self._meta(epoch, last_metrics))
                write_json(self.run_dir / "metrics.json", self._document("running", started))
                if finished:
                    stopped = "max_steps"
                    break
                if cfg.patience is not None and since_best >= cfg.patience:
                    stopped = "early_stopping"
                    break
        except KeyboardInterrupt:
            stopped = "interrupted"
            write_json(self.run_dir / "metrics.json", self._document(stopped, started))
            raise
        write_json(self.run_dir / "metrics.json", self._document(stopped, started))
        plot_detection_curves(self.history, self.run_dir / "curves.png")
        return DetectTrainResult(
            run_dir=self.run_dir, best_checkpoint=self.run_dir / "best.pt", last_checkpoint=self.run_dir / "last.pt",
            best_map=float(self.best["map"]), best_map50=float(self.best["map50"]), best_epoch=int(self.best["epoch"]),
            history=self.history, seconds=round(time.perf_counter() - started, 2),
            images_per_second=round(self.images_seen / max(self.train_seconds, 1e-9), 2), stopped=stopped,
            issues=self.data.issue_counts(),
        )

    def _document(self, status: str, started: float) -> dict[str, Any]:
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
            "seconds": round(time.perf_counter() - started, 2),
            "images_per_second": round(self.images_seen / max(self.train_seconds, 1e-9), 2),
            "config": self.cfg.to_dict(),
            "device": str(self.device),
        }


def train_detector(cfg: DetectTrainConfig, progress: bool = True) -> DetectTrainResult:
    """Fine-tune a detector and write its run directory.

    Args:
        cfg: the run configuration.
        progress: show a progress bar per epoch on stderr.

    Returns:
        A `DetectTrainResult` (checkpoints, best mAP, per-epoch history, throughput).

    Raises:
        BadInputError: bad settings or dataset (exit code 2).
        EnvironmentMissingError: no pretrained weights offline, or ``--device cuda`` without a GPU (3).
    """
    import torch

    previous = torch.get_num_threads()
    if cfg.threads and cfg.threads > 0:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _Run(cfg, progress).run()
    finally:
        torch.set_num_threads(previous)
