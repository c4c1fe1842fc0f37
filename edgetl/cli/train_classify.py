"""``edgetl train classify``: fine-tune a pretrained classifier; every option maps to a `TrainConfig` field."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, handle_errors, json_option, say
from edgetl.cli.options import CLASSIFY_LIBRARY_STRATEGY, training_options


@click.command(name="classify")
@training_options("classify")
@click.option("--unfreeze", type=click.IntRange(min=0), default=2, show_default=True,
              help="partial: backbone stages to train, counted from the end.")
@click.option("--hflip/--no-hflip", default=True, show_default=True,
              help="Random horizontal flips; turn off when mirroring changes the class (digits, text).")
@click.option("--label-smoothing", type=float, default=0.1, show_default=True)
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
    from edgetl.cli.train import report_training, run_training
    from edgetl.train.classify import TrainConfig, train_classifier

    options["strategy"] = CLASSIFY_LIBRARY_STRATEGY.get(str(options["strategy"]), options["strategy"])
    cfg = TrainConfig(**options)
    result = run_training(cfg, train_classifier, nproc=nproc, quiet=quiet,
                          headline=f"training {cfg.model} ({cfg.strategy}) on {cfg.data} -> {cfg.out}")
    if result is None:
        return
    if result.skipped:
        say(f"skipped {len(result.skipped)} unreadable file(s):", fg="yellow")
        for path, why in result.skipped[:20]:
            say(f"  {path}: {why}")
    report_training(result, as_json, ["best val top-1", "best epoch", "epochs run", "stopped", "images/s", "seconds"],
                    [f"{result.best_top1:.2f}%", result.best_epoch, len(result.history), result.stopped,
                     result.images_per_second, result.seconds])
