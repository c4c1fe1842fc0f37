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
