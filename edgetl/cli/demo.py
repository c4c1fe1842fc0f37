"""``edgetl demo``: the whole pipeline on embedded defaults, offline, ending in one summary table."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say


@click.command()
@click.option("--out", default="edgetl-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output directory; a rerun replaces it (only if the demo created it).")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Fine-tuning epochs (default 20; quick: 15).")
@click.option("--quick", is_flag=True, help="Smaller and faster: fewer images, 64 px, a linear probe.")
@click.option("--seed", default=0, show_default=True, type=int)
@config_option
@json_option
@handle_errors
def command(out: str, epochs: int | None, quick: bool, seed: int, as_json: bool) -> None:
    """Sample data -> fine-tune EfficientNet-Lite0 -> export -> INT8 -> validate -> predict -> bench.

    Exit code 1 when the INT8 model fails the validation gate (the summary is still printed).
    """
    from edgetl.demo import DemoConfig, format_summary, run_demo
    from edgetl.errors import GateFailedError

    result = run_demo(DemoConfig(out=out, epochs=epochs, quick=quick, seed=seed), say=say)
    if as_json:
        emit_json(result.to_dict())
    say(format_summary(result))
    if not result.validation_passed:
        raise GateFailedError("the INT8 model failed the validation gate; see the validation report in the bundle",
                              hint="try more calibration data or epochs, or deploy the FP32 model")
