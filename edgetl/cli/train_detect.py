"""``edgetl train detect``: fine-tune a YOLO-style detector; every option maps to a `DetectTrainConfig` field."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, handle_errors, json_option, say
from edgetl.cli.options import training_options


@click.command(name="detect")
@training_options("detect")
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train the first N epochs with the whole backbone frozen, then apply --strategy.")
@click.option("--ema/--no-ema", default=True, show_default=True, help="Evaluate and save EMA weights.")
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--eval-interval", type=click.IntRange(min=1), default=1, show_default=True,
              help="Validate every N epochs (and after the last).")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU threads for PyTorch (0: its default; 1 is often faster on a busy small machine).")
@click.option("--strict", is_flag=True, help="Label problems are errors (exit 2) instead of being clipped/dropped.")
@config_option
@json_option
@handle_errors
def command(quiet: bool, as_json: bool, nproc: int | None, **options: object) -> None:
    """Fine-tune a YOLO-style detector on a pretrained backbone.

    \b
    Writes OUT/best.pt (best mAP@0.5:0.95), last.pt, metrics.json, curves.png and config.yaml
    (reusable with --config). Example:
      edgetl data sample shapes data/shapes
      edgetl train detect --data data/shapes/data.yaml --model yolo-lite0-n --epochs 30 \\
          --img-size 320 --strategy full --freeze-epochs 3 --out runs/shapes
    """
    from edgetl.cli.train import report_training, run_training
    from edgetl.train.detect import DetectTrainConfig, train_detector

    cfg = DetectTrainConfig(**options)
    result = run_training(cfg, train_detector, nproc=nproc, quiet=quiet,
                          headline=f"training {cfg.model} ({cfg.strategy}, {cfg.freeze_epochs} frozen epoch(s)) "
                                   f"on {cfg.data} -> {cfg.out}")
    if result is None:
        return
    if result.issues:
        say("label problems were clipped/dropped: " + ", ".join(f"{k} {n}" for k, n in result.issues.items())
            + " (details: `edgetl data check`)", fg="yellow")
    report_training(result, as_json,
                    ["best mAP@0.5:0.95", "mAP@0.5", "best epoch", "epochs run", "stopped", "images/s", "seconds"],
                    [f"{result.best_map:.4f}", f"{result.best_map50:.4f}", result.best_epoch, len(result.history),
                     result.stopped, result.images_per_second, result.seconds])
