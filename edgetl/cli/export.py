"""``edgetl export CHECKPOINT OUT_DIR``: checkpoint -> bundle with model.onnx, parity check, golden samples."""

from __future__ import annotations

import click

from edgetl.cli.common import config_option, emit_json, handle_errors, json_option, say


@click.command()
@click.argument("checkpoint", type=click.Path(dir_okay=False))
@click.argument("out_dir", type=click.Path(file_okay=False))
@click.option("--opset", type=int, default=17, show_default=True, help="ONNX opset (>= 17).")
@click.option("--dynamic-batch/--fixed-batch", default=True, show_default=True,
              help="Symbolic batch dimension, or a fixed one (--batch-size).")
@click.option("--batch-size", type=int, default=1, show_default=True, help="Batch of a --fixed-batch graph.")
@click.option("--simplify/--no-simplify", default=True, show_default=True, help="Simplify the graph with onnxslim.")
@click.option("--parity-data", type=click.Path(), default=None,
              help="Images for the parity check and golden samples (default: the training dataset).")
@click.option("--golden", type=int, default=8, show_default=True, help="Golden samples to store.")
@click.option("--name", default=None, help="Bundle name (default: the directory name).")
@click.option("--overwrite", is_flag=True, help="Replace an existing bundle in OUT_DIR.")
@click.option("--nms", type=click.Choice(["host", "onnx"]), default="host", show_default=True,
              help="Detectors: NMS in the runtime (host) or in the graph (ONNX NonMaxSuppression, "
                   "EfficientNMS-style outputs).")
@config_option
@json_option
@handle_errors
def command(checkpoint, out_dir, opset, dynamic_batch, batch_size, simplify, parity_data, golden, name, overwrite,
            nms, as_json: bool) -> None:
    """Export CHECKPOINT to ONNX in a new bundle OUT_DIR; fails (exit 1) if ONNX Runtime and PyTorch disagree."""
    from edgetl.export import export_checkpoint

    result = export_checkpoint(checkpoint, out_dir, opset=opset, dynamic_batch=dynamic_batch, batch_size=batch_size,
                               simplify=simplify, parity_data=parity_data, golden=golden, name=name,
                               overwrite=overwrite, nms=nms)
    parity = result.parity
    agree = f", top-1 agreement {parity['top1_agreement']:.3f}" if "top1_agreement" in parity else ""
    say(f"exported {result.onnx_path} (opset {opset}, {result.graph.get('nodes')} nodes, "
        f"{'dynamic' if dynamic_batch else f'fixed {batch_size}'} batch)")
    say(f"parity vs PyTorch on {parity['images']} images ({parity['source']}): max abs diff "
        f"{parity['max_abs_diff']:.3g}{agree}: ok", fg="green")
    if as_json:
        emit_json(result.to_dict())
