"""Quantization-aware fine-tuning (QAT): recover INT8 accuracy on the user's own images, into the same bundle.

The pieces of `edgetl.quantize.qat_api.qat_bundle`, which starts where post-training quantization ends: it runs PTQ
for the TensorRT format (symmetric int8 activations, per-channel symmetric int8 weights; the calibration statistics
in ``calibration/`` are reused on a rerun), turns that QDQ graph into a trainable PyTorch module
(`edgetl.quantize.qat_graph`: the fake quantization *is* the exported graph, BatchNorm folded exactly as exported),
and fine-tunes its weights (every layer by default; with ``--qat-layers N`` only the last ones, on cached inputs:
`pick_cut`) for a few epochs, a fraction of a quantization step per update, against the FP32 model's outputs on the
training images (distillation: the KL divergence of the softmax for classifiers, the normalised squared error of the
head's raw outputs for detectors; labels are not needed, and the FP32 model is the reference the validation gate
compares with).

Each epoch reports its loss and the agreement with FP32 on the validation images, computed by the fake-quant
model (the graph's exact numerics). The best epoch is exported to QDQ ONNX and scored again by ONNX Runtime in
exact numerics beside the PTQ model; it replaces ``model.int8.onnx`` only when it is not worse, so nothing is
overwritten by a worse model. Ctrl-C ends training early and keeps the best state reached.
"""

from __future__ import annotations

import copy
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.metrics.gate import Gate
from edgetl.quantize.budget import describe_bound, within
from edgetl.quantize.qat_graph import WEIGHTED_OPS
from edgetl.quantize.qdq_edit import add_outputs

torch = lazy_import("torch", "train", purpose="quantization-aware fine-tuning")
onnx = lazy_import("onnx", "train", purpose="quantization-aware fine-tuning")
ort = lazy_import("onnxruntime", "train", purpose="quantization-aware fine-tuning")

log = logging.getLogger(__name__)


#: Defaults per task, from `benchmarks/qat.py` (classifier) and `benchmarks/detector.py` (detector). The learning
#: rate is in quantization steps (`edgetl.quantize.qat_graph`). A classifier trains every layer: the error of INT8
#: weights is spread over the whole network (`benchmarks/demo_int8_points.py`), and from 7-bit weights rounded to
#: nearest the last two layers alone recovered 16 of 184 held-out flips where every layer recovered 86 and passed
#: the gate (one-off runs; lr 3e-3 recovered 40 there, and on 8-bit weights 10 more flips than 1e-2). About 160
#: steps: 5 epochs over 1,000 images; 3 epochs over 768 ended outside the gate (top-1 0.33 point down).
TASK_DEFAULTS: dict[str, dict[str, Any]] = {
    "classify": {"epochs": 5, "lr": 1e-2, "layers": None, "images": 1024},
    "detect": {"epochs": 2, "lr": 1e-2, "layers": None, "images": 512},
}


@dataclass(frozen=True)
class QatSettings:
    """How to fine-tune.

    Args:
        epochs: passes over the training images.
        lr: Adam learning rate, in quantization steps (`edgetl.quantize.qat_graph`: each weight is stored in units
            of its channel's PTQ step), so 1e-2 moves a weight by about a hundredth of a code per step.
        batch_size: images per step.
        images: most training images used, class-balanced and seeded (``None``: every image of the split).
        seed: seeds the image draw and the batch order.
        layers: train only the last weighted layers after the latest point where the graph narrows to one
            tensor, with at most this many layers after it (``None``: every layer). The graph before that
            point runs once per image, without gradients, and is cached (`QdqModule.cut_points`).
    """

    epochs: int = 2
    lr: float = 1e-2
    batch_size: int = 32
    images: int | None = 512
    seed: int = 0
    layers: int | None = None

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise BadInputError(f"--qat-epochs must be at least 1, got {self.epochs}")
        if not self.lr > 0:
            raise BadInputError(f"--qat-lr must be positive, got {self.lr}")
        if self.batch_size < 1 or (self.images is not None and self.images < 1):
            raise BadInputError("QAT batch size and image count must be at least 1")
        if self.layers is not None and self.layers < 1:
            raise BadInputError(f"--qat-layers must be at least 1, got {self.layers}")

    @classmethod
    def for_task(cls, task: str, **given: Any) -> QatSettings:
        """The task's defaults (`TASK_DEFAULTS`), with the values in ``given`` that are not ``None``; ``images=0``
        asks for every training image (``--qat-images 0``)."""
        chosen = {**TASK_DEFAULTS.get(task, {}), **{k: v for k, v in given.items() if v is not None}}
        if chosen.get("images") == 0:
            chosen["images"] = None
        return cls(**chosen)

    def to_dict(self) -> dict[str, Any]:
        return {"epochs": self.epochs, "lr": self.lr, "batch_size": self.batch_size, "images": self.images,
                "seed": self.seed, "layers": self.layers, "loss": "distillation from FP32",
                "activation_scales": "calibrated, fixed",
                "weight_scales": "max per channel, recomputed every step",
                "lr_units": "quantization steps (weights: their channel's PTQ step; biases: 256 int32 codes)",
                "schedule": f"Adam, linear warm-up (at most {WARMUP_STEPS} steps), cosine decay"}


@dataclass
class QatOutcome:
    """What the fine-tuning did.

    Attributes:
        kept: ``qat`` (the QAT model was written) or ``ptq`` (QAT did not beat PTQ; the PTQ model stays).
        ptq, qat: the PTQ and QAT models' metrics on the validation images, in exact numerics (ONNX Runtime).
        history: per epoch (0: the start, i.e. the PTQ point): loss, agreement, seconds.
        best_epoch: the epoch exported.
        interrupted: training stopped by Ctrl-C.
        seconds: wall time after PTQ: decoding, FP32 targets, frozen prefix, training, export and scoring.
        images: training images used.
        gate: ``(max drop, min agreement)`` the epoch and the kept model were chosen for.
    """

    kept: str
    ptq: dict[str, Any]
    qat: dict[str, Any]
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    images: int = 0
    gate: Gate | None = None

    def to_dict(self) -> dict[str, Any]:
        gate = None if self.gate is None else {"max_drop": self.gate[0], "min_agreement": self.gate[1]}
        return {"kept": self.kept, "ptq": self.ptq, "qat": self.qat, "history": self.history,
                "best_epoch": self.best_epoch, "interrupted": self.interrupted, "seconds": round(self.seconds, 2),
                "images": self.images, "gate": gate}


#: In an unlabelled folder, every fifth image (sorted by path) is held out to choose QAT's epoch on.
HOLDOUT_EVERY = 5


def qat_images(source: str | Path, labels: list[str], split: str, task: str = "classify",
               shared: bool = True) -> Any:
    """QAT's ``train`` or ``val`` images: a dataset's split (a detector's always is one), or, when training and
    validation draw from the same unlabelled folder (``shared``), its share of it (`HOLDOUT_EVERY`), so the
    epoch is never chosen on the images it trained on."""
    from edgetl.data.imagesets import find_images

    images = find_images(source, split=split, labels=labels)
    if images.classes is not None or task == "detect" or not shared:
        return images
    held_out = [i % HOLDOUT_EVERY == HOLDOUT_EVERY - 1 for i in range(len(images.paths))]
    return images.subset([i for i, out in enumerate(held_out) if out == (split == "val")])


def check_labels(source: str | Path, labels: list[str], task: str) -> None:
    """Refuse a dataset whose classes are not the bundle's: training on it would teach other classes.

    A classifier may also fine-tune on a folder of unlabelled images: the loss distils the FP32 model's outputs,
    and the held-out share is scored by agreement with FP32 alone."""
    from edgetl.data.imagesets import find_images

    if task == "detect":
        from edgetl.data.detection import read_detection_dataset

        classes = list(read_detection_dataset(source, verify_images=False).classes)
    else:
        classes = find_images(source, split="train", labels=None).classes
        if classes is None:
            log.info("QAT on unlabelled images (%s): distillation from FP32; every %dth image chooses the epoch, "
                     "by agreement with FP32", source, HOLDOUT_EVERY)
            return
    if classes is None:
        raise BadInputError(f"{source}: no labelled dataset (a folder per class, or a detection data.yaml)",
                            hint="pass --data with the dataset the model was trained on")
    if list(classes) == list(labels):
        return
    missing = [c for c in labels if c not in classes]
    extra = [c for c in classes if c not in labels]
    what = "; ".join(part for part in (f"missing {missing}" if missing else "",
                                       f"not in the model {extra}" if extra else "") if part)
    if not what and task == "detect":
        what = f"same classes in another order: {list(classes)} instead of {list(labels)}"
    if what:
        raise BadInputError(f"{source}: its classes differ from the bundle's labels: {what}",
                            hint="pass --data with the dataset the model was trained on")


def train_qat(module: Any, inputs: np.ndarray, targets: dict[str, np.ndarray], evaluate: Any,
              settings: QatSettings, *, classify: bool, progress: bool = False,
              start: tuple[int, str] | None = None, gate: Gate | None = None) -> tuple[dict, list, int, bool]:
    """Fine-tune ``module`` (a `qat_graph` module) to reproduce ``targets`` (FP32 outputs by tensor name).

    Args:
        inputs: preprocessed training images, or (``start``) the cut tensor's cached values.
        targets: the FP32 model's value of each tensor the loss compares, for every training image.
        evaluate: ``evaluate(module) -> metrics`` on the validation images (``agreement``, ``sensitivity``...).
        classify: KL of the softmax of the one target (logits); else normalised squared error of each target.
        start: ``(node index, tensor)``: train the graph after this cut point only.
        gate: the best epoch is the first one within it (then by drop and agreement, `_key`); ``None``: by drop
            and agreement alone.

    Returns:
        (best state dict, history, best epoch, interrupted).
    """
    torch.manual_seed(settings.seed)
    names = list(targets)
    scale = {n: float(np.maximum(targets[n].std(), 1e-6)) for n in names}
    optimizer = torch.optim.Adam(module.parameters(), lr=settings.lr)
    steps = settings.epochs * int(np.ceil(len(inputs) / settings.batch_size))
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_cosine(steps))
    initial = evaluate(module)
    history = [{"epoch": 0, "loss": None, **_brief(initial), "seconds": 0.0}]
    best, best_key, best_epoch = copy.deepcopy(module.state_dict()), _key(initial, gate), 0
    log.info("QAT: %d epoch(s) over %d images, batch %d, lr %g; start (PTQ point): agreement %.4f",
             settings.epochs, len(inputs), settings.batch_size, settings.lr, initial["agreement"])
    interrupted = False
    rng = np.random.default_rng(settings.seed)
    try:
        for epoch in range(1, settings.epochs + 1):
            t0 = time.perf_counter()
            order = rng.permutation(len(inputs))
            batches: Any = range(0, len(order), settings.batch_size)
            if progress:
                from tqdm import tqdm

                batches = tqdm(batches, desc=f"QAT epoch {epoch}/{settings.epochs}", unit="batch", leave=False)
            total = 0.0
            for i in batches:
                pick = order[i:i + settings.batch_size]
                outputs = module(torch.from_numpy(inputs[pick]), extra=names, start=start)
                loss = _loss(outputs, {n: torch.from_numpy(targets[n][pick]) for n in names}, scale, classify)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(pick)
            metrics = evaluate(module)
            history.append({"epoch": epoch, "loss": total / len(inputs), **_brief(metrics),
                            "seconds": round(time.perf_counter() - t0, 2)})
            log.info("QAT epoch %d/%d: loss %.4g, validation agreement %.4f%s (%.1f s)", epoch, settings.epochs,
                     total / len(inputs), metrics["agreement"],
                     f", top-1 {metrics['top1']:.4f}" if "top1" in metrics else "", time.perf_counter() - t0)
            if _key(metrics, gate) > best_key:
                best, best_key, best_epoch = copy.deepcopy(module.state_dict()), _key(metrics, gate), epoch
    except KeyboardInterrupt:
        interrupted = True
        log.warning("QAT interrupted: keeping the best state reached (epoch %d)", best_epoch)
    module.load_state_dict(best)
    return best, history, best_epoch, interrupted


#: Linear warm-up: at most this many steps, and at most `WARMUP_SHARE` of the run. Adam's first steps, before its
#: second-moment estimate settles, move every parameter by the full learning rate whatever its gradient.
WARMUP_STEPS = 32
WARMUP_SHARE = 0.2


def warmup_cosine(steps: int) -> Any:
    """The learning-rate factor at each step: a linear warm-up (`WARMUP_STEPS`), then cosine decay to 0."""
    warmup = max(1, min(WARMUP_STEPS, int(steps * WARMUP_SHARE)))
    decay = max(steps - warmup, 1)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1.0 + float(np.cos(np.pi * min(step - warmup, decay) / decay)))

    return factor


def _loss(outputs: dict[str, Any], targets: dict[str, Any], scale: dict[str, float], classify: bool) -> Any:
    functional = torch.nn.functional
    if classify:
        (name,) = targets
        return functional.kl_div(functional.log_softmax(outputs[name], dim=1),
                                 functional.log_softmax(targets[name], dim=1), log_target=True, reduction="batchmean")
    return sum(functional.mse_loss(outputs[n] / scale[n], targets[n] / scale[n]) for n in targets)


def _passes(metrics: dict[str, Any], gate: Gate | None) -> bool:
    return gate is not None and within(metrics, gate[0], gate[1])


def _key(metrics: dict[str, Any], gate: Gate | None = None) -> tuple[bool, float, float, float]:
    """Higher is better: within ``gate`` first; then the smaller drop, then agreement with FP32, then the smaller
    sensitivity. A negative drop counts as none (see `worse`), so among models that lose no accuracy the one
    that agrees most with FP32 wins."""
    return (_passes(metrics, gate), -round(max(metrics["drop"], 0.0), 9), round(metrics["agreement"], 9),
            -metrics["sensitivity"])


def _brief(metrics: dict[str, Any]) -> dict[str, Any]:
    keys = ("agreement", "drop", "sensitivity", "top1", "map")
    return {k: metrics[k] for k in keys if k in metrics}


def worse(candidate: dict[str, Any], baseline: dict[str, Any], gate: Gate | None = None) -> bool:
    """Whether QAT's model is worse than PTQ's: outside ``gate`` while PTQ is within it; otherwise (both within,
    or both outside) lower agreement, a larger drop, or equal and a larger error. A QAT model within the gate
    replaces a PTQ model outside it even when one of its numbers is lower: the gate is what `validate` applies.

    A negative drop (INT8 scoring above FP32) is counted as no drop: on a few hundred images it is a handful of
    near-ties falling the lucky way, not a quality to keep at the cost of agreement.
    """
    if _passes(candidate, gate) != _passes(baseline, gate):
        return _passes(baseline, gate)
    drop, base = max(candidate["drop"], 0.0), max(baseline["drop"], 0.0)
    if candidate["agreement"] < baseline["agreement"] - 1e-9 or drop > base + 1e-9:
        return True
    return _tied(candidate, baseline) and candidate["sensitivity"] > baseline["sensitivity"]


def _tied(candidate: dict[str, Any], baseline: dict[str, Any]) -> bool:
    """The same agreement and the same drop (a negative drop counting as none, see `worse`)."""
    return abs(candidate["agreement"] - baseline["agreement"]) <= 1e-9 \
        and abs(max(candidate["drop"], 0.0) - max(baseline["drop"], 0.0)) <= 1e-9


def why_worse(candidate: dict[str, Any], baseline: dict[str, Any], gate: Gate | None = None) -> str:
    """Why `worse` found QAT's model worse than PTQ's, for the warning that PTQ is kept."""
    if gate is not None and _passes(baseline, gate) and not _passes(candidate, gate):
        return (f"PTQ is within the gate ({describe_bound(*gate)}) and QAT is not: agreement "
                f"{candidate['agreement']:.4f} vs {baseline['agreement']:.4f}, drop {candidate['drop']:.2f} vs "
                f"{baseline['drop']:.2f} points")
    if _tied(candidate, baseline):
        return (f"the same agreement ({candidate['agreement']:.4f}) and drop, with a larger output error "
                f"({candidate['sensitivity']:.4g} vs {baseline['sensitivity']:.4g})")
    return (f"agreement {candidate['agreement']:.4f} vs {baseline['agreement']:.4f}, drop {candidate['drop']:.2f} "
            f"vs {baseline['drop']:.2f} points")


def loss_tensors(quantized: Any, reference: Any, task: str) -> list[str]:
    """The tensors the loss compares: the logits, or a detector's head outputs (the decode stays float and
    carries pixels: its inputs are where INT8 error comes from)."""
    outputs = [o.name for o in reference.graph.output]
    if task == "classify":
        return outputs[:1]
    from edgetl.detect.nms_onnx import decode_tail_nodes

    tail = set(decode_tail_nodes(reference))
    produced = {out: n for n in reference.graph.node for out in n.output}
    heads = []
    for node in reference.graph.node:
        if node.name not in tail:
            continue
        for name in node.input:
            source = produced.get(name)
            if source is not None and source.name not in tail and name not in heads:
                heads.append(name)
    return heads or outputs


def graph_values(model_path: Path, batch: np.ndarray, names: list[str], *, numerics: str = "device",
                 chunk: int = 64, progress: bool = False, what: str = "graph values") -> dict[str, np.ndarray]:
    """An ONNX graph's value of ``names`` on ``batch`` (ONNX Runtime, intermediate tensors added as outputs).

    Serves the FP32 model's loss targets and the PTQ graph's frozen prefix (the cut tensor QAT trains from): ONNX
    Runtime runs the frozen layers 4-12x faster than the fake-quant module, in the numerics the result is gated in.
    """
    from edgetl.runtime.backends.onnxruntime import session_options

    model = onnx.load(str(model_path))
    if numerics == "exact":
        from edgetl.quantize.exact_form import integer_pads

        model = integer_pads(model)[0]
    add_outputs(model, names)
    session = ort.InferenceSession(model.SerializeToString(), session_options(numerics),
                                   providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    starts: Any = range(0, len(batch), chunk)
    if progress:
        from tqdm import tqdm

        starts = tqdm(starts, desc=what, unit="batch", leave=False)
    for i in starts:
        for name, value in zip(names, session.run(names, {input_name: batch[i:i + chunk]})):
            parts[name].append(value)
    return {n: np.concatenate(v) for n, v in parts.items()}


def module_outputs(module: Any, batch: np.ndarray, names: list[str], *, chunk: int = 64,
                   start: tuple[int, str] | None = None) -> dict[str, np.ndarray]:
    """The fake-quant module's ``names`` on ``batch`` (or, with ``start``, on the cut tensor's values)."""
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    with torch.no_grad():
        for i in range(0, len(batch), chunk):
            out = module(torch.from_numpy(batch[i:i + chunk]), extra=names, start=start)
            for name in names:
                parts[name].append(out[name].numpy())
    return {n: np.concatenate(v) for n, v in parts.items()}


def export_module(module: Any, directory: str | Path | None = None) -> Path:
    """Write the module's QDQ graph to a temporary file (the caller moves or removes it)."""
    from edgetl.export.onnx_graph import save_onnx

    folder = Path(directory) if directory else Path(tempfile.mkdtemp(prefix="edgetl-qat-"))
    return save_onnx(module.to_onnx(), folder / "model.qat.onnx")


def pick_cut(module: Any, layers: int | None) -> tuple[int, str] | None:
    """The earliest cut point with at most ``layers`` weighted layers after it (``None``: train everything)."""
    if layers is None or layers >= sum(n.op_type in WEIGHTED_OPS for n in module.nodes):
        return None
    for index, tensor, after in module.cut_points():
        if 1 <= after <= layers:
            return index, tensor
    return None
