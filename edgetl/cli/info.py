"""``edgetl info BUNDLE``: task, labels, input, preprocessing, artifacts, engines, validation."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, show
from edgetl.cli.options import no_verify_option


@click.command()
@click.argument("bundle", type=click.Path())
@no_verify_option()
@config_option
@json_option
@handle_errors
def command(bundle: str, no_verify: bool, as_json: bool) -> None:
    """Describe BUNDLE (a bundle directory)."""
    from pathlib import Path

    from edgetl.errors import BadInputError
    from edgetl.runtime.info import bundle_info, format_info

    if Path(bundle).is_file():
        raise BadInputError(f"{bundle} is a file, not a bundle directory",
                            hint=f"unpack it first: edgetl bundle unpack {bundle} -o DIR")
    info = bundle_info(bundle, verify=not no_verify)
    if as_json:
        emit_json(info)
    else:
        show(format_info(info))
