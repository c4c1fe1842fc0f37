"""Shared CLI plumbing: ``--config`` YAML defaults, ``--json`` output, and the error -> exit-code map.

Every verb is written as::

    @click.command()
    @config_option
    @json_option
    @handle_errors
    def command(..., as_json): ...

so the rules of ARCHITECTURE.md (stderr for humans, one JSON document on stdout, exit codes) live here.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import click

from edgetl.errors import EdgetlError

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_ENV = 0, 1, 2, 3


def _load_config(ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    if not value:
        return value
    import yaml

    path = Path(value)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise click.BadParameter(f"{path} must hold a mapping of option names to values")
    # YAML keys may use dashes or underscores; click parameter names use underscores.
    defaults = {str(k).replace("-", "_"): v for k, v in data.items()}
    known = {p.name for p in ctx.command.params}
    unknown = sorted(set(defaults) - known)
    if unknown:
        raise click.BadParameter(f"{path}: unknown option(s) {', '.join(unknown)}")
    ctx.default_map = {**(ctx.default_map or {}), **defaults}
    return value


config_option = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    callback=_load_config,
    is_eager=True,
    expose_value=False,
    help="YAML file of option values; flags on the command line override it.",
)

json_option = click.option(
    "--json", "as_json", is_flag=True, help="Print one machine-readable JSON document on stdout."
)


def handle_errors(func: F) -> F:
    """Map edgetl's exceptions to a one-paragraph message on stderr and the right exit code."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except EdgetlError as exc:
            click.secho(f"error: {exc}", fg="red", err=True)
            sys.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("interrupted: outputs written so far are complete; partial files were discarded", err=True)
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


def say(message: str = "", **style: Any) -> None:
    """Human output: always stderr, so stdout stays clean for ``--json``."""
    click.secho(message, err=True, **style)


def emit_json(document: Any) -> None:
    """Print the one JSON document of a ``--json`` run."""
    from edgetl.fileio import _json_default

    click.echo(json.dumps(document, indent=2, default=_json_default))


def format_table(headers: list[str], rows: Iterable[Iterable[Any]]) -> str:
    """A plain aligned text table (no extra dependency)."""
    str_rows = [[_cell(v) for v in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in str_rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in str_rows]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def parse_int_list(value: str) -> list[int]:
    """Parse ``"1,8,32"`` into ``[1, 8, 32]`` with a usage error on junk."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc
    if not items or any(v <= 0 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items
