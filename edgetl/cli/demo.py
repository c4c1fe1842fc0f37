"""``edgetl demo``: the whole pipeline on embedded defaults, offline, ending in one results table.

Steps and their times go to stderr; the results table goes to stdout, or with ``--json`` exactly one
JSON document (the `DemoResult`).
"""

from __future__ import annotations

import contextlib
import sys

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say


@click.command()
@click.option("--out", default="edgetl-demo", show_default=True, type=click.Path(file_okay=False),
              help="Output directory; a rerun replaces it (only if the demo created it).")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Fine-tuning epochs (default 10).")
@click.option("--quick", is_flag=True, help="Smaller and faster: 20 train / 10 val images per class, 64 px.")
@click.option("--seed", default=0, show_default=True, type=int)
@config_option
@json_option
@handle_errors
def command(out: str, epochs: int | None, quick: bool, seed: int, as_json: bool) -> None:
    """Fashion-MNIST sample -> fine-tune EfficientNet-Lite0 -> ONNX -> INT8 -> validate -> predict -> bench.

    Exit code 1 when the INT8 model fails the validation gate (the results are still printed).
    """
    from edgetl.demo import DemoConfig, format_summary, run_demo
    from edgetl.errors import GateFailedError

    # Libraries print progress on stdout (ONNX Runtime's calibration does): stdout is for the results only.
    with contextlib.redirect_stdout(sys.stderr):
        result = run_demo(DemoConfig(out=out, epochs=epochs, quick=quick, seed=seed), say=say)
    if as_json:
        emit_json(result.to_dict())
    else:
        click.echo(format_summary(result))
    if not result.validation_passed:
        raise GateFailedError("the INT8 model failed the validation gate; see the validation report in the bundle",
                              hint="deploy the FP32 model (the runtime's auto choice does), or try more "
                                   "calibration data or `edgetl quantize --max-drop`")
