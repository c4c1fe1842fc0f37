"""``edgetl train classify|detect``: each task's options live in its own module."""

from __future__ import annotations

import importlib

import click

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
