"""Torch -> ONNX: trace, full checker, simplification. One job: produce a sound ONNX graph file."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError, EdgetlError
from edgetl.lazy import lazy_import

log = logging.getLogger(__name__)

MIN_OPSET = 17


onnx = lazy_import("onnx", "train", purpose="exporting to ONNX")
onnxslim = lazy_import("onnxslim", "train", purpose="simplifying ONNX graphs")
torch = lazy_import("torch", "train", purpose="exporting to ONNX")


def trace_to_onnx(model: Any, path: Path, *, size: tuple[int, int], input_name: str, output_names: list[str],
                  opset: int, dynamic_batch: bool, batch_size: int = 1) -> None:
    """Export ``model`` (eval mode) with the TorchScript-based exporter (no onnxscript needed).

    Args:
        model: a ``torch.nn.Module`` in eval mode.
        path: where to write the raw graph.
        size: input ``(height, width)``.
        input_name, output_names: tensor names the bundle manifest and runtime use.
        opset: ONNX opset, at least `MIN_OPSET`.
        dynamic_batch: batch dimension symbolic (``batch``) or fixed at ``batch_size``.
    """
    if opset < MIN_OPSET:
        raise BadInputError(f"opset {opset} is too old; edgetl exports opset >= {MIN_OPSET}")
    dummy = torch.zeros((batch_size, 3, *size), dtype=torch.float32)
    axes = None
    if dynamic_batch:
        axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about Python control flow on shapes are expected
        try:
            torch.onnx.export(model, (dummy,), str(path), input_names=[input_name], output_names=output_names,
                              dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
        except Exception as exc:  # the exporter raises many types; say what failed and where
            raise EdgetlError(f"torch.onnx.export failed: {type(exc).__name__}: {exc}",
                              hint="an operator may not be exportable at this opset; try --opset 18") from exc


def check_graph(model_or_path: Any, where: str) -> None:
    """``onnx.checker`` with ``full_check`` (shape inference included); raises with the checker's words."""
    try:
        onnx.checker.check_model(model_or_path if not isinstance(model_or_path, Path) else str(model_or_path),
                                 full_check=True)
    except Exception as exc:  # ValidationError, InferenceError
        raise BadInputError(f"{where}: ONNX checker rejects the graph: {exc}") from exc


def simplify_graph(model: Any) -> tuple[Any, dict[str, Any]]:
    """Simplify with onnxslim (constant folding, dead-code and shape-op removal).

    Returns ``(model, info)``; when the simplifier fails the original graph is kept and the reason
    recorded, since an unsimplified graph is still correct.
    """
    before = len(model.graph.node)
    try:
        slim = onnxslim.slim(model)
    except Exception as exc:  # keep going with the correct, unsimplified graph
        log.warning("onnxslim failed (%s); keeping the unsimplified graph", exc)
        return model, {"simplified": False, "simplify_error": str(exc), "nodes": before}
    return slim, {"simplified": True, "tool": f"onnxslim {onnxslim.__version__}", "nodes_before": before,
                  "nodes": len(slim.graph.node)}


def set_metadata(model: Any, metadata: dict[str, str]) -> None:
    """Write string metadata into the ONNX model (visible in Netron and via ORT's modelmeta)."""
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, metadata)


def op_histogram(model: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for node in model.graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def load_onnx(path: str | Path) -> Any:
    """Load an ONNX file with a clear error for a missing or corrupt file."""
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"ONNX model not found: {path}")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError and friends
        raise BadInputError(f"{path}: not a readable ONNX model ({type(exc).__name__}: {exc})",
                            hint="the file is corrupt or truncated; re-run `edgetl export`") from exc


def save_onnx(model: Any, path: str | Path) -> Path:
    """Serialise atomically (temp file + rename)."""
    from edgetl.fileio import write_bytes

    return write_bytes(path, model.SerializeToString())
