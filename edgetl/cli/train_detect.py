"""``edgetl train detect``: fine-tune a YOLO-style detector; every option maps to a `DetectTrainConfig` field."""

from __future__ import annotations

import sys

import click

from edgetl.cli.common import config_option, emit_json, format_table, handle_errors, json_option, say

_STRATEGIES = ["frozen", "partial", "full", "scratch"]


@click.command(name="detect")
@click.option("--data", required=True, help="A YOLO data.yaml (or its folder) or a COCO instances JSON.")
@click.option("--model", default="yolo-lite0-n", show_default=True,
              help="Detector name: yolo-lite0-n, yolo-lite0-s, yolo-mbv3-n, ...")
@click.option("--weights", default="pretrained", show_default=True,
              help="Backbone weights: pretrained, none, or a state dict file.")
@click.option("--strategy", type=click.Choice(_STRATEGIES), default="partial", show_default=True,
              help="frozen: backbone fixed; partial: stem and earliest blocks fixed; full: everything learns; "
                   "scratch: random backbone.")
@click.option("--freeze-epochs", type=click.IntRange(min=0), default=0, show_default=True,
              help="Train the first N epochs with the whole backbone frozen, then apply --strategy.")
@click.option("--epochs", type=click.IntRange(min=1), default=30, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=16, show_default=True)
@click.option("--lr", type=float, default=None, help="Peak learning rate [default: 2e-3 adamw, 1e-2 sgd].")
@click.option("--backbone-lr-scale", type=float, default=1.0, show_default=True,
              help="Backbone LR as a fraction of --lr.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=0.05, show_default=True)
@click.option("--img-size", type=click.IntRange(min=32), default=320, show_default=True,
              help="Square letterboxed input side, a multiple of 32.")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Flips, scale/translate, colour jitter (boxes follow).")
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True)
@click.option("--ema/--no-ema", default=True, show_default=True, help="Evaluate and save EMA weights.")
@click.option("--ema-decay", type=float, default=0.999, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=None,
              help="Early stopping: evaluations without a gain.")
@click.option("--eval-interval", type=click.IntRange(min=1), default=1, show_default=True,
              help="Validate every N epochs (and after the last).")
@click.option("--grad-clip", type=float, default=10.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", default="runs/det", show_default=True, help="Run directory.")
@click.option("--resume", default=None, help="Continue from a run's last.pt (or its run directory).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--threads", type=click.IntRange(min=0), default=0, show_default=True,
              help="CPU threads for PyTorch (0: its default; 1 is often faster on a busy small machine).")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory layout (faster on CPU and GPU).")
@click.option("--strict", is_flag=True, help="Label problems are errors (exit 2) instead of being clipped/dropped.")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction when the dataset has no val split.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train in N data-parallel processes on this machine (runs torchrun; one per GPU or core).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
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
    from edgetl.train.detect import DetectTrainConfig, train_detector
    from edgetl.train.distributed import is_main_process
    from edgetl.train.launch import relaunch

    cfg = DetectTrainConfig(**options)
    if nproc is not None:
        relaunch(nproc, str(cfg.device), sys.argv[1:])
    if not is_main_process():  # under torchrun, rank 0 alone speaks
        train_detector(cfg, progress=False)
        return
    say(f"training {cfg.model} ({cfg.strategy}, {cfg.freeze_epochs} frozen epoch(s)) on {cfg.data} -> {cfg.out}")
    result = train_detector(cfg, progress=not quiet)
    if result.issues:
        say("label problems were clipped/dropped: " + ", ".join(f"{k} {n}" for k, n in result.issues.items())
            + " (details: `edgetl data check`)", fg="yellow")
    if as_json:
        emit_json(result.to_dict())
        return
    say(format_table(
        ["best mAP@0.5:0.95", "mAP@0.5", "best epoch", "epochs run", "stopped", "images/s", "seconds"],
        [(f"{result.best_map:.4f}", f"{result.best_map50:.4f}", result.best_epoch, len(result.history),
          result.stopped, result.images_per_second, result.seconds)],
    ))
    say(f"best checkpoint: {result.best_checkpoint}")
