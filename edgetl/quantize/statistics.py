"""Streaming activation statistics for INT8 calibration, one batch at a time.

ONNX Runtime's own calibrators keep every intermediate tensor of every calibration image in memory before
they build histograms (16 GB for EfficientNet-Lite0 on 300 images, the OOM killer on a detector), and its
entropy calibrator's default of 128 histogram bins for 128 quantized bins leaves exactly one candidate
threshold, so "entropy" silently returns the min/max range. Here each batch is run once through the FP32
graph with the tensors to calibrate added as outputs, folded into running statistics, and dropped:

- running min / max per tensor;
- a histogram of |x| with a fixed number of bins whose range doubles (merging bin pairs) when a batch
  exceeds it, so it never needs the whole data set at once;
- the per-position mean of each weighted layer's input, which bias correction needs (`edgetl.quantize.weights`);
- the mean and covariance of each weighted layer's input patches, which error-compensating weight rounding
  needs (`edgetl.quantize.rounding`).

Ranges then come from the statistics: ``minmax``, ``percentile`` of |x|, ``entropy`` (TensorRT's
KL-divergence threshold search over the |x| histogram, 2048 bins into 128 quantized levels), ``mse`` (the
threshold of least expected squared error), or ``mse-unbounded``: ``mse`` where no activation bounds the tensor (the
output of a layer without an activation, a residual sum: long tails, where a few outliers would otherwise set a
coarse step for everything) and ``minmax`` where one does (a ReLU6 output: its bound is information, and values
at the bound are common, so clipping below it costs more than rounding).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgetl.data.prefetch import prefetched
from edgetl.fileio import write_bytes
from edgetl.lazy import lazy_import
from edgetl.quantize.qdq_edit import add_outputs
from edgetl.quantize.rounding import PatchMoments, input_patches
from edgetl.runtime.cpu import usable_cpus

onnx = lazy_import("onnx", "train", purpose="INT8 calibration")
ort = lazy_import("onnxruntime", "train", purpose="INT8 calibration")
ort_registry = lazy_import("onnxruntime.quantization.registry", "train", purpose="INT8 calibration")

BINS = 2048
#: Quantized levels of a signed 8-bit magnitude (TensorRT's entropy calibration uses 128).
QUANTIZED_LEVELS = 128
#: Rounding steps between 0 and the threshold in a symmetric signed 8-bit format (|q| <= 127): what ``mse`` counts.
SIGNED_STEPS = QUANTIZED_LEVELS - 1
#: Candidate thresholds of the entropy search are every STRIDE-th bin: 121 candidates instead of 1921,
#: with a threshold resolution of 0.8 % of the observed range.
ENTROPY_STRIDE = 16
#: Elements a histogram update handles at a time (1 MB of float32): large enough that numpy's per-call cost
#: vanishes, small enough to stay in the last-level cache (Lite0's calibration fold: 0.29 s a batch on two threads
#: against 0.33-0.35 s with whole-tensor passes, counts equal).
HIST_BLOCK = 1 << 18
_FLOAT_TYPES = (1, 10)  # onnx.TensorProto.FLOAT, FLOAT16
#: Ops whose output no activation bounds: ``mse-unbounded`` calibrates these with ``mse``, the rest with ``minmax``.
UNBOUNDED_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add", "Sub"})


@dataclass
class TensorStats:
    """Running statistics of one tensor.

    Attributes:
        lo, hi: smallest and largest value seen.
        edge: upper end of the |x| histogram's range (its lower end is 0).
        hist: counts of |x| in ``BINS`` equal bins over ``[0, edge]``.
        zeros: how many of the values counted in the first bin were exactly 0 (after a ReLU, most of them):
            every symmetric format represents 0 exactly, so the entropy search leaves them out; counted in,
            their spike wins every KL comparison for the smallest threshold.
    """

    lo: float = float("inf")
    hi: float = float("-inf")
    edge: float = 0.0
    hist: np.ndarray = field(default_factory=lambda: np.zeros(BINS, dtype=np.int64))
    zeros: int = 0

    def update(self, values: np.ndarray) -> None:
        # Most of calibration's time is spent here, on every element of every tensor of every batch. The extremes
        # come first (they may widen the range); then |x| is scaled, clipped, truncated and counted one block at a
        # time, in two small buffers: each element is read from memory once more, and the temporaries stay the size
        # of a block (whole-tensor copies of |x| and its bin indices took 115 MB per thread on Lite0, and longer).
        flat = values.reshape(-1).astype(np.float32, copy=False)
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        self.lo, self.hi = min(self.lo, lo), max(self.hi, hi)
        amax = max(-lo, hi)
        if self.edge == 0.0:
            self.edge = amax if amax > 0 else 1e-8
        while amax > self.edge:  # double the range: bin pairs merge, nothing counted is lost
            self.hist = np.concatenate([self.hist.reshape(-1, 2).sum(axis=1), np.zeros(BINS // 2, np.int64)])
            self.edge *= 2.0
        scale, top = np.float32(BINS / self.edge), np.float32(BINS - 1)
        size = min(HIST_BLOCK, flat.size)
        scaled, bins = np.empty(size, np.float32), np.empty(size, np.intp)
        for start in range(0, flat.size, size):
            part = flat[start:start + size]
            block, index = scaled[:part.size], bins[:part.size]
            np.abs(part, out=block)
            self.zeros += int(block.size - np.count_nonzero(block))
            np.multiply(block, scale, out=block)
            np.minimum(block, top, out=block)  # |x| >= 0: clipping before truncation is the same
            np.copyto(index, block, casting="unsafe")  # truncation toward zero: the bin
            self.hist += np.bincount(index, minlength=BINS)

    def threshold(self, method: str, percentile: float, levels: int = SIGNED_STEPS) -> float:
        """The |x| clipping threshold of ``method`` (``minmax``: the largest magnitude); ``levels`` is the number
        of quantization steps between 0 and the threshold (``mse`` weighs rounding against clipping with it)."""
        largest = max(abs(self.lo), abs(self.hi))
        total = int(self.hist.sum())
        if method == "minmax" or total == 0 or largest == 0.0:
            return largest
        width = self.edge / BINS
        if method == "percentile":
            cdf = np.cumsum(self.hist) / total
            return min(largest, float((np.searchsorted(cdf, percentile / 100.0) + 1) * width))
        if method == "entropy":
            return min(largest, entropy_threshold(self.nonzero_hist()) * width)
        if method == "mse":
            return min(largest, mse_threshold(self.nonzero_hist(), width, levels))
        raise ValueError(f"unknown calibration method {method!r}")

    def nonzero_hist(self) -> np.ndarray:
        """The histogram without the exact zeros: every format represents 0 exactly, so they carry no rounding
        error (``mse``), and after a ReLU their spike would win every KL comparison (``entropy``)."""
        hist = self.hist.copy()
        hist[0] -= min(self.zeros, int(hist[0]))
        return hist

    def range(self, method: str, percentile: float, levels: int = SIGNED_STEPS) -> tuple[float, float]:
        """The (low, high) range to quantize: the observed range clipped at the method's threshold."""
        limit = self.threshold(method, percentile, levels)
        return max(self.lo, -limit), min(self.hi, limit)


def entropy_threshold(hist: np.ndarray, levels: int = QUANTIZED_LEVELS, stride: int = ENTROPY_STRIDE) -> int:
    """TensorRT's entropy calibration: the number of bins ``i`` (a threshold of ``i`` bin widths) whose
    quantization to ``levels`` levels loses the least information, KL(P || Q).

    P is the histogram cut at ``i`` with the clipped tail added to its last bin; Q spreads each of the
    ``levels`` merged counts evenly over the bins of P's support it covers.
    """
    hist = hist.astype(np.float64)
    nonzero_last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else levels
    if nonzero_last <= levels:
        return max(nonzero_last, 1)
    best, best_kl = len(hist), np.inf
    tail = np.cumsum(hist[::-1])[::-1]  # tail[i] = sum(hist[i:])
    for i in range(levels, len(hist) + 1, stride):
        p = hist[:i].copy()
        if i < len(hist):
            p[-1] += tail[i]
        chunk = np.floor(np.arange(i) * levels / i).astype(np.int64)  # which level each bin falls in
        support = hist[:i] > 0
        merged = np.bincount(chunk, weights=hist[:i], minlength=levels)
        used = np.bincount(chunk, weights=support.astype(np.float64), minlength=levels)
        q = np.where(support, merged[chunk] / np.maximum(used[chunk], 1), 0.0)
        p_sum, q_sum = p.sum(), q.sum()
        if q_sum == 0:
            continue
        p, q = p / p_sum, q / q_sum
        mask = p > 0
        kl = float(np.sum(p[mask] * np.log(p[mask] / np.maximum(q[mask], 1e-12))))
        if kl < best_kl:
            best, best_kl = i, kl
    return best


def mse_threshold(hist: np.ndarray, width: float, levels: int = SIGNED_STEPS, stride: int = 4) -> float:
    """The |x| threshold with the least expected squared quantization error over the histogram.

    A value below the threshold ``t`` is rounded to a step of ``t / levels`` (uniform error, variance
    ``step**2 / 12``); a value above it is clipped to ``t`` (error ``|x| - t``). Each bin is taken at its
    centre. Candidates are every ``stride``-th bin edge: 512 of 2048 bins, a resolution of 0.2 % of the range.
    """
    hist = hist.astype(np.float64)
    nonzero_last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 1
    centres = (np.arange(len(hist)) + 0.5) * width
    # Suffix sums give the clipping error of every candidate at once: sum over x > t of (x - t)^2.
    count_tail = np.cumsum(hist[::-1])[::-1]
    first_tail = np.cumsum((hist * centres)[::-1])[::-1]
    second_tail = np.cumsum((hist * centres**2)[::-1])[::-1]
    candidates = np.arange(stride, nonzero_last + stride, stride)
    candidates = np.minimum(candidates, nonzero_last)
    t = candidates * width
    tail_index = np.minimum(candidates, len(hist) - 1)
    has_tail = candidates < len(hist)
    clip = np.where(has_tail, second_tail[tail_index] - 2 * t * first_tail[tail_index] + t**2 * count_tail[tail_index],
                    0.0)
    inside = hist.sum() - np.where(has_tail, count_tail[tail_index], 0.0)
    rounding = inside * (t / levels) ** 2 / 12.0
    return float(t[int(np.argmin(clip + rounding))])


@dataclass
class CalibrationStatistics:
    """What one pass over the calibration images measured.

    Attributes:
        tensors: running statistics by tensor name.
        input_means: the mean over the images of each weighted layer's input (by layer name), at every
            position (NCHW without N), for bias correction.
        images: images seen.
        patch_moments: each weighted layer's input-patch moments (by layer name), for GPTQ rounding; ``None``
            when they were not measured (a cache written before they were).
    """

    tensors: dict[str, TensorStats]
    input_means: dict[str, np.ndarray]
    images: int
    patch_moments: dict[str, PatchMoments] | None = field(default_factory=dict)

    def ranges(self, method: str, percentile: float, activation_type: str = "int8",
               unbounded: Iterable[str] = ()) -> dict[str, tuple[float, float]]:
        """Each tensor's range; ``activation_type`` sets the steps ``mse`` counts: a signed symmetric format
        has 127 above zero, an unsigned asymmetric one spends all 255 on a tensor that is never negative.
        ``unbounded``: the tensors ``mse-unbounded`` calibrates with ``mse`` (`unbounded_tensors`)."""
        ranges = {}
        unbounded = set(unbounded)
        for name, stat in self.tensors.items():
            levels = 255 if activation_type == "uint8" and stat.lo >= 0 else SIGNED_STEPS
            chosen = ("mse" if name in unbounded else "minmax") if method == "mse-unbounded" else method
            ranges[name] = stat.range(chosen, percentile, levels)
        return ranges

    def save(self, path: Path) -> None:
        """Statistics as one ``.npz`` (histograms and means): ranges for any method come back without the
        images. Stored uncompressed: float moments and means deflate by 14 % (Lite0: 58 MB to 50 MB) in 2.2 s,
        which is 5 % of the calibration they cache."""
        arrays: dict[str, np.ndarray] = {}
        names = list(self.tensors)
        for i, name in enumerate(names):
            s = self.tensors[name]
            arrays[f"t{i}"] = np.concatenate([[s.lo, s.hi, s.edge, s.zeros], s.hist.astype(np.float64)])
        layers = list(self.input_means)
        for i, name in enumerate(layers):
            arrays[f"m{i}"] = self.input_means[name]
        meta: dict[str, Any] = {"tensors": names, "layers": layers, "images": self.images}
        if self.patch_moments is not None:
            meta["moments"] = list(self.patch_moments)
            for i, moments in enumerate(self.patch_moments.values()):
                arrays[f"p{i}"], arrays[f"c{i}"], arrays[f"n{i}"] = moments.to_arrays()
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        write_bytes(path, buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> CalibrationStatistics:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            tensors = {}
            for i, name in enumerate(meta["tensors"]):
                row = data[f"t{i}"]
                tensors[name] = TensorStats(float(row[0]), float(row[1]), float(row[2]), row[4:].astype(np.int64),
                                            int(row[3]))
            means = {name: data[f"m{i}"] for i, name in enumerate(meta["layers"])}
            moments = None if "moments" not in meta else {
                name: PatchMoments.from_arrays(data[f"p{i}"], data[f"c{i}"], data[f"n{i}"])
                for i, name in enumerate(meta["moments"])}
        return cls(tensors, means, int(meta["images"]), moments)


def unbounded_tensors(model: Any) -> set[str]:
    """The tensors no activation bounds: outputs of `UNBOUNDED_OPS` (what ``mse-unbounded`` clips by MSE)."""
    return {name for node in model.graph.node if node.op_type in UNBOUNDED_OPS for name in node.output}


def tensors_to_calibrate(model: Any, op_types: Iterable[str]) -> list[str]:
    """The float activations ONNX Runtime's quantizer asks ranges for: inputs and outputs of nodes of the
    quantizable op types, initializers excluded (the same rule as its calibrators)."""
    inferred = onnx.shape_inference.infer_shapes(model)
    infos = {vi.name: vi for vi in list(inferred.graph.value_info) + list(inferred.graph.input)
             + list(inferred.graph.output)}
    initializers = {init.name for init in model.graph.initializer}
    wanted = set(op_types)
    names: list[str] = []
    for node in model.graph.node:
        if node.op_type not in wanted:
            continue
        for name in list(node.input) + list(node.output):
            info = infos.get(name)
            if (name and name not in initializers and name not in names and info is not None
                    and info.type.HasField("tensor_type") and info.type.tensor_type.elem_type in _FLOAT_TYPES):
                names.append(name)
    return names


def weighted_layer_inputs(model: Any, layer_ops: Iterable[str]) -> dict[str, str]:
    """Layer name -> the activation it reads, for layers whose weight is an initializer."""
    initializers = {init.name for init in model.graph.initializer}
    ops = set(layer_ops)
    return {n.name: n.input[0] for n in model.graph.node
            if n.op_type in ops and len(n.input) > 1 and n.input[1] in initializers and n.input[0] not in initializers}


def collect(model: Any, batches: Iterable[np.ndarray], *, input_name: str, tensors: list[str],
            layer_inputs: dict[str, str], patch_layers: Iterable[str] = ()) -> CalibrationStatistics:
    """Run ``batches`` through the FP32 ``model`` with ``tensors`` as extra outputs, folding each batch into
    running statistics; memory stays at one batch's activations.

    Args:
        model: the FP32 ONNX model.
        batches: preprocessed NCHW float32 batches (a generator keeps only one decoded at a time).
        input_name: the graph input.
        tensors: activations to calibrate (`tensors_to_calibrate`).
        layer_inputs: layer name -> input tensor whose mean bias correction needs.
        patch_layers: layers (of ``layer_inputs``) whose input-patch moments to measure as well.
    """

    augmented = copy.deepcopy(model)
    add_outputs(augmented, [name for name in [*tensors, *layer_inputs.values()] if name != input_name])
    options = ort.SessionOptions()
    options.log_severity_level = 3
    # The statistics are numpy work between runs, where idle ONNX Runtime threads would spin beside it (one-off:
    # Lite0's calibration with the moments, 36.8 s with spinning, 33.9 s without).
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(augmented.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    stats = {name: TensorStats() for name in tensors}
    sums: dict[str, np.ndarray] = {}
    nodes = {n.name: n for n in model.graph.node}
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    moments = {layer: PatchMoments() for layer in patch_layers if layer in layer_inputs}

    def fold_moments(layer: str, values: np.ndarray, phase: int) -> bool:
        node = nodes[layer]
        patches = input_patches(node, shapes[node.input[1]], values, phase=phase)
        if patches is None:
            return False  # a layout the rounding does not cover: rounded to nearest
        moments[layer].update(patches)
        return True

    images = 0
    # numpy releases the GIL in the ufuncs, histogram counts and matrix products that make up the fold, and every
    # statistic is its own object: one thread per CPU.
    with ThreadPoolExecutor(max_workers=usable_cpus()) as pool:
        for batches_seen, batch in enumerate(prefetched(batches)):  # the next batch decodes meanwhile
            outputs = dict(zip(names, session.run(names, {input_name: batch})))
            outputs[input_name] = batch
            # Each statistic folds its own batches in order, so the threads change nothing but the time. The
            # patch moments are the largest jobs and go first.
            covered = {layer: pool.submit(fold_moments, layer, outputs[layer_inputs[layer]], batches_seen)
                       for layer in moments}
            totals = {layer: pool.submit(np.sum, outputs[tensor], axis=0, dtype=np.float64)
                      for layer, tensor in layer_inputs.items()}
            folded = [pool.submit(stats[name].update, outputs[name]) for name in tensors]
            for job in folded:
                job.result()
            for layer, job in totals.items():
                sums[layer] = job.result() if layer not in sums else sums[layer] + job.result()
            for layer, job in covered.items():
                if not job.result():
                    del moments[layer]
            images += len(batch)
            del outputs
    if images == 0:
        raise ValueError("no calibration batches")
    means = {layer: (total / images).astype(np.float32) for layer, total in sums.items()}
    return CalibrationStatistics(stats, means, images, moments)


def measure(model: Any, batches: Iterable[np.ndarray], *, input_name: str) -> CalibrationStatistics:
    """`collect` over the tensors ONNX Runtime's quantizer needs ranges for, and every weighted layer's input
    (its mean and its patch moments)."""
    from edgetl.quantize.int8 import LAYER_OPS

    quantizable = set(ort_registry.QDQRegistry) | set(ort_registry.QLinearOpsRegistry)
    layer_inputs = weighted_layer_inputs(model, LAYER_OPS)
    return collect(model, batches, input_name=input_name, tensors=tensors_to_calibrate(model, quantizable),
                   layer_inputs=layer_inputs, patch_layers=layer_inputs)
