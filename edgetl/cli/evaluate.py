"""``edgetl evaluate CHECKPOINT --data DIR``: accuracy of a classifier (or mAP of a detector) checkpoint."""

from __future__ import annotations

from typing import Any

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say, show
from edgetl.cli.options import batch_size_option, device_option
from edgetl.tables import format_table


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.option("--data", required=True, help="Dataset folder or CSV (classifier), or data.yaml / COCO json (detector).")
@click.option("--split", type=click.Choice(["val", "train", "all"]), default="val", show_default=True,
              help="Which images to evaluate on (detectors: val or train).")
@batch_size_option(64)
@device_option("cpu", help="Where to run the checkpoint.")
@config_option
@json_option
@handle_errors
def command(checkpoint: str, data: str, split: str, batch_size: int, device: str, as_json: bool) -> None:
    """Evaluate CHECKPOINT on a dataset: top-1, top-5 and per-class accuracy (classifier) or mAP (detector).

    The results go to stdout (one JSON document with --json); what is being evaluated goes to stderr.
    """
    from edgetl.train.checkpoint import load_checkpoint

    _, meta = load_checkpoint(checkpoint)
    images = _count_images(meta, data, split)
    size = "x".join(str(v) for v in meta.preprocess.size)
    count = f"{images} {split} image(s)" if images is not None else f"the {split} images"
    say(f"evaluating {meta.model} ({checkpoint}) on {count} of {data} at {size} px on {device}...")
    if meta.task == "detect":
        from edgetl.train.evaluate import evaluate_detector_checkpoint

        result = evaluate_detector_checkpoint(checkpoint, data, split, batch_size=batch_size, device=device)
        if as_json:
            emit_json(result)
        else:
            scalars = [(k, v) for k, v in result.items() if not isinstance(v, dict | list)]
            show(format_table(["metric", "value"], scalars))
        return
    from edgetl.train.evaluate import evaluate_checkpoint

    result = evaluate_checkpoint(checkpoint, data, split, batch_size=batch_size, device=device)
    if result["skipped"]["count"]:
        say(f"skipped {result['skipped']['count']} unreadable file(s):", fg="yellow")
        for line in result["skipped"]["files"][:20]:
            say(f"  {line}")
    if as_json:
        emit_json(result)
        return
    show(f"{checkpoint} on {data} ({split}, {result['images']} images)")
    show(f"top-1 {result['top1']:.2f}%   top-5 {result['top5']:.2f}%")
    rows = [(name, "-" if acc is None else f"{acc:.1f}%") for name, acc in result["per_class"].items()]
    show(format_table(["class", "accuracy"], rows))


def _count_images(meta: Any, data: str, split: str) -> int | None:
    """How many images the evaluation will run on, from the file listing alone (nothing is decoded)."""
    from edgetl.errors import BadInputError

    try:
        if meta.task == "detect":
            from edgetl.data.detection import load_detection_data

            dataset = load_detection_data(data, verify_images=False, seed=int(meta.train_config.get("seed", 0)))
            return len(dataset.val if split == "val" else dataset.train)
        from edgetl.data.imagefolder import load_classification_data

        listing = load_classification_data(data, verify=False)
        return {"val": len(listing.val), "train": len(listing.train), "all": len(listing.train) + len(listing.val)}[
            split]
    except (BadInputError, KeyError):  # the evaluation itself reports what is wrong with the data
        return None
