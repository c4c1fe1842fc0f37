"""``edgetl bench BUNDLE``: latency, throughput and memory of each artifact, with a PyTorch baseline."""

from __future__ import annotations

import click

from edgetl.cli.common import (
    config_option,
    emit_json,
    handle_errors,
    json_option,
    parse_int_list,
    show,
    use_workstation_extensions,
)
from edgetl.cli.options import device_option, no_verify_option, renamed_option


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@click.option("--backend", default="auto", show_default=True, type=click.Choice(["auto", "onnxruntime", "tensorrt"]))
@click.option("--precision", default="all", show_default=True,
              help="Comma-separated precisions to measure (fp32,fp16,int8) or 'all'.")
@click.option("--batch-sizes", default="1,8", show_default=True, help="Comma-separated batch sizes to measure.")
@renamed_option("--batch", "--batch-sizes")
@click.option("--iters", default=50, show_default=True, type=click.IntRange(1), help="Timed calls per run.")
@click.option("--warmup", default=5, show_default=True, type=click.IntRange(0), help="Untimed calls first.")
@device_option("auto")
@click.option("--threads", default=0, show_default=True, type=click.IntRange(0),
              help="Intra-op threads for ONNX Runtime and torch (0: library default).")
@click.option("--torch/--no-torch", "torch_baseline", default=True, show_default=True,
              help="Add a PyTorch baseline row where torch and the checkpoint are available.")
@click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Training checkpoint for the PyTorch baseline when the bundle carries none.")
@no_verify_option()
@config_option
@json_option
@handle_errors
def command(bundle: str, backend: str, precision: str, batch_sizes: str, batch: str | None, iters: int,
            warmup: int, device: str,
            threads: int, torch_baseline: bool, checkpoint: str | None, no_verify: bool,
            as_json: bool) -> None:
    """Measure p50/p90/p99 latency, throughput and peak RSS of every artifact of BUNDLE."""
    from edgetl.runtime.artifacts import PRECISIONS
    from edgetl.runtime.bench import bench_bundle, format_bench

    precisions = None if precision == "all" else [p.strip() for p in precision.split(",") if p.strip()]
    unknown = sorted(set(precisions or []) - {*PRECISIONS, "mixed"})
    if unknown:
        raise click.BadParameter(f"unknown precision(s) {', '.join(unknown)}", param_hint="--precision")
    use_workstation_extensions()
    report = bench_bundle(bundle, backend=backend, precisions=precisions, batches=parse_int_list(batch or batch_sizes),
                          iters=iters, warmup=warmup, device=device, threads=threads,
                          torch_baseline=torch_baseline, checkpoint=checkpoint, verify=not no_verify)
    if as_json:
        emit_json(report)
    else:
        show(format_bench(report))
