"""The training core that classification and detection share.

A task (`edgetl.train.classify`, `edgetl.train.detect`) supplies its data, model, loss, one epoch of
training and one evaluation, as a subclass of `TrainingRun`. The core owns what is the same for every
task, so it is written once:

- seeding: the initialisation from ``seed``, and every epoch's shuffling, augmentation and dropout from
  ``(seed, epoch)`` (`seed_epoch`), so a resumed run continues exactly as an uninterrupted one would;
- the device (`resolve_device`), the warm-up + cosine schedule (`edgetl.train.loop.lr_factor`) and the
  exponential moving average of the weights (`ModelEma`, timm's ``ModelEmaV3``);
- the run directory: ``config.yaml``, ``best.pt`` (best validation score), ``last.pt`` (latest state
  with optimizer, EMA and progress, for ``--resume``), ``metrics.json``;
- the epoch loop: early stopping (``patience``), ``max_steps``, and Ctrl-C (``last.pt`` always holds
  the end of the last complete epoch, ``metrics.json`` says ``"status": "interrupted"``);
- the CPU allocator setting that keeps a training step from page-faulting (`edgetl.train.cpu_memory`).
"""

from __future__ import annotations

import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError, EnvironmentMissingError
from edgetl.fileio import write_text
from edgetl.lazy import lazy_import
from edgetl.train import distributed
from edgetl.train.checkpoint import CheckpointMeta, load_checkpoint, save_checkpoint
from edgetl.train.cpu_memory import keep_freed_memory
from edgetl.train.report import write_metrics

torch = lazy_import("torch", "train", purpose="training")
timm_utils = lazy_import("timm.utils", "train", purpose="training")
timm_layers = lazy_import("timm.layers", "train", purpose="training")

log = logging.getLogger(__name__)

EPOCH_SEED_STRIDE = 100_003
RANK_SEED_STRIDE = 1_000_003


def seed_everything(seed: int) -> Any:
    """Seed Python, NumPy and torch; returns a torch ``Generator`` seeded the same (for a DataLoader)."""
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def seed_epoch(seed: int, epoch: int, rank: int = 0) -> Any:
    """Reseed everything for one epoch from ``(seed, epoch)``: an epoch replays the same after a resume.

    Each data-parallel rank gets its own stream (``rank``), so ranks do not draw the same augmentations.
    """
    return seed_everything(seed * EPOCH_SEED_STRIDE + epoch + rank * RANK_SEED_STRIDE)


DEVICES_HINT = "use --device auto, cpu, cuda or cuda:N"


def check_device_name(name: str) -> None:
    """Refuse a device name that is not ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (exit code 2)."""
    if name in ("auto", "cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit()):
        return
    raise BadInputError(f"--device {name!r} is not a device", hint=DEVICES_HINT)


def resolve_device(name: str) -> Any:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an environment error (exit 3)."""

    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EnvironmentMissingError(f"--device {name}: no CUDA GPU is visible to torch", hint="use --device cpu")
    return torch.device(name)


def _ema_base() -> type:
    ModelEmaV3 = timm_utils.ModelEmaV3

    return ModelEmaV3


def make_ema(model: Any, decay: float, tau: float = 200.0) -> Any:
    """An EMA of ``model``'s weights (parameters and buffers): timm's ``ModelEmaV3`` with a ramp.

    The decay ramps as ``decay * (1 - exp(-updates / tau))``, so the first steps, taken while the new
    head is still random, do not dominate the average. ``ema.module`` is the averaged model;
    ``ema.step(model)`` updates it after an optimizer step.

    Args:
        model: the training model (unwrapped, not the DistributedDataParallel wrapper).
        decay: decay at full strength.
        tau: steps over which the decay ramps up.
    """
    base = _ema_base()

    class ModelEma(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            super().__init__(model, decay=decay)
            self.tau = tau
            self.updates = 0

        def get_decay(self, step: int | None = None) -> float:
            updates = self.updates if step is None else step
            return self.decay * (1 - math.exp(-updates / self.tau))

        def step(self, trained: Any) -> None:
            self.updates += 1
            self.update(trained, step=self.updates)

    return ModelEma()


def cpu_state_dict(model: Any) -> dict[str, Any]:
    """A detached, contiguous CPU copy of ``model``'s state dict (what a checkpoint stores)."""

    return {k: v.detach().to("cpu").contiguous().clone() if isinstance(v, torch.Tensor) else v
            for k, v in model.state_dict().items()}


def progress_bar(total: int, desc: str, unit: str, enabled: bool) -> Any:
    """A tqdm bar on stderr (disabled when ``enabled`` is False)."""
    from edgetl.lazy import require

    tqdm = require("tqdm", "train").tqdm
    return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=not enabled, dynamic_ncols=True)


def say(message: str) -> None:
    """A progress line for people: stderr, so stdout stays clean for results."""
    print(message, file=sys.stderr, flush=True)


@dataclass
class EpochOutcome:
    """What a task reports after one epoch.

    Attributes:
        entry: the epoch's row of the history (``metrics.json``, the curves).
        score: the validation score to maximise (None when the epoch was not evaluated).
        metrics: what ``best.pt`` and ``last.pt`` store as the checkpoint's metrics.
        steps: optimizer steps taken this epoch.
        full_epoch: False when ``max_steps`` cut the epoch short.
    """

    entry: dict[str, Any]
    score: float | None
    metrics: dict[str, Any] = field(default_factory=dict)
    steps: int = 0
    full_epoch: bool = True


class TrainingRun:
    """One training run; a task subclasses it and supplies the parts marked "task".

    The configuration is a `edgetl.train.config.RunConfig` with a ``validate`` method. The subclass
    sets ``model``, ``optimizer`` and optionally ``ema`` and ``scaler`` before `fit`, and implements
    `train_and_evaluate`, `meta`, `document` and `draw`; it may override `check_resume`,
    `announce` and `epoch_line`.
    """

    task = ""

    def __init__(self, cfg: Any, progress: bool, on_step: Callable[[int], None] | None = None) -> None:
        cfg.validate()
        self.cfg = cfg
        self.on_step = on_step
        self.dist, self.device = distributed.setup(resolve_device(cfg.device))
        self.is_main = self.dist.is_main
        self.progress = progress and self.is_main
        self.amp = bool(cfg.amp and self.device.type == "cuda")
        self.channels_last = bool(cfg.channels_last)
        self.run_dir = Path(cfg.out)
        self.model: Any = None
        self.optimizer: Any = None
        self.scaler: Any = None
        self.ema: Any = None
        self.history: list[dict[str, Any]] = []
        self.best_score = -1.0
        self.best_epoch = 0
        self.best_metrics: dict[str, Any] = {}
        self.since_best = 0
        self.start_epoch = 1
        self.step = 0
        self.train_images = 0
        self.train_seconds = 0.0

    def place_model(self, model: Any) -> Any:
        """Make ``model`` ready to train, the same way for every task: on the run's device, in NHWC when
        ``channels_last`` (the depthwise networks train faster in it, on CPU and GPU), and with its ReLU6
        activations keeping only their outputs for the backward pass (`edgetl.train.activations`)."""
        from edgetl.train.activations import lean_relu6

        lean_relu6(model)
        model.to(self.device)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model

    # -- task ----------------------------------------------------------------------------------
    def train_and_evaluate(self, epoch: int) -> EpochOutcome:  # pragma: no cover - abstract
        """Train one epoch (advancing ``self.step``) and evaluate when due."""
        raise NotImplementedError

    def meta(self, epoch: int, metrics: dict[str, Any]) -> CheckpointMeta:  # pragma: no cover - abstract
        """The checkpoint's deploy-relevant facts."""
        raise NotImplementedError

    def document(self, status: str) -> dict[str, Any]:  # pragma: no cover - abstract
        """The ``metrics.json`` document."""
        raise NotImplementedError

    def draw(self) -> None:
        """Write the run's plots (curves, confusion) from the history."""

    def on_best(self, outcome: EpochOutcome) -> None:
        """Called when an epoch improves the best score (before ``best.pt`` is written)."""

    def check_resume(self, path: Path, raw: dict[str, Any], meta: CheckpointMeta) -> None:
        """Refuse a checkpoint of another task, model or label set (BadInputError)."""
        if meta.task != self.task or meta.model != self.cfg.model:
            raise BadInputError(f"--resume {path}: a {meta.task} checkpoint of {meta.model}, "
                                f"not a {self.task} checkpoint of {self.cfg.model}")

    def announce(self) -> None:
        """Log the dataset and plan before the first epoch."""

    def epoch_line(self, entry: dict[str, Any]) -> str:
        return f"epoch {entry['epoch']}"

    # -- shared --------------------------------------------------------------------------------
    def scaled_lr(self, lr: float) -> float:
        """The learning rate for the global batch: ``lr`` is for one process's ``batch_size``; with N
        processes the global batch is N times larger and the rate N times higher (linear scaling rule)."""
        return lr * self.dist.world

    def check_dataset(self, digest: str) -> None:
        """Every rank must train on the same files; the first collective of the run checks it."""
        distributed.check_same(self.dist, digest, "dataset (file list and labels)")

    def parallel(self, module: Any, sync_bn: bool) -> Any:
        """``module`` as this rank trains it: wrapped in DistributedDataParallel under torchrun.

        Args:
            module: what the optimizer steps (the model, or the head of a linear probe).
            sync_bn: the strategy trains BatchNorm; on GPUs its statistics are then synchronised
                across ranks (SyncBatchNorm). Gloo has no SyncBatchNorm, so on CPUs each rank keeps its
                own batch statistics and rank 0's are copied to all at the end of every epoch.
        """
        if not self.dist.enabled:
            return module
        DistributedDataParallel = torch.nn.parallel.DistributedDataParallel

        if sync_bn and self.device.type == "cuda":
            convert_sync_batchnorm = timm_layers.convert_sync_batchnorm

            module = convert_sync_batchnorm(module)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)

    def sampler(self, dataset: Any, epoch: int) -> Any:
        """This rank's shuffled share of ``dataset`` for ``epoch`` (None in a single process)."""
        if not self.dist.enabled:
            return None
        DistributedSampler = torch.utils.data.DistributedSampler

        sampler = DistributedSampler(dataset, num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True,
                                     seed=self.cfg.seed)
        sampler.set_epoch(epoch)
        return sampler

    def parallel_line(self) -> str:
        """How the run is split: processes, backend, global batch, the scaled learning rate."""
        return (f"  data-parallel: {self.dist.world} processes ({self.dist.backend}), global batch "
                f"{self.cfg.batch_size * self.dist.world} ({self.cfg.batch_size} per process), learning rate "
                f"scaled x{self.dist.world}")

    def per_rank(self, n: int) -> int:
        """Items of an ``n``-item set that each rank trains on per epoch."""
        return -(-n // self.dist.world)

    def sync_state(self) -> None:
        """Give every rank rank 0's BatchNorm statistics (model and EMA), before evaluation and saving."""
        distributed.broadcast_buffers(self.dist, self.model)
        if self.ema is not None:
            distributed.broadcast_buffers(self.dist, self.ema.module)

    @property
    def done(self) -> bool:
        """True once ``max_steps`` optimizer steps have been taken."""
        return self.cfg.max_steps is not None and self.step >= self.cfg.max_steps

    def total_steps(self, steps_per_epoch: int) -> int:
        """Steps the schedule spans: every epoch, or ``max_steps`` when that is fewer."""
        total = self.cfg.epochs * max(1, steps_per_epoch)
        return total if self.cfg.max_steps is None else min(total, self.cfg.max_steps)

    def weights(self) -> dict[str, Any]:
        """The weights a checkpoint deploys: the EMA's when there is one."""
        return cpu_state_dict(self.ema.module if self.ema is not None else self.model)

    def save_last(self, epoch: int, metrics: dict[str, Any], interrupted: bool = False) -> Path:
        """``last.pt``: the deployable weights plus everything `resume` needs to continue (rank 0 writes)."""
        if not self.is_main:
            return self.run_dir / "last.pt"
        resume = {"epoch": epoch, "step": self.step, "history": self.history, "best_score": self.best_score,
                  "best_epoch": self.best_epoch, "best_metrics": self.best_metrics, "since_best": self.since_best,
                  "interrupted": interrupted}
        extra: dict[str, Any] = {"optimizer": self.optimizer.state_dict(), "resume": resume}
        if self.ema is not None:
            extra["train_state_dict"] = cpu_state_dict(self.model)
            resume["ema_updates"] = int(self.ema.updates)
        if self.scaler is not None:
            extra["scaler"] = self.scaler.state_dict()
        return save_checkpoint(self.run_dir / "last.pt", self.weights(), self.meta(epoch, metrics), **extra)

    def resume(self, path: str | Path) -> None:
        """Continue from a ``last.pt`` (or its run directory): weights, optimizer, EMA, progress."""
        path = Path(path)
        if path.is_dir():
            path = path / "last.pt"
        raw, meta = load_checkpoint(path)
        self.check_resume(path, raw, meta)
        if "resume" not in raw or "optimizer" not in raw:
            raise BadInputError(f"--resume {path}: holds no training state", hint="resume from a run's last.pt")
        state = raw["resume"]
        if self.ema is not None and "train_state_dict" not in raw:
            raise BadInputError(f"--resume {path}: written without an EMA; resume with --no-ema")
        self.model.load_state_dict(raw.get("train_state_dict", raw["state_dict"]))
        if self.ema is not None:
            self.ema.module.load_state_dict(raw["state_dict"])
            self.ema.updates = int(state.get("ema_updates", 0))
        planned = [(g["lr"], g["initial_lr"]) for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(raw["optimizer"])
        except ValueError as exc:
            raise BadInputError(f"--resume {path}: optimizer state does not fit this strategy ({exc})") from exc
        for group, (lr, initial) in zip(self.optimizer.param_groups, planned):  # this run's (scaled) rates
            group["lr"], group["initial_lr"] = lr, initial
        if self.scaler is not None and "scaler" in raw:
            self.scaler.load_state_dict(raw["scaler"])
        self.start_epoch = int(state["epoch"]) + 1
        self.step = int(state["step"])
        self.history = list(state["history"])
        self.best_score = float(state.get("best_score", state.get("best_top1", -1.0)))
        self.best_epoch = int(state["best_epoch"])
        self.best_metrics = dict(state.get("best_metrics", {}))
        self.since_best = int(state.get("since_best", max(0, self.start_epoch - 1 - self.best_epoch)))

    def _end_epoch(self, epoch: int, outcome: EpochOutcome) -> None:
        self.history.append(outcome.entry)
        if outcome.score is not None:
            if outcome.score > self.best_score:
                self.best_score, self.best_epoch, self.since_best = outcome.score, epoch, 0
                self.best_metrics = outcome.metrics
                self.on_best(outcome)
                if self.is_main:
                    save_checkpoint(self.run_dir / "best.pt", self.weights(), self.meta(epoch, outcome.metrics))
            else:
                self.since_best += 1
        self.last_metrics = outcome.metrics
        self.save_last(epoch, outcome.metrics)
        if not self.is_main:
            return
        if self.progress:  # shown once: on the console with progress, else in the log
            say(self.epoch_line(outcome.entry))
        else:
            log.info("%s", self.epoch_line(outcome.entry))
        write_metrics(self.run_dir, self.document("running"))

    def report(self, status: str) -> None:
        """The final ``metrics.json`` and plots (rank 0)."""
        if self.is_main:
            write_metrics(self.run_dir, self.document(status))
            self.draw()

    def fit(self) -> str:
        """Run the epochs; returns why it stopped: ``completed``, ``max_steps`` or ``early_stopping``.

        Raises:
            KeyboardInterrupt: after writing a usable ``last.pt`` and ``metrics.json``.
        """
        import yaml

        self.started = time.perf_counter()
        self.last_metrics: dict[str, Any] = {}
        if self.device.type == "cpu":
            keep_freed_memory()
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            write_text(self.run_dir / "config.yaml", yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
            self.announce()
        stopped = "completed"
        try:
            for epoch in range(self.start_epoch, self.cfg.epochs + 1):
                if self.done:
                    stopped = "max_steps"
                    break
                outcome = self.train_and_evaluate(epoch)
                self._end_epoch(epoch, outcome)
                if self.done and (epoch < self.cfg.epochs or not outcome.full_epoch):
                    stopped = "max_steps"
                    break
                if self.cfg.patience and self.since_best >= self.cfg.patience:
                    stopped = "early_stopping"
                    break
        except KeyboardInterrupt:
            # last.pt already holds the end of the last complete epoch, so a resume replays the
            # interrupted epoch exactly; only when no epoch finished is the current state written.
            if self.is_main and (not (self.run_dir / "last.pt").is_file() or not self.history):
                self.save_last(self.start_epoch - 1, {}, interrupted=True)
            self.report("interrupted")
            raise
        if not self.history:
            raise BadInputError("no epoch ran", hint="raise --epochs or --max-steps, or check --resume")
        self.report(stopped)
        return stopped

    @property
    def seconds(self) -> float:
        return round(time.perf_counter() - self.started, 3)

    @property
    def images_per_second(self) -> float:
        return round(self.train_images / self.train_seconds, 2) if self.train_seconds else 0.0
