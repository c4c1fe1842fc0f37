"""The ``edgetl`` click group.

Verbs are loaded lazily, so ``edgetl --help`` and the device-side verbs never import torch.
"""

from __future__ import annotations

import importlib
import sys

import click

from edgetl import __version__

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
    Exit codes: 0 ok, 1 validation gate failed, 2 bad usage or input, 3 environment lacks something.
    Every verb takes --config FILE.yaml (flags override it) and most take --json.
    """


def main() -> None:
    cli(prog_name="edgetl")


if __name__ == "__main__":
    main()
