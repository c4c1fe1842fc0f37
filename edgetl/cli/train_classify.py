"""``edgetl train classify``: fine-tune a pretrained classifier; every option maps to a `TrainConfig` field."""

from __future__ import annotations

import sys

import click

from edgetl.cli.common import config_option, emit_json, format_table, handle_errors, json_option, say

_STRATEGIES = ["linear-probe", "partial", "full", "scratch"]


@click.command(name="classify")
@click.option("--data", required=True, help="Dataset folder (train/<class>/*, optional val/) or a path,label CSV.")
@click.option("--model", default="efficientnet_lite0", show_default=True, help="Registry name (`edgetl models`).")
@click.option("--weights", default="pretrained", show_default=True,
              help="pretrained, none, or a state dict / checkpoint file.")
@click.option("--strategy", type=click.Choice(_STRATEGIES), default="partial", show_default=True,
              help="linear-probe: frozen backbone, cached features; partial: last --unfreeze stages; "
                   "full: everything, backbone at a lower LR; scratch: no pretrained weights.")
@click.option("--unfreeze", type=click.IntRange(min=0), default=2, show_default=True,
              help="partial: backbone stages to train, counted from the end.")
@click.option("--epochs", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True)
@click.option("--lr", type=float, default=None, help="Head learning rate [default: per strategy].")
@click.option("--backbone-lr-scale", type=float, default=0.1, show_default=True,
              help="Backbone LR as a fraction of --lr (partial, full).")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]), default="adamw", show_default=True)
@click.option("--weight-decay", type=float, default=None, help="[default: 0.01 adamw, 1e-4 sgd]")
@click.option("--img-size", type=click.IntRange(min=16), default=None, help="Input side [default: the model's].")
@click.option("--augment/--no-augment", default=True, show_default=True,
              help="Random resized crop, colour jitter (and flips) on training images.")
@click.option("--hflip/--no-hflip", default=True, show_default=True,
              help="Random horizontal flips; turn off when mirroring changes the class (digits, text).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
@click.option("--warmup-epochs", type=float, default=1.0, show_default=True)
@click.option("--patience", type=click.IntRange(min=1), default=None, help="Early stopping: epochs without a gain.")
@click.option("--grad-clip", type=float, default=1.0, show_default=True, help="Max gradient norm (0: off).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option("--out", default="runs/exp", show_default=True, help="Run directory.")
@click.option("--resume", default=None, help="Continue from a run's last.pt (or its run directory).")
@click.option("--max-steps", type=click.IntRange(min=1), default=None, help="Stop after this many optimizer steps.")
@click.option("--workers", type=click.IntRange(min=0), default=0, show_default=True, help="DataLoader workers.")
@click.option("--amp/--no-amp", default=True, show_default=True, help="Mixed precision (CUDA only).")
@click.option("--channels-last/--no-channels-last", default=True, show_default=True,
              help="NHWC memory layout (faster on CPU and GPU).")
@click.option("--val-fraction", type=float, default=0.2, show_default=True,
              help="Held-out fraction when the dataset has no val/ split.")
@click.option("--nproc", type=click.IntRange(min=1), default=None,
              help="Train in N data-parallel processes on this machine (runs torchrun; one per GPU or core).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@config_option
@json_option
@handle_errors
def command(quiet: bool, as_json: bool, nproc: int | None, **options: object) -> None:
    """Fine-tune a pretrained image classifier on your data.

    \b
    Writes OUT/best.pt, last.pt, metrics.json, curves.png, confusion.png and config.yaml
    (reusable with --config). Example:
      edgetl train classify --data digits --strategy partial --epochs 10 --out runs/digits
    """
    from edgetl.train.classify import TrainConfig, train_classifier
    from edgetl.train.distributed import is_main_process
    from edgetl.train.launch import relaunch

    cfg = TrainConfig(**options)
    if nproc is not None:
        relaunch(nproc, str(cfg.device), sys.argv[1:])
    if not is_main_process():  # under torchrun, rank 0 alone speaks
        train_classifier(cfg, progress=False)
        return
    say(f"training {cfg.model} ({cfg.strategy}) on {cfg.data} -> {cfg.out}")
    result = train_classifier(cfg, progress=not quiet)
    if result.skipped:
        say(f"skipped {len(result.skipped)} unreadable file(s):", fg="yellow")
        for path, why in result.skipped[:20]:
            say(f"  {path}: {why}")
    if as_json:
        emit_json(result.to_dict())
        return
    say(format_table(
        ["best val top-1", "best epoch", "epochs run", "stopped", "images/s", "seconds"],
        [(f"{result.best_top1:.2f}%", result.best_epoch, len(result.history), result.stopped,
          result.images_per_second, result.seconds)],
    ))
    say(f"best checkpoint: {result.best_checkpoint}")
