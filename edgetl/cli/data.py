"""``edgetl data``: sample datasets and dataset tools.

``data sample fashion`` and ``data sample digits`` live here; the detection tools (``data sample shapes``,
``data convert``, ``data check``) live in `edgetl.cli.data_detect` and are attached lazily when that module
exists.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say

_DETECT_MODULE = "edgetl.cli.data_detect"


def _detect_command(attr: str) -> click.Command | None:
    """A command from the detection data module, or None when this build lacks it."""
    try:
        module = importlib.import_module(_DETECT_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("edgetl"):
            return None
        raise
    return getattr(module, attr, None)


class _LazyGroup(click.Group):
    """A group with eager commands plus lazily imported ones: ``{name: attribute in data_detect}``."""

    def __init__(self, *args, lazy: dict[str, str] | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = list(super().list_commands(ctx))
        if importlib.util.find_spec(_DETECT_MODULE) is not None:
            names += [n for n in self.lazy if n not in names]
        return sorted(names)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None and name in self.lazy:
            command = _detect_command(self.lazy[name])
        return command


@click.group(cls=_LazyGroup, name="data", lazy={"convert": "convert", "check": "check"})
def command() -> None:
    """Sample datasets and dataset tools."""


@command.group(cls=_LazyGroup, name="sample", lazy={"shapes": "sample_shapes"})
def sample() -> None:
    """Write a small real sample dataset (nothing is downloaded)."""


@sample.command(name="fashion")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Training images per class (default: all 100 shipped).")
@click.option("--val-per-class", type=click.IntRange(min=1), default=None,
              help="Validation images per class (default: all 30 shipped).")
@click.option("--size", type=click.IntRange(min=8, max=1024), default=28, show_default=True,
              help="Image side (px); 28 keeps the originals, larger sizes upscale.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@config_option
@json_option
@handle_errors
def fashion(out_dir: str, per_class: int | None, val_per_class: int | None, size: int, overwrite: bool,
            as_json: bool) -> None:
    """Write the shipped Fashion-MNIST subset (10 classes, grayscale) in ImageFolder layout (train/ and val/).

    The images are a fixed seeded choice from Fashion-MNIST's official training split (Zalando Research,
    MIT licence): up to 100 training and 30 validation images per class.
    """
    from edgetl.data.samples import write_fashion
    from edgetl.errors import BadInputError

    path = Path(out_dir)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise BadInputError(f"{path} exists and is not empty", hint="pass --overwrite to replace it")
    summary = write_fashion(path, train_per_class=per_class, val_per_class=val_per_class, size=size)
    if as_json:
        emit_json(summary)
    else:
        say(f"wrote {summary['train_images']} training and {summary['val_images']} validation images "
            f"of 10 Fashion-MNIST classes ({size} px) to {path}")


@sample.command(name="digits")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--per-class", type=click.IntRange(min=1), default=None,
              help="Training images per class (default: all ~150 that remain after validation).")
@click.option("--val-per-class", type=click.IntRange(min=1), default=30, show_default=True,
              help="Validation images per class.")
@click.option("--size", type=click.IntRange(min=8, max=1024), default=64, show_default=True, help="Image side (px).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seeds the split, colours and placement.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it exists.")
@config_option
@json_option
@handle_errors
def digits(out_dir: str, per_class: int | None, val_per_class: int, size: int, seed: int, overwrite: bool,
           as_json: bool) -> None:
    """Write scikit-learn's handwritten digits as RGB images in ImageFolder layout (train/ and val/)."""
    from edgetl.data.samples import write_digits
    from edgetl.errors import BadInputError

    path = Path(out_dir)
    if path.exists() and any(path.iterdir()) and not overwrite:
        raise BadInputError(f"{path} exists and is not empty", hint="pass --overwrite to replace it")
    if per_class is not None and per_class + val_per_class > 174:
        say("note: the smallest digit class has 174 images; some classes will have fewer", fg="yellow")
    summary = write_digits(path, train_per_class=per_class, val_per_class=val_per_class, size=size, seed=seed)
    if as_json:
        emit_json(summary)
    else:
        say(f"wrote {summary['train_images']} training and {summary['val_images']} validation images "
            f"of 10 digit classes to {path}")
