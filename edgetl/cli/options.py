"""Options that mean one thing in every verb, and the old spellings they replace.

* ``--device``: where to run: ``auto``, ``cpu``, ``cuda`` or ``cuda:N`` (GPU N). Verbs that build for or run
  on one GPU take ``cuda:N``; the others ``auto|cpu|cuda``. (``edgetl compile --device N`` is the old form.)
* ``--batch-size``: one batch size, an integer. Lists of sizes have their own names: ``--batch-sizes`` (the
  sizes ``edgetl bench`` measures) and ``--batch-profile`` (``edgetl compile``'s min,opt,max). (Both verbs
  used to call these ``--batch``.)
* ``--precision``: precision names of `edgetl.runtime.artifacts` (``fp32``, ``fp16``, ``int8``, ``best``).
* ``--strategy``: what fine-tuning trains, the same four names for classifiers and detectors: ``frozen``
  (backbone fixed), ``partial``, ``full``, ``scratch``. (Classifiers used to call ``frozen`` ``linear-probe``.)

An old spelling keeps working for one release and prints a note on stderr saying what replaces it, also when
it comes from a ``--config`` file.
"""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import click

from edgetl.cli.common import say
from edgetl.runtime.artifacts import PRECISION_CHOICES

DEVICES = ("auto", "cpu", "cuda")
STRATEGIES = ("frozen", "partial", "full", "scratch")
#: Old strategy names -> the shared name.
OLD_STRATEGIES = {"linear-probe": "frozen"}
#: Shared names the classifier's training library still spells its own way.
CLASSIFY_LIBRARY_STRATEGY = {"frozen": "linear-probe"}
REMOVAL = "the next release"


def deprecated(old: str, new: str) -> None:
    """Say on stderr that ``old`` still works but ``new`` replaces it."""
    say(f"note: {old} is deprecated and will be removed in {REMOVAL}; use {new}", fg="yellow")


class DeviceType(click.ParamType):
    """``auto|cpu|cuda``, and with ``indexed`` also ``cuda:N``; ``gpu_only`` drops ``auto`` and ``cpu``.

    With ``indexed``, a bare integer ``N`` (the old ``edgetl compile --device N``) is read as ``cuda:N``
    with a deprecation note.
    """

    name = "device"

    def __init__(self, *, indexed: bool = False, gpu_only: bool = False) -> None:
        self.indexed, self.gpu_only = indexed, gpu_only

    def choices(self) -> list[str]:
        names = ["cuda"] if self.gpu_only else list(DEVICES)
        return names + (["cuda:N"] if self.indexed else [])

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "[" + "|".join(self.choices()) + "]"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value).strip().lower()
        if self.indexed and text.isdigit():
            deprecated(f"--device {text}", f"--device cuda:{text}")
            return f"cuda:{int(text)}"
        if self.indexed and text.startswith("cuda:") and text[5:].isdigit():
            return f"cuda:{int(text[5:])}"
        if text in DEVICES and not (self.gpu_only and text != "cuda"):
            return text
        self.fail(f"{value!r} is not one of {', '.join(self.choices())}", param, ctx)


def cuda_index(device: str) -> int:
    """The GPU index of ``cuda`` (0) or ``cuda:N`` (N)."""
    return int(device.split(":", 1)[1]) if ":" in device else 0


def device_option(default: str = "auto", *, indexed: bool = False, gpu_only: bool = False,
                  help: str = "Where to run.") -> Callable[[Any], Any]:
    """``--device`` with the shared meaning (module docstring)."""
    return click.option("--device", type=DeviceType(indexed=indexed, gpu_only=gpu_only), default=default,
                        show_default=True, help=help)


def batch_size_option(default: int | None, *, help: str | None = None) -> Callable[[Any], Any]:
    """``--batch-size N``: one batch size."""
    return click.option("--batch-size", type=click.IntRange(min=1), default=default, show_default=default is not None,
                        help=help)


def precision_option(default: str, choices: tuple[str, ...] = PRECISION_CHOICES, *,
                     help: str | None = None) -> Callable[[Any], Any]:
    """``--precision`` restricted to ``choices`` (names from `edgetl.runtime.artifacts`)."""
    return click.option("--precision", type=click.Choice(list(choices)), default=default, show_default=True,
                        help=help)


def no_verify_option(help: str = "Skip checking artifact sha256 (trusted bundles only).") -> Callable[[Any], Any]:
    """``--no-verify``: skip the sha256 check of a bundle's artifacts."""
    return click.option("--no-verify", is_flag=True, help=help)


def _strategy(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if value in OLD_STRATEGIES:
        deprecated(f"--strategy {value}", f"--strategy {OLD_STRATEGIES[value]}")
        return OLD_STRATEGIES[value]
    return value


def strategy_option(help: str) -> Callable[[Any], Any]:
    """``--strategy`` with the names shared by classifiers and detectors (old names accepted with a note)."""
    return click.option("--strategy", type=click.Choice([*STRATEGIES, *OLD_STRATEGIES]), default="partial",
                        show_default=True, callback=_strategy, help=help)


def renamed_option(old: str, new: str, convert: Callable[[str], Any] | None = None) -> Callable[[Any], Any]:
    """A hidden ``old`` flag that still works, with a note naming ``new``; its value arrives as the parameter
    ``old`` without dashes (the command prefers it to ``new`` when given), so ``--config`` files keep working."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        deprecated(old, new)
        return convert(value) if convert else value

    return click.option(old, type=str, default=None, hidden=True, expose_value=True, callback=callback)


#: What differs between the training verbs in the options they share: (field, classify, detect).
TRAINING_DEFAULTS: list[tuple[str, Any, Any]] = [
    ("data_help", "Dataset folder (train/<class>/*, optional val/) or a path,label CSV.",
     "A YOLO data.yaml (or its folder) or a COCO instances JSON."),
    ("model", "efficientnet_lite0", "yolo-lite0-n"),
    ("model_help", "Registry name (`edgetl models`).", "Detector name: yolo-lite0-n, yolo-lite0-s, yolo-mbv3-n, ..."),
    ("weights_help", "pretrained, none, or a state dict / checkpoint file.",
     "Backbone weights: pretrained, none, or a state dict file."),
    ("strategy_help", "frozen: backbone fixed, a linear head on cached features; partial: last --unfreeze stages; "
                      "full: everything, backbone at a lower LR; scratch: no pretrained weights.",
     "frozen: backbone fixed; partial: stem and earliest blocks fixed; full: everything learns; "
     "scratch: random backbone."),
    ("epochs", 10, 30),
    ("batch_size", 32, 16),
    ("lr_help", "Head learning rate [default: per strategy].", "Peak learning rate [default: 2e-3 adamw, 1e-2 sgd]."),
    ("backbone_lr_scale", 0.1, 1.0),
    ("backbone_lr_help", "Backbone LR as a fraction of --lr (partial, full).", "Backbone LR as a fraction of --lr."),
    ("weight_decay", None, 0.05),
    ("weight_decay_help", "[default: 0.01 adamw, 1e-4 sgd]", None),
    ("img_size", None, 320),
    ("img_size_min", 16, 32),
    ("img_size_help", "Input side [default: the model's].", "Square letterboxed input side, a multiple of 32."),
    ("augment_help", "Random resized crop, colour jitter (and flips) on training images.",
     "Flips, scale/translate, colour jitter (boxes follow)."),
    ("patience_help", "Early stopping: epochs without a gain.", "Early stopping: evaluations without a gain."),
    ("grad_clip", 1.0, 10.0),
    ("out", "runs/exp", "runs/det"),
    ("val_fraction_help", "Held-out fraction when the dataset has no val/ split.",
     "Held-out fraction when the dataset has no val split."),
]
TRAINING_TASKS = ("classify", "detect")


def training_options(task: str) -> Callable[[Any], Any]:
    """The options every ``edgetl train TASK`` verb takes, one meaning each; a verb adds its own after them."""
    column = 1 + TRAINING_TASKS.index(task)
    d = SimpleNamespace(**{row[0]: row[column] for row in TRAINING_DEFAULTS})
    options = [
        click.option("--data", required=True, help=d.data_help),
        click.option("--model", default=d.model, show_default=True, help=d.model_help),
        click.option("--weights", default="pretrained", show_default=True, help=d.weights_help),
        strategy_option(d.strategy_help),
        click.option("--epochs", type=click.IntRange(min=1), default=d.epochs, show_default=True),
        batch_size_option(d.batch_size),
        click.option("--lr", type=float, default=None, help=d.lr_help),
        click.option("--backbone-lr-scale", type=float, default=d.backbone_lr_scale, show_default=True,
                     help=d.backbone_lr_help),
        click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True),
        click.option("--weight-decay", type=float, default=d.weight_decay, show_default=d.weight_decay is not None,
                     help=d.weight_decay_help),
        click.option("--img-size", type=click.IntRange(min=d.img_size_min), default=d.img_size,
                     show_default=d.img_size is not None, help=d.img_size_help),
        click.option("--augment/--no-augment", default=True, show_default=True, help=d.augment_help),
        click.option("--warmup-epochs", type=float, default=1.0, show_default=True),
        click.option("--patience", type=click.IntRange(min=1), default=None, help=d.patience_help),
        click.option("--grad-clip", type=float, default=d.grad_clip, show_default=True,
                     help="Max gradient norm (0: off)."),
        click.option("--seed", type=int, default=0, show_default=True),
        device_option("auto", help="Where to train."),
        click.option("--out", default=d.out, show_default=True, help="Run directory."),
        click.option("--max-steps", type=click.IntRange(min=1), default=None,
                     help="Stop after this many optimizer steps."),
        click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True,
                     help="DataLoader workers."),
        click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only)."),
        click.option("--val-fraction", type=float, default=0.2, show_default=True, help=d.val_fraction_help),
        click.option("--resume", default=None, help="Continue from a run's last.pt (or its run directory)."),
        click.option("--channels-last/--no-channels-last", default=True, show_default=True,
                     help="NHWC memory layout (faster on CPU and GPU)."),
        click.option("--nproc", type=click.IntRange(min=1), default=None,
                     help="Train in N data-parallel processes on this machine (runs torchrun; one per GPU or core)."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]

    def decorate(func: Any) -> Any:
        for option in reversed(options):
            func = option(func)
        return func

    return decorate
