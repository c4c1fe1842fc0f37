"""``edgetl compile BUNDLE``: build a TensorRT engine for this GPU and record it in the bundle."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, parse_int_list, say
from edgetl.cli.options import cuda_index, device_option, precision_option, renamed_option


def _batch(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    items = parse_int_list(value)
    if len(items) not in (1, 3):
        raise click.BadParameter(f"expected min,opt,max (or one size), got {value!r}")
    if len(items) == 3 and not items[0] <= items[1] <= items[2]:
        raise click.BadParameter(f"expected min <= opt <= max, got {value!r}")
    return tuple(items)


@click.command()
@click.argument("bundle", type=click.Path(file_okay=False))
@precision_option("fp16", help="Engine precision; int8 uses the bundle's QDQ graph (explicit quantization) "
                                "when present; best lets TensorRT choose per layer.")
@click.option("--workspace", "workspace_mb", type=click.IntRange(min=1), default=1024, show_default=True,
              help="Builder workspace memory pool in MiB.")
@click.option("--dla-core", type=click.IntRange(min=0), default=None,
              help="Build for this DLA core (Jetson Xavier/Orin); unsupported layers fall back to the GPU.")
@click.option("--batch-profile", callback=_batch, default="1,8,32", show_default=True,
              help="Optimisation profile min,opt,max batch sizes (dynamic-batch graphs).")
@renamed_option("--batch", "--batch-profile", convert=lambda v: _batch(None, None, v))
@click.option("--builder-level", type=click.IntRange(0, 5), default=3, show_default=True,
              help="Builder optimisation level: higher builds slower and may run faster.")
@click.option("--hardware-compat", is_flag=True, help="Engine runs on any Ampere or newer GPU (slower).")
@click.option("--version-compat", is_flag=True, help="Engine runs on later TensorRT releases (lean runtime inside).")
@click.option("--contexts", type=click.IntRange(min=1), default=2, show_default=True,
              help="Optimisation profiles = execution contexts that can run concurrently.")
@click.option("--calib-data", type=click.Path(exists=True), default=None,
              help="Images for INT8 entropy calibration when the bundle has no QDQ graph.")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True)
@device_option("cuda", indexed=True, gpu_only=True, help="The GPU to build on (cuda = cuda:0).")
@click.option("--nms", type=click.Choice(["keep", "trt"]), default="keep", show_default=True,
              help="Detectors: `trt` ends the engine in TensorRT's EfficientNMS plugin; `keep` leaves the graph as is.")
@config_option
@json_option
@handle_errors
def command(bundle: str, precision: str, workspace_mb: int, dla_core: int | None, batch_profile: tuple[int, ...],
            batch: tuple[int, ...] | None,
            builder_level: int, hardware_compat: bool, version_compat: bool, contexts: int,
            calib_data: str | None, calib_size: int, device: str, nms: str, as_json: bool) -> None:
    """Build a TensorRT engine for this GPU from BUNDLE's ONNX graph.

    The engine lands in BUNDLE/engines/<cc>-trt<version>-<precision>.engine with a compatibility key
    in the manifest; it is then run on the bundle's golden samples (exit 1 if it disagrees).
    With --nms trt (detectors) the engine ends in EfficientNMS and its file name ends in -nms.
    """
    from edgetl.compile.builder import compile_bundle

    say(f"compiling {bundle} ({precision})...")
    result = compile_bundle(bundle, precision, workspace_mb=workspace_mb, dla_core=dla_core,
                            batch=batch or batch_profile,
                            builder_level=builder_level, hardware_compat=hardware_compat,
                            version_compat=version_compat, contexts=contexts, calib_data=calib_data,
                            calib_size=calib_size, device=cuda_index(device), nms=nms)
    if as_json:
        emit_json(result.to_dict())
        return
    compat = result.artifact.compat
    say(f"engine: {result.engine} ({result.artifact.bytes / 1e6:.1f} MB, {result.seconds:.1f} s)")
    say(f"  for {compat['device_name']} (compute {compat['compute_capability']}), TensorRT "
        f"{compat['tensorrt_version']}, {result.artifact.precision}, batch "
        f"{compat['profile'].get('min', ['?'])[0]}..{compat['profile'].get('max', ['?'])[0]}")
    for note in result.notes:
        say(f"  note: {note}")
    say(f"  golden samples: {result.golden.get('summary')}")
