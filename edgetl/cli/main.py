"""The ``edgetl`` click group.

Verbs are loaded lazily, so ``edgetl --help`` and the device-side verbs never import torch.
"""

from __future__ import annotations

import importlib
import sys
import traceback

import click

from edgetl import __version__
from edgetl.cli.common import EXIT_INTERNAL, json_error_document

_WANTS_JSON = "edgetl.wants_json"

# verb -> (module exposing `command`, one-line help shown by `edgetl --help`)
VERBS: dict[str, tuple[str, str]] = {
    "demo": ("edgetl.cli.demo", "Run the whole pipeline on the embedded defaults (offline, a few minutes)."),
    "data": ("edgetl.cli.data", "Sample datasets and dataset checks."),
    "models": ("edgetl.cli.models", "List the pretrained model registry."),
    "train": ("edgetl.cli.train", "Fine-tune a pretrained classifier or detector."),
    "evaluate": ("edgetl.cli.evaluate", "Evaluate a checkpoint on a dataset (top-1, top-5, per class, mAP)."),
    "export": ("edgetl.cli.export", "Export a checkpoint to ONNX in a bundle, with a parity check."),
    "quantize": ("edgetl.cli.quantize", "Quantize a bundle's ONNX model to FP16 or INT8 (QDQ)."),
    "compile": ("edgetl.cli.compile", "Build TensorRT engines for this GPU from a bundle."),
    "validate": ("edgetl.cli.validate", "Compare a candidate model with the FP32 reference; gate on it."),
    "bundle": ("edgetl.cli.bundle", "Pack, unpack and smoke-test deployment bundles."),
    "info": ("edgetl.cli.info", "Describe a bundle: task, labels, artifacts, engines, validation."),
    "predict": ("edgetl.cli.predict", "Run a bundle on images."),
    "bench": ("edgetl.cli.bench", "Measure latency, throughput and memory of each artifact."),
    "serve": ("edgetl.cli.serve", "Serve bundles over HTTP (Open Inference Protocol) on the device."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported only when invoked."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(VERBS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in VERBS:
            return None
        module_name, _ = VERBS[name]
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and exc.name.startswith("edgetl"):
                return _unavailable(name, f"this edgetl build lacks {exc.name}")
            raise
        return module.command

    def resolve_command(self, ctx: click.Context, args: list[str]) -> tuple[str | None, click.Command | None,
                                                                           list[str]]:
        # Remembered before the verb parses its flags: a usage error found while parsing them still
        # owes a --json caller its one JSON document.
        ctx.meta[_WANTS_JSON] = "--json" in args
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if ctx.meta.get(_WANTS_JSON) and not getattr(exc, "json_reported", False):
                json_error_document(exc.exit_code, exc.format_message(), kind=type(exc).__name__)
            raise
        except (click.exceptions.Exit, click.Abort):  # --help, --version, Ctrl-C: click's own exits
            raise
        except Exception as exc:  # outside any verb's handle_errors (loading it): a bug, not a failed gate
            click.echo(traceback.format_exc(), err=True, nl=False)
            click.secho(f"error: unexpected {type(exc).__name__}: {exc}", fg="red", err=True)
            if ctx.meta.get(_WANTS_JSON):
                json_error_document(EXIT_INTERNAL, f"unexpected {type(exc).__name__}: {exc}",
                                    kind=type(exc).__name__)
            sys.exit(EXIT_INTERNAL)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        rows = [(name, help_text) for name, (_, help_text) in VERBS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _unavailable(name: str, reason: str) -> click.Command:
    @click.command(name=name, context_settings={"ignore_unknown_options": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def stub(args: tuple[str, ...]) -> None:
        click.echo(f"edgetl {name}: not available ({reason})", err=True)
        sys.exit(3)

    return stub


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="edgetl")
def cli() -> None:
    """edgetl: fine-tune lightweight vision models and deploy them to Jetson-class devices.

    \b
    Pipeline:  train -> export -> quantize -> compile -> validate -> bundle -> predict / serve
    Exit codes: 0 ok, 1 validation gate failed, 2 bad usage or input, 3 environment lacks something,
    4 an internal error (a bug in edgetl; the traceback is printed).
    Every verb takes --config FILE.yaml (flags override it) and --json (one JSON document on stdout).
    """


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
