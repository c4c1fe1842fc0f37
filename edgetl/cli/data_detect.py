"""``edgetl data`` subcommands for detection datasets: ``sample shapes``, ``convert``, ``check``.

The ``data`` group registers these commands lazily; nothing here imports torch.
"""

from __future__ import annotations

from pathlib import Path

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say
from edgetl.tables import format_table


@click.command(name="shapes")
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--train", "n_train", type=click.IntRange(min=1), default=200, show_default=True, help="Training images.")
@click.option("--val", "n_val", type=click.IntRange(min=0), default=50, show_default=True, help="Validation images.")
@click.option("--size", type=click.IntRange(min=32), default=256, show_default=True, help="Long image side (px).")
@click.option("--seed", type=int, default=0, show_default=True, help="Everything is a function of the seed.")
@click.option("--overwrite", is_flag=True, help="Replace OUT_DIR if it is not empty.")
@config_option
@json_option
@handle_errors
def sample_shapes(out_dir: str, n_train: int, n_val: int, size: int, seed: int, overwrite: bool, as_json: bool) -> None:
    """Write the shapes detection sample (YOLO layout) to OUT_DIR.

    Five shape classes of varied size, colour and overlap on crops of the photographs that ship with
    scikit-image; nothing is downloaded. Train on it with `edgetl train detect --data OUT_DIR/data.yaml`.
    """
    from edgetl.data.shapes import write_shapes
    from edgetl.errors import BadInputError

    path = Path(out_dir)
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not overwrite:
        raise BadInputError(f"{path} exists and is not empty", hint="choose a new folder or pass --overwrite")
    summary = write_shapes(out_dir, n_train=n_train, n_val=n_val, size=size, seed=seed)
    if as_json:
        emit_json(summary)
        return
    say(
        f"wrote {summary['train_images']} train / {summary['val_images']} val images "
        f"({summary['train_boxes']} / {summary['val_boxes']} boxes, classes {', '.join(summary['classes'])})"
    )
    say(f"dataset: {summary['path']}")


@click.command(name="convert")
@click.argument("src", type=click.Path(exists=True))
@click.option("--to", "target", type=click.Choice(["coco", "yolo"]), required=True, help="Output format.")
@click.option("-o", "--out", "out_dir", type=click.Path(file_okay=False), required=True, help="Output folder.")
@click.option("--overwrite", is_flag=True, help="Replace a non-empty output folder.")
@click.option("--strict", is_flag=True, help="Refuse to convert when any label problem is found.")
@config_option
@json_option
@handle_errors
def convert(src: str, target: str, out_dir: str, overwrite: bool, strict: bool, as_json: bool) -> None:
    """Convert a detection dataset SRC (data.yaml or COCO JSON) to COCO or YOLO.

    Boxes, class names and images are kept; label problems are reported (and clipped/dropped
    unless --strict refuses them).
    """
    from edgetl.data.detection import convert_dataset, read_detection_dataset
    from edgetl.errors import BadInputError

    if strict:
        data = read_detection_dataset(src)
        if data.issues:
            raise BadInputError(f"{src}: label problems found (strict mode)\n{data.report(max_files=10)}")
    written, data = convert_dataset(src, target, out_dir, overwrite=overwrite)
    summary = {**data.summary(), "written": str(written), "format": target}
    if as_json:
        emit_json(summary)
        return
    if data.issues:
        say(data.report(max_files=10), fg="yellow")
    say(f"converted {summary['train_images']} train / {summary['val_images']} val images to {target}: {written}")


@click.command(name="check")
@click.argument("dataset", type=click.Path(exists=True))
@click.option("--strict", is_flag=True, help="Exit 2 when any label problem is found.")
@click.option("--no-verify", is_flag=True, help="Read image headers only (faster; misses truncated files).")
@click.option("--max-files", type=click.IntRange(min=1), default=20, show_default=True, help="Files listed per kind.")
@config_option
@json_option
@handle_errors
def check(dataset: str, strict: bool, no_verify: bool, max_files: int, as_json: bool) -> None:
    """Check the labels of a detection dataset (data.yaml or COCO JSON) before training.

    Reports boxes outside the image (clipped), zero-area boxes, unknown class ids, missing images or
    labels and corrupt images, with file names and counts. With --strict any problem exits with 2.
    """
    import sys

    from edgetl.data.detection import read_detection_dataset

    data = read_detection_dataset(dataset, verify_images=not no_verify)
    summary = {**data.summary(max_files=max_files * 10), "passed": not data.issues, "strict": strict}
    if as_json:
        emit_json(summary)
    else:
        say(f"{Path(dataset)}: {summary['source']} dataset, {len(data.classes)} classes")
        rows = [[name, summary["boxes_per_class"][name]] for name in data.classes]
        say(format_table(["class", "boxes"], rows))
        say(f"train: {summary['train_images']} images, {summary['train_boxes']} boxes")
        say(f"val:   {summary['val_images']} images, {summary['val_boxes']} boxes")
        say(data.report(max_files=max_files), fg="yellow" if data.issues else "green")
    if strict and data.issues:
        if not as_json:
            say(f"error: {len(data.issues)} label problem(s) found (strict mode)", fg="red")
        sys.exit(2)


__all__ = ["check", "convert", "sample_shapes"]
