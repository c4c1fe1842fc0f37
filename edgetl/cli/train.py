"""``edgetl train classify|detect``: each task's options live in its own module."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import click

from edgetl.cli.common import emit_json, say
from edgetl.tables import format_table

_TASKS = {
    "classify": ("edgetl.cli.train_classify", "Fine-tune a pretrained image classifier."),
    "detect": ("edgetl.cli.train_detect", "Fine-tune a YOLO-style detector on a pretrained backbone."),
}


class _TaskGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_TASKS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _TASKS:
            return None
        return importlib.import_module(_TASKS[name][0]).command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Tasks"):
            formatter.write_dl([(n, h) for n, (_, h) in _TASKS.items()])


@click.group(cls=_TaskGroup, name="train")
def command() -> None:
    """Fine-tune a pretrained model on your data (a run directory with checkpoints and curves)."""


def run_training(cfg: Any, train: Callable[..., Any], *, nproc: int | None, quiet: bool, headline: str) -> Any:
    """Both tasks' launch: relaunch under torchrun for ``--nproc``; on every rank but 0 train silently and
    return None; on rank 0 (or a single process) say ``headline`` and train with a progress bar unless quiet."""
    from edgetl.train.distributed import is_main_process
    from edgetl.train.launch import relaunch

    if nproc is not None:
        relaunch(nproc, str(cfg.device), sys.argv[1:])
    if not is_main_process():  # under torchrun, rank 0 alone speaks
        train(cfg, progress=False)
        return None
    say(headline)
    return train(cfg, progress=not quiet)


def report_training(result: Any, as_json: bool, headers: Sequence[str], row: Sequence[Any]) -> None:
    """The result as a JSON document on stdout, or its one-row summary table and best checkpoint."""
    if as_json:
        emit_json(result.to_dict())
        return
    say(format_table(list(headers), [tuple(row)]))
    say(f"best checkpoint: {result.best_checkpoint}")
