"""`export_checkpoint`: checkpoint -> bundle with ``model.onnx``, parity report and golden samples."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.bundle.manifest import MANIFEST_NAME, Bundle
from edgetl.data.imagesets import balanced_indices, decode, find_images
from edgetl.errors import BadInputError
from edgetl.export.onnx_graph import (
    check_graph,
    load_onnx,
    op_histogram,
    save_onnx,
    set_metadata,
    simplify_graph,
    trace_to_onnx,
)
from edgetl.export.parity import ParityError, backend_outputs, compare_outputs, torch_outputs
from edgetl.fileio import sha256_file
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec

torch = lazy_import("torch", "train", purpose="exporting a checkpoint")

log = logging.getLogger(__name__)

INPUT_NAME = "input"
MODEL_FILE = "model.onnx"
PARITY_IMAGES = 16


@dataclass
class ExportResult:
    """What `export_checkpoint` produced.

    Attributes:
        bundle_dir: the bundle directory.
        onnx_path: the FP32 graph.
        parity: ONNX Runtime vs PyTorch report (max_abs_diff, top1_agreement, images, passed, source).
        graph: exporter facts (opset, node counts, simplification, dynamic batch).
        warnings: things the user should know (synthetic parity images, undecodable files...).
    """

    bundle_dir: Path
    onnx_path: Path
    parity: dict[str, Any]
    graph: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"bundle": str(self.bundle_dir), "onnx": str(self.onnx_path), "parity": self.parity,
                "graph": self.graph, "warnings": self.warnings}


def export_checkpoint(
    checkpoint: str | Path,
    out_dir: str | Path,
    *,
    opset: int = 17,
    dynamic_batch: bool = True,
    batch_size: int = 1,
    simplify: bool = True,
    parity_data: str | Path | None = None,
    golden: int = 8,
    name: str | None = None,
    overwrite: bool = False,
    parity_atol: float = 1e-3,
    nms: str = "host",
) -> ExportResult:
    """Export an edgetl checkpoint to a new bundle.

    Args:
        checkpoint: an edgetl checkpoint (``best.pt``).
        out_dir: bundle directory to create.
        opset: ONNX opset (>= 17).
        dynamic_batch: symbolic batch dimension; otherwise fixed at ``batch_size`` (some compilers and
            DLA cores want static shapes).
        batch_size: the fixed batch when ``dynamic_batch`` is False.
        simplify: run onnxslim on the graph.
        parity_data: images for the parity check and golden samples (a dataset or a folder). Defaults to
            the dataset recorded in the checkpoint; synthetic images are used (with a warning) only when
            neither exists.
        golden: how many golden samples to store (0 for none).
        name: bundle name (defaults to the directory name).
        overwrite: replace an existing bundle in ``out_dir`` (its artifacts are removed first).
        parity_atol: absolute tolerance of the parity check (plus 1e-4 relative to the largest output).
        nms: detectors only: ``"host"`` (outputs ``boxes``/``scores``, NMS in the runtime) or ``"onnx"``
            (the graph ends in ONNX ``NonMaxSuppression`` with EfficientNMS-style outputs; parity is
            checked on the decoded outputs before NMS is appended).

    Raises:
        ParityError: ONNX Runtime and PyTorch disagree beyond the tolerance (exit code 1); the graph is
            kept as ``model.parity-failed.onnx`` for inspection and no manifest is written.
        BadInputError: bad checkpoint, existing bundle without ``overwrite``, unreadable parity data.
    """
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend
    from edgetl.train.checkpoint import build_from_checkpoint

    checkpoint = Path(checkpoint)
    out = Path(out_dir)
    _prepare_out_dir(out, overwrite)
    if not dynamic_batch and batch_size < 1:
        raise BadInputError(f"batch size must be >= 1, got {batch_size}")
    model, meta = build_from_checkpoint(checkpoint)
    spec: PreprocessSpec = meta.preprocess
    classify = meta.task == "classify"
    output_names = ["logits"] if classify else list(getattr(model, "onnx_output_names", ["output"]))
    if nms not in ("host", "onnx"):
        raise BadInputError(f"unknown --nms {nms!r}; expected host or onnx")
    if classify and nms != "host":
        raise BadInputError("--nms onnx applies to detectors only")
    postprocess = {"type": "softmax"} if classify else dict(model.postprocess_spec(nms=nms))
    notes: list[str] = []

    with tempfile.TemporaryDirectory(prefix="edgetl-export-") as tmp:
        raw_path = Path(tmp) / "raw.onnx"
        trace_to_onnx(model, raw_path, size=spec.size, input_name=INPUT_NAME, output_names=output_names,
                      opset=opset, dynamic_batch=dynamic_batch, batch_size=batch_size)
        graph = load_onnx(raw_path)
    check_graph(graph, "exported graph")
    graph_info: dict[str, Any] = {"opset": opset, "dynamic_batch": dynamic_batch,
                                  "batch_size": None if dynamic_batch else batch_size}
    if simplify:
        graph, slim_info = simplify_graph(graph)
        graph_info.update(slim_info)
        check_graph(graph, "simplified graph")
        if not slim_info["simplified"]:
            notes.append(f"graph simplification failed and was skipped: {slim_info['simplify_error']}")
    else:
        graph_info.update({"simplified": False, "nodes": len(graph.graph.node)})
    graph_info["ops"] = op_histogram(graph)
    set_metadata(graph, {"edgetl.task": meta.task, "edgetl.labels": json.dumps(meta.labels),
                         "edgetl.preprocess": json.dumps(spec.to_dict()), "edgetl.model": meta.model})

    batch, sources, parity_source = _parity_batch(parity_data, meta, spec, notes)
    candidate_path = out / ".model.export.onnx"
    save_onnx(graph, candidate_path)
    try:
        with OnnxRuntimeBackend(candidate_path, device="cpu") as backend:
            ort_out = backend_outputs(backend, batch, fixed_batch=None if dynamic_batch else batch_size)
        ref_out = torch_outputs(model, batch, output_names)
        parity = compare_outputs(ref_out, ort_out, classify=classify, tolerance=_tolerance(parity_atol))
        parity["source"] = parity_source
        if not parity["passed"]:
            failed = out / "model.parity-failed.onnx"
            candidate_path.replace(failed)
            raise ParityError(
                f"export parity check failed: ONNX Runtime vs PyTorch max abs diff {parity['max_abs_diff']:.3g}"
                + (f", top-1 agreement {parity['top1_agreement']:.3f}" if classify else "")
                + f" on {parity['images']} images; graph kept at {failed}",
                hint="try --no-simplify or another --opset; report the model if it persists",
            )
        onnx_path = out / MODEL_FILE
        if nms == "onnx":
            ort_out, output_names = _append_nms(candidate_path, model, batch, dynamic_batch, batch_size)
            graph_info["nms"] = "onnx"
        candidate_path.replace(onnx_path)
    finally:
        if candidate_path.exists():
            candidate_path.unlink()

    bundle = Bundle.create(
        out, task=meta.task, name=name or out.resolve().name, labels=meta.labels, input_name=INPUT_NAME,
        preprocess=spec, dynamic_batch=dynamic_batch, postprocess=postprocess,
        provenance=_provenance(checkpoint, meta, model, opset),
    )
    if not dynamic_batch:
        bundle.manifest["input"]["batch_size"] = batch_size
    bundle.add_artifact(onnx_path, kind="onnx", precision="fp32", created_by="export",
                        info={**{k: v for k, v in graph_info.items() if k != "ops"}, "outputs": output_names})
    bundle.set_section("export", {"parity": parity, "graph": graph_info})
    if golden > 0:
        _write_golden(bundle, batch[:golden], {k: v[:golden] for k, v in ort_out.items()}, sources[:golden])
    bundle.save()
    for note in notes:
        log.warning(note)
    return ExportResult(out, onnx_path, parity, graph_info, notes)


def _tolerance(atol: float):
    from edgetl.export.parity import ParityTolerance

    return ParityTolerance(atol=atol)


def _prepare_out_dir(out: Path, overwrite: bool) -> None:
    manifest = out / MANIFEST_NAME
    if out.exists() and not out.is_dir():
        raise BadInputError(f"{out} exists and is not a directory")
    if manifest.is_file():
        if not overwrite:
            raise BadInputError(f"{out} already holds a bundle", hint="pass --overwrite to replace it")
        try:
            old = json.loads(manifest.read_text(encoding="utf-8"))
            recorded = [a.get("path", "") for a in old.get("artifacts", [])]
        except (OSError, json.JSONDecodeError):
            recorded = []
        root = out.resolve()
        for rel in [*recorded, "report.json", "report.md", MANIFEST_NAME]:
            target = (out / rel).resolve()
            if target.is_file() and root in target.parents:
                target.unlink()
        for sub in ("golden", "calibration"):
            if (out / sub).is_dir():
                shutil.rmtree(out / sub)
    out.mkdir(parents=True, exist_ok=True)


def _parity_batch(parity_data: str | Path | None, meta: Any, spec: PreprocessSpec, notes: list[str]
                  ) -> tuple[np.ndarray, list[str], str]:
    """Real preprocessed images for parity and golden samples; synthetic only as a last resort."""
    source = parity_data or meta.train_config.get("data") or meta.provenance.get("dataset")
    if source and Path(source).exists():
        images = find_images(source, split="val" if parity_data is None else "all", labels=meta.labels)
        if images.labels and images.labels[0] is None:
            picked = list(range(min(PARITY_IMAGES, len(images.paths))))
        else:
            picked = balanced_indices(images.labels, PARITY_IMAGES, seed=0)
        decoded = decode(images.subset(picked), spec, what="parity images")
        if decoded.failures:
            notes.append(f"{len(decoded.failures)} parity image(s) could not be decoded and were skipped")
        if len(decoded.batch):
            return decoded.batch, [p.name for p in decoded.paths], str(images.source)
        raise BadInputError(f"{source}: none of the parity images could be decoded")
    if parity_data:
        raise BadInputError(f"parity data not found: {parity_data}")
    notes.append("no image data found for the parity check (pass --parity-data); used synthetic images")
    return _synthetic_batch(spec), [f"synthetic-{i}" for i in range(PARITY_IMAGES)], "synthetic"


def _synthetic_batch(spec: PreprocessSpec) -> np.ndarray:
    """Smooth seeded colour fields (not noise): activations stay in a realistic range."""
    from edgetl.preprocess import preprocess_batch

    rng = np.random.default_rng(0)
    images = []
    for _ in range(PARITY_IMAGES):
        low = rng.integers(0, 256, size=(4, 4, 3)).astype(np.uint8)
        from PIL import Image

        images.append(np.asarray(Image.fromarray(low).resize((96, 96), Image.Resampling.BICUBIC)))
    batch, _ = preprocess_batch(images, spec)
    return batch


def _provenance(checkpoint: Path, meta: Any, model: Any, opset: int) -> dict[str, Any]:
    return {
        "base_model": meta.model,
        "weights_source": meta.provenance.get("weights_source") or getattr(model, "edgetl_weights", None),
        "dataset": _dataset_path(meta.train_config.get("data") or meta.provenance.get("dataset")),
        "dataset_digest": meta.provenance.get("dataset_digest"),
        "training_config": meta.train_config,
        "checkpoint": {"file": checkpoint.name, "sha256": sha256_file(checkpoint), "epoch": meta.epoch,
                       "metrics": meta.metrics},
        "opset": opset,
        "exporter": f"torch {torch.__version__} (torch.onnx, TorchScript tracer)",
    }


def _dataset_path(recorded: str | None) -> str | None:
    """The training dataset as the bundle records it: absolute when it can be found from here.

    Training records the path as typed (``data/digits``), relative to wherever it ran. Quantize and
    validate read the bundle's copy from any directory, so a relative path that exists from the working
    directory of the export is pinned down now; anything else is kept as recorded.
    """
    if recorded and not Path(recorded).is_absolute() and Path(recorded).exists():
        return str(Path(recorded).resolve())
    return recorded


def _append_nms(path: Path, model: Any, batch: np.ndarray, dynamic_batch: bool, batch_size: int
                ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Rewrite the detector graph at ``path`` to end in NMS; returns its outputs on ``batch`` and their names."""
    from edgetl.detect.nms_onnx import NMS_OUTPUTS, add_nms
    from edgetl.runtime.backends.onnxruntime import OnnxRuntimeBackend

    graph = add_nms(load_onnx(path), max_detections=int(model.max_detections),
                    iou_threshold=float(model.iou_threshold), score_threshold=float(model.score_threshold),
                    class_agnostic=bool(model.class_agnostic))
    check_graph(graph, "graph with NMS")
    save_onnx(graph, path)
    with OnnxRuntimeBackend(path, device="cpu") as backend:
        outputs = backend_outputs(backend, batch, fixed_batch=None if dynamic_batch else batch_size)
    return outputs, list(NMS_OUTPUTS)


def _write_golden(bundle: Bundle, inputs: np.ndarray, outputs: dict[str, np.ndarray], sources: list[str]) -> None:
    from edgetl.fileio import atomic_open

    root = bundle.root / "golden"
    root.mkdir(parents=True, exist_ok=True)
    entries = {"input": "golden/input.npy", "outputs": {}}
    with atomic_open(root / "input.npy", "wb") as fh:
        np.save(fh, np.ascontiguousarray(inputs, dtype=np.float32))
    bundle.add_artifact(root / "input.npy", kind="golden", precision="fp32", created_by="export")
    for name, value in outputs.items():
        rel = f"golden/output_{name}.npy"
        with atomic_open(bundle.root / rel, "wb") as fh:
            np.save(fh, np.ascontiguousarray(value, dtype=np.float32))
        bundle.add_artifact(bundle.root / rel, kind="golden", precision="fp32", created_by="export")
        entries["outputs"][name] = rel
    from edgetl.bundle.check import TOLERANCES

    bundle.set_section("golden", {**entries, "tolerance": TOLERANCES, "sources": sources})
