"""Shared CLI plumbing: ``--config`` YAML defaults, ``--json`` output, and the error -> exit-code map.

Every verb is written as::

    @click.command()
    @config_option
    @json_option
    @handle_errors
    def command(..., as_json): ...

so the rules of docs/architecture.md (stderr for humans, one JSON document on stdout, exit codes) live here.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

import click

from edgetl.errors import BadInputError, EdgetlError, EnvironmentMissingError
from edgetl.tables import format_table  # noqa: F401  (edgetl.train.classify imports it from here)

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_GATE, EXIT_BAD_INPUT, EXIT_ENV, EXIT_INTERNAL = 0, 1, 2, 3, 4
EXIT_INTERRUPTED = 130

#: Filesystem failures on a path the user gave or the machine provides: a missing or misnamed folder, no
#: permission, a read-only or full disk. They are not bugs, so they get a message and an exit code, no traceback.
_PATH_ERRNOS = {errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.EEXIST,
                errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EDQUOT}


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


class _JsonRun:
    """The one ``--json`` document of the running verb: where it goes and whether it went out.

    While a verb runs under ``--json``, ``sys.stdout`` points at stderr, so whatever a library prints
    (ONNX Runtime's calibration reports, pycocotools' summaries) cannot corrupt the document; the
    document itself is written to the real stdout kept here.
    """

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self.emitted = False


_json_runs: list[_JsonRun] = []


class _TerminalLog(logging.Handler):
    """edgetl's log records as plain lines on stderr while a verb runs: announcements of long steps
    ("measuring the sensitivity of 144 points", "about 3 min") and warnings, written around progress bars.

    The library logs the warnings it also returns (`QuantizeResult.warnings`, `ExportResult.warnings`), so this
    handler is the one place a verb prints them: a verb that printed them again showed each one twice."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            text = self.format(record)
            if record.levelno >= logging.WARNING:
                text = "warning: " + text
                if sys.stderr.isatty():  # red for what the stage calls an error, such as a failed golden check
                    text = click.style(text, fg="red" if record.levelno >= logging.ERROR else "yellow")
            tqdm.write(text, file=sys.stderr)
        except Exception:
            self.handleError(record)


_terminal_handlers: list[_TerminalLog] = []


@contextlib.contextmanager
def _terminal_log() -> Iterator[None]:
    """Route the ``edgetl`` loggers to `_TerminalLog` for one verb, and only there.

    Records do not propagate to the root logger meanwhile: libraries configure it behind our back
    (ONNX Runtime's calibration calls ``logging.info``, which installs a handler printing
    ``INFO:edgetl...:``), and one line per record is what a person at a terminal should see.
    """
    logger = logging.getLogger("edgetl")
    handler = _TerminalLog(logging.INFO)
    saved = logger.level, logger.propagate
    logger.addHandler(handler)
    _terminal_handlers.append(handler)
    logger.propagate = False
    if logger.level == logging.NOTSET or logger.level > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        if handler in _terminal_handlers:
            _terminal_handlers.remove(handler)
            logger.removeHandler(handler)
        logger.setLevel(saved[0])
        logger.propagate = saved[1]


def hand_logging_to_root() -> None:
    """For a verb that configures logging itself (the daemon): its records go to the root logger's handlers."""
    logger = logging.getLogger("edgetl")
    while _terminal_handlers:
        logger.removeHandler(_terminal_handlers.pop())
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


def use_workstation_extensions() -> None:
    """Lend the runtime what the workstation side offers it (the PyTorch reference backend, the torch CUDA
    fallback), for verbs that may run models. The runtime never imports them itself (docs/architecture.md);
    each registers only where torch is installed, so on a device this does nothing."""
    from edgetl.compile import torch_cuda  # noqa: F401
    from edgetl.validate import torch_backend  # noqa: F401


def handle_errors(func: F) -> F:
    """Run a verb with the CLI's contract: exit codes, stderr for humans, and one JSON document under ``--json``.

    edgetl's own exceptions become a one-paragraph message and their exit code. Anything else is a bug:
    its traceback goes to stderr and the exit code is `EXIT_INTERNAL`, never 1, which scripts read as
    "the validation gate failed". Under ``--json`` a failure that printed no document prints an error
    document instead, so stdout always parses.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        run = _JsonRun(sys.stdout) if kwargs.get("as_json") else None
        try:
            with _terminal_log():
                if run is None:
                    return func(*args, **kwargs)
                _json_runs.append(run)
                try:
                    with contextlib.redirect_stdout(sys.stderr):
                        return func(*args, **kwargs)
                finally:
                    _json_runs.remove(run)
        except EdgetlError as exc:
            _fail(run, exc, kind=type(exc).__name__)
        except click.ClickException as exc:
            _error_document(run, exc.exit_code, exc.format_message(), kind=type(exc).__name__)
            exc.json_reported = True  # type: ignore[attr-defined]
            raise
        except KeyboardInterrupt:
            click.echo("interrupted: outputs written so far are complete; partial files were discarded", err=True)
            _error_document(run, EXIT_INTERRUPTED, "interrupted", kind="KeyboardInterrupt")
            sys.exit(EXIT_INTERRUPTED)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else EXIT_BAD_INPUT)
            if code:
                _error_document(run, code, str(exc.code) if isinstance(exc.code, str) else f"exit code {code}")
            raise
        except Exception as exc:
            path_error = _path_error(exc)
            if path_error is not None:
                _fail(run, path_error, kind=type(exc).__name__)
            click.echo(traceback.format_exc(), err=True, nl=False)
            message = f"unexpected {type(exc).__name__}: {exc}"
            click.secho(f"error: {message}\n  this is a bug in edgetl; please report it with the traceback above",
                        fg="red", err=True)
            _error_document(run, EXIT_INTERNAL, message, kind=type(exc).__name__)
            sys.exit(EXIT_INTERNAL)

    return wrapper  # type: ignore[return-value]


def _fail(run: _JsonRun | None, error: EdgetlError, *, kind: str) -> None:
    """Report one of edgetl's errors (message, hint, JSON document) and exit with its code."""
    click.secho(f"error: {error}", fg="red", err=True)
    _error_document(run, error.exit_code, error.message, hint=error.hint, kind=kind)
    sys.exit(error.exit_code)


def _path_error(exc: BaseException) -> EdgetlError | None:
    """A filesystem failure on a named path as the edgetl error it is; None for any other exception.

    A full disk is the machine's (`EnvironmentMissingError`, exit code 3); a path that is missing, of the wrong
    kind or not permitted is the user's (`BadInputError`, 2). Work already written stays: every output is
    written to a temporary file and renamed into place.
    """
    if not isinstance(exc, OSError) or exc.filename is None or exc.errno not in _PATH_ERRNOS:
        return None
    where = str(exc.filename) if exc.filename2 is None else f"{exc.filename} -> {exc.filename2}"
    message = f"{where}: {exc.strerror or exc}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return EnvironmentMissingError(
            message, hint="free space on that disk, or write to a folder on another one, and run it again")
    return BadInputError(message, hint="check the path: that its folders exist, that it is a file or a folder as "
                                       "the command expects, and that you may read or write there")


def _error_document(run: _JsonRun | None, exit_code: int, message: str, *, hint: str | None = None,
                    kind: str | None = None) -> None:
    """Under ``--json``, the failure as the run's one document, unless the verb already wrote its own."""
    if run is None or run.emitted:
        return
    _write(run, {"error": {"exit_code": exit_code, "message": message, "hint": hint, "type": kind}})


def json_error_document(exit_code: int, message: str, *, kind: str | None = None) -> None:
    """The error document for a failure before any verb ran (a usage error found while parsing flags)."""
    _write(_JsonRun(sys.stdout),
           {"error": {"exit_code": exit_code, "message": message, "hint": None, "type": kind}})


def say(message: str = "", **style: Any) -> None:
    """Human output: always stderr, so stdout stays clean for ``--json``."""
    click.secho(message, err=True, **style)


def show(text: str) -> None:
    """A verb's result (a table, a listing) for people: stdout, so it can be piped to grep or a file.

    Progress, notes and warnings go through `say` (stderr); under ``--json`` call `emit_json` instead.
    """
    click.echo(text)


def emit_json(document: Any, *, indent: int | None = 2) -> None:
    """Print the one JSON document of a ``--json`` run (a second one is a bug in the verb)."""
    run = _json_runs[-1] if _json_runs else _JsonRun(sys.stdout)
    if run.emitted:
        raise RuntimeError("a --json run prints exactly one JSON document; this verb tried to print two")
    _write(run, document, indent=indent)


def _write(run: _JsonRun, document: Any, *, indent: int | None = 2) -> None:
    from edgetl.fileio import _json_default

    run.stream.write(json.dumps(document, indent=indent, default=_json_default) + "\n")
    run.stream.flush()
    run.emitted = True


def parse_int_list(value: str) -> list[int]:
    """Parse ``"1,8,32"`` into ``[1, 8, 32]`` with a usage error on junk."""
    try:
        items = [int(v) for v in value.split(",") if v.strip()]
    except ValueError as exc:
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}") from exc
    if not items or any(v <= 0 for v in items):
        raise click.BadParameter(f"expected positive integers, got {value!r}")
    return items
