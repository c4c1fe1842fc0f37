"""``edgetl models``: a view of the model registry, classifiers and detectors."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say, show
from edgetl.tables import format_table


@click.command()
@click.argument("pattern", default="*")
@config_option
@json_option
@handle_errors
def command(pattern: str, as_json: bool) -> None:
    """List the models matching PATTERN (shell-style, e.g. 'mobilenet*', 'yolo-*'): task, parameters,
    default input size, and whether ImageNet weights are available offline on this machine."""
    from edgetl.models.catalog import catalog

    rows = catalog(pattern)
    if as_json:
        emit_json({"models": rows})
        return
    if not rows:
        say(f"no model matches {pattern!r}")
        return
    table = [
        (r["name"], r["task"], r["params_m"], "x".join(str(v) for v in r["input_size"]),
         r["weights_offline"].split(":", 1)[0] if r["weights_offline"] else "no")
        for r in rows
    ]
    show(format_table(["name", "task", "params (M)", "input", "weights offline"], table))
    if any(r["task"] == "detect" for r in rows):
        say("detectors: parameters with 80 classes; input is the default --img-size; weights are the backbone's",
            dim=True)
    if any(r["weights_offline"] is None for r in rows):
        say("models without offline weights train with --weights PATH or --strategy scratch", dim=True)
