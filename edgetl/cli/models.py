"""``edgetl models``: a view of the pretrained model registry."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, format_table, handle_errors, json_option, say


@click.command()
@click.argument("pattern", default="*")
@config_option
@json_option
@handle_errors
def command(pattern: str, as_json: bool) -> None:
    """List registered models matching PATTERN (shell-style, e.g. 'mobilenet*'): parameters, default
    input size, and whether ImageNet weights are available offline on this machine."""
    from edgetl.models import get_model_info, list_models
    from edgetl.models.factory import describe

    rows = [describe(get_model_info(name)) for name in list_models(pattern)]
    if as_json:
        emit_json({"models": rows})
        return
    if not rows:
        say(f"no model matches {pattern!r}")
        return
    table = [
        (r["name"], r["params_m"], "x".join(str(v) for v in r["input_size"]),
         r["weights_offline"].split(":", 1)[0] if r["weights_offline"] else "no")
        for r in rows
    ]
    say(format_table(["name", "params (M)", "input", "weights offline"], table))
    if any(r["weights_offline"] is None for r in rows):
        say("models without offline weights train with --weights PATH or --strategy scratch", dim=True)
