"""Sequential bias correction: each layer's bias absorbs the mean error of its output in the quantized graph,
layer by layer, in the numerics the device computes.

Why: bias correction of the weights (`edgetl.quantize.weights`) removes the mean shift that a layer's own rounded
weights cause, measured on FP32 inputs. In the deployed graph every layer also reads inputs that the INT8
activations and weights before it have perturbed, and a ReLU6 turns zero-mean rounding noise into a mean shift;
those shifts add up along the network. Measuring each layer's mean output in the quantized graph itself, with every
layer before it quantized and already corrected, and moving its bias by the difference from FP32's (the empirical
bias correction of Nagel et al. 2019, "Data-Free Quantization", in the sequential form AIMET applies) removes each
shift where it arises. Measured on the official Fashion-MNIST test split (10,000 images, `benchmarks/qat.py`) it
lowers the demo model's logit error and the images whose class changes; see docs/quantize.md.

How: the graph is cut after every corrected layer and the pieces run one after another over the same calibration
images in exact numerics (ONNX Runtime with graph optimizations off: the QDQ graph's integer-exact result, what
TensorRT and VNNI CPUs compute), keeping only the tensors that later pieces read. Correcting a layer moves its output
by a known constant per channel (the dequantized change of its bias), which is added to the kept output instead of
running the piece again. The whole correction costs one pass of the quantized graph and one of the FP32 graph.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgetl.lazy import lazy_import
from edgetl.quantize.qdq_edit import GraphIndex, add_outputs
from edgetl.runtime.cpu import usable_cpus

onnx = lazy_import("onnx", "train", purpose="INT8 bias correction")
numpy_helper = lazy_import("onnx.numpy_helper", "train", purpose="INT8 bias correction")

#: Calibration images the layer means are measured on. On the demo model, 64 of them took its test-split flips from
#: 161 to 149, 128 to 136 and all 300 to 137. They bound the memory: the largest tensor kept between pieces.
SEQUENTIAL_IMAGES = 128
#: Whether each task's models get the correction by default, as measured. Classifiers: 17-26 % fewer flips on 5,000
#: held-out images on both demo models in both formats (`benchmarks/qat.py`), logit RMSE -20 % on ImageNet Lite0
#: (`benchmarks/quantization.py`). Detectors: the shapes detector's INT8 mAP drop went from 0.79 to 1.00 points on
#: its 100 validation images and from 0.33 to 0.42 on 300 held-out ones
#: (`benchmarks/results/detector-sequential-correction.json` against `detector.json`), so they keep it off.
BY_TASK = {"classify": True, "detect": False}
#: Images per ONNX Runtime call (a graph with a fixed batch: its batch). Each CPU runs its own call, and a call's
#: outputs are what the correction holds beside the kept tensors: on Lite0 with two CPUs, 8 keeps the peak RSS of a
#: first quantize under 2 GB (16 took it to 2.03 GB).
CHUNK = 8
#: Bytes of the FP32 reference's layer outputs that may be alive at once in `output_means`: each chunk holds every
#: layer's output until it is reduced (Lite0 at 224 px: 8 images, 216 MB), so a many-core machine runs fewer
#: chunks at once than it has CPUs rather than holding them all.
REFERENCE_BYTES_IN_FLIGHT = 1 << 30
#: The ops whose bias is corrected.
BIASED_OPS = ("Conv", "Gemm")


@dataclass
class SequentialCorrection:
    """What the correction did: layers corrected, images, the largest and median shift moved into a bias."""

    layers: int = 0
    images: int = 0
    seconds: float = 0.0
    largest_shift: float = 0.0
    median_shift: float = 0.0
    skipped: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"layers": self.layers, "images": self.images, "seconds": round(self.seconds, 2),
                "largest_shift": round(self.largest_shift, 6), "median_shift": round(self.median_shift, 6),
                "skipped": self.skipped}


def correct_biases(quantized: Any, reference: Any, batch: np.ndarray, *, chunk: int = CHUNK) -> SequentialCorrection:
    """Move the bias of every Conv/Gemm of ``quantized`` (edited in place) that ``reference`` has under the same
    name by its mean output error, layer by layer in graph order, measured on ``batch`` in exact numerics.

    Args:
        quantized: the QDQ graph (int32 biases behind a DequantizeLinear, or float biases for layers kept float).
        reference: the FP32 graph ``quantized`` was made from (its node names).
        batch: preprocessed images, NCHW float32.
        chunk: images per call (a fixed-batch graph: its batch size; ``len(batch)`` must be a multiple of it).
    """
    t0 = time.perf_counter()
    result = SequentialCorrection(images=len(batch))
    ref_nodes = {n.name: n for n in reference.graph.node}
    layers = [n for n in quantized.graph.node
              if n.op_type in BIASED_OPS and len(n.input) > 2 and n.input[2] and n.name in ref_nodes]
    if not layers:
        return result
    targets = output_means(reference, [ref_nodes[n.name] for n in layers], batch, chunk=chunk)
    index = _GraphIndex.of(quantized)
    editor = _BiasEditor(index.graph)
    shifts: list[float] = []

    def correct(node: Any, output: np.ndarray) -> np.ndarray:
        shift = _channel_means(output) - targets[node.name]
        delta = editor.move(node, -shift)
        if delta is None:
            result.skipped.append(node.name)
            return output
        shifts.append(float(np.abs(shift).max()))
        output += delta.reshape((1, -1) + (1,) * (output.ndim - 2)).astype(output.dtype)  # in place: no copy
        return output

    layer_means(quantized, layers, batch, chunk=chunk, correct=correct, index=index)
    result.layers = len(shifts)
    result.largest_shift = max(shifts, default=0.0)
    result.median_shift = float(np.median(shifts)) if shifts else 0.0
    result.seconds = time.perf_counter() - t0
    return result


def layer_means(model: Any, layers: list[Any], batch: np.ndarray, *, chunk: int = CHUNK,
                correct: Any = None, index: _GraphIndex | None = None) -> dict[str, np.ndarray]:
    """Per-channel mean of each of ``layers``' outputs over ``batch``, running ``model`` piece by piece in exact
    numerics. ``correct(node, output) -> output``, when given, may change each layer's output (and the model's
    initializers, in place) before the pieces after it run. ``index``: ``model``'s, when the caller has built it."""
    images = len(batch) - len(batch) % chunk
    if images == 0:
        raise ValueError(f"{len(batch)} images; the correction runs {chunk} at a time")
    index = index or _GraphIndex.of(model)
    pieces = _pieces(model, [n.name for n in layers], index.constant)
    needed_after = _last_reads(pieces, model)
    values: dict[str, np.ndarray] = {model.graph.input[0].name: batch[:images]}
    means: dict[str, np.ndarray] = {}
    for position, piece in enumerate(pieces):
        keep = [t for n in piece.nodes for t in n.output if needed_after.get(t, -1) > position]
        outputs = list(dict.fromkeys([*keep, piece.layer.output[0]]))
        values.update(_run(model, index, piece, values, outputs, range(0, images, chunk)))
        output = values[piece.layer.output[0]]
        means[piece.layer.name] = _channel_means(output)
        if correct is not None:
            values[piece.layer.output[0]] = correct(piece.layer, output)
        for name in [t for t in values if needed_after.get(t, -1) <= position]:
            del values[name]
    return means


def output_means(model: Any, layers: list[Any], batch: np.ndarray, *, chunk: int = CHUNK) -> dict[str, np.ndarray]:
    """Per-channel mean of each of ``layers``' outputs over ``batch`` from one run of the whole ``model`` in exact
    numerics: `layer_means` without corrections, for the FP32 reference, which needs no pieces (the same kernels
    on the same inputs; Lite0's reference: 4.2 s against 5.6 s in pieces, equal means)."""
    from edgetl.runtime.backends.onnxruntime import ort, session_options

    images = len(batch) - len(batch) % chunk
    if images == 0:
        raise ValueError(f"{len(batch)} images; the correction runs {chunk} at a time")
    names = list(dict.fromkeys(n.output[0] for n in layers))
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    add_outputs(augmented, names)
    session = ort.InferenceSession(augmented.SerializeToString(), session_options("exact", threads=1),
                                   providers=["CPUExecutionProvider"])
    del augmented
    input_name = model.graph.input[0].name
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}

    def reduce(outputs: list[np.ndarray]) -> list[tuple[np.ndarray, int]]:
        return [(out.sum(axis=_channel_axes(out), dtype=np.float64), out.size // out.shape[1]) for out in outputs]

    def channel_sums(start: int) -> list[tuple[np.ndarray, int]]:  # reduced where it ran: only sums wait to be kept
        return reduce(session.run(names, {input_name: batch[start:start + chunk]}))

    def keep(_: int, totals: list[tuple[np.ndarray, int]]) -> None:
        for name, (total, count) in zip(names, totals, strict=True):
            sums[name] = total if name not in sums else sums[name] + total
            counts[name] = counts.get(name, 0) + count

    # Every layer's output of a chunk is alive until it is reduced: the first chunk runs alone and says how many
    # chunks fit in `REFERENCE_BYTES_IN_FLIGHT` at once.
    first = session.run(names, {input_name: batch[:chunk]})
    chunk_bytes = sum(out.nbytes for out in first)
    keep(0, reduce(first))
    del first
    workers = max(1, min(usable_cpus(), REFERENCE_BYTES_IN_FLIGHT // max(chunk_bytes, 1)))
    _chunks_in_parallel(range(chunk, images, chunk), channel_sums, keep, workers=workers)
    return {n.name: sums[n.output[0]] / counts[n.output[0]] for n in layers}


@dataclass
class _Piece:
    nodes: list[Any]  # graph order, ending with ``layer``; constant-only nodes left out
    layer: Any


@dataclass
class _GraphIndex:
    """What every piece looks up in the whole graph, computed once: the graph's producer and consumer indexes
    (its initializers are the same protos the bias edits change in place), the nodes' order, constant and shape
    tensors."""

    graph: GraphIndex
    order: dict[int, int]
    constant: set[str]
    shapes: set[str]

    @classmethod
    def of(cls, model: Any) -> _GraphIndex:
        constant = _constant_outputs(model)
        return cls(graph=GraphIndex(model), order={id(n): k for k, n in enumerate(model.graph.node)},
                   constant=constant, shapes=_shape_tensors(model, constant))


def _pieces(model: Any, layer_names: list[str], constant: set[str]) -> list[_Piece]:
    """The graph's nodes cut after each named layer (nodes after the last one are not needed)."""
    wanted = set(layer_names)
    pieces, current = [], []
    for node in model.graph.node:
        if node.output and all(o in constant for o in node.output):
            continue
        current.append(node)
        if node.name in wanted:
            pieces.append(_Piece(current, node))
            current = []
    return pieces


def _constant_outputs(model: Any) -> set[str]:
    """Tensors computed from initializers only (weight and bias DequantizeLinear, Constant): each piece that reads
    them computes them itself, so that a corrected bias is read where it is used."""
    known = {i.name for i in model.graph.initializer}
    constant: set[str] = set()
    for node in model.graph.node:
        if all(not i or i in known or i in constant for i in node.input):
            constant.update(node.output)
    return constant


def _last_reads(pieces: list[_Piece], model: Any) -> dict[str, int]:
    """Tensor -> index of the last piece that reads it (graph outputs: never dropped)."""
    last: dict[str, int] = {}
    for index, piece in enumerate(pieces):
        for node in piece.nodes:
            for name in node.input:
                last[name] = index
    for output in model.graph.output:
        last[output.name] = len(pieces)
    return last


def _shape_tensors(model: Any, constant_outputs: set[str]) -> set[str]:
    """Tensors that describe shapes rather than images (``Shape``/``Size`` outputs and what is computed from them
    and constants alone): every chunk reads them whole, and they are kept from the first chunk."""
    constant = constant_outputs | {i.name for i in model.graph.initializer}
    shapes: set[str] = set()
    for node in model.graph.node:
        inputs = [i for i in node.input if i and i not in constant]
        if node.op_type in ("Shape", "Size") or (inputs and all(i in shapes for i in inputs)):
            shapes.update(node.output)
    return shapes


def _run(model: Any, index: _GraphIndex, piece: _Piece, values: dict[str, np.ndarray], outputs: list[str],
         starts: range) -> dict[str, np.ndarray]:
    """``piece`` as a graph of its own (with the constant nodes and initializers it reads), over every image,
    ``starts.step`` images at a time."""
    from edgetl.runtime.backends.onnxruntime import ort, session_options

    inits, producer, shapes = index.graph.initializers, index.graph.producer, index.shapes
    own = {id(n) for n in piece.nodes}
    nodes, seen, todo = [], set(), [i for n in piece.nodes for i in n.input]
    while todo:  # the constant nodes the piece reads, and theirs
        name = todo.pop()
        node = producer.get(name)
        if name in values or name in inits or node is None or id(node) in seen or id(node) in own:
            continue
        seen.add(id(node))
        nodes.append(node)
        todo.extend(node.input)
    nodes = sorted(nodes + piece.nodes, key=lambda n: index.order[id(n)])
    produced = {o for n in nodes for o in n.output}
    read = list(dict.fromkeys(i for n in nodes for i in n.input if i and i not in produced))
    feeds = [name for name in read if name in values]
    graph = onnx.helper.make_graph(
        nodes, "piece",
        [onnx.helper.make_tensor_value_info(name, onnx.helper.np_dtype_to_tensor_dtype(values[name].dtype), None)
         for name in feeds],
        [onnx.helper.make_empty_tensor_value_info(name) for name in outputs],
        [inits[name] for name in read if name in inits])
    piece_model = onnx.helper.make_model(graph, opset_imports=list(model.opset_import))
    piece_model.ir_version = model.ir_version
    session = ort.InferenceSession(piece_model.SerializeToString(), session_options("exact", threads=1),
                                   providers=["CPUExecutionProvider"])
    images = starts.stop
    results: dict[str, np.ndarray] = {}

    def run_chunk(start: int) -> list[np.ndarray]:
        feed = {name: values[name] if name in shapes else values[name][start:start + starts.step] for name in feeds}
        return session.run(outputs, feed)

    def keep(start: int, parts: list[np.ndarray]) -> None:
        for name, part in zip(outputs, parts, strict=True):  # filled in place: each image's tensors held once
            if name in shapes:
                results.setdefault(name, part)
                continue
            if name not in results:
                results[name] = np.empty((images, *part.shape[1:]), dtype=part.dtype)
            results[name][start:start + len(part)] = part

    _chunks_in_parallel(starts, run_chunk, keep)
    return results


def _chunks_in_parallel(starts: range, run: Callable[[int], Any], keep: Callable[[int, Any], None], *,
                        workers: int | None = None) -> None:
    """``run(start)`` for every chunk, ``workers`` (default: one per CPU) chunks at a time, and ``keep(start,
    result)`` on this thread in chunk order. With graph optimizations off, one session scales poorly over threads
    (Lite0's quantized graph: 8.2 s on one thread, 7.3 s on two); chunks are independent, so each worker runs its
    own chunk on a session's single thread, with the same kernels and so the same numbers. At most one chunk's
    result per worker waits to be kept."""
    if not starts:
        return
    workers = min(workers or usable_cpus(), len(starts))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        running: deque[tuple[int, Future]] = deque()
        for start in starts:
            if len(running) == workers:
                done, job = running.popleft()
                keep(done, job.result())
            running.append((start, pool.submit(run, start)))
        while running:
            done, job = running.popleft()
            keep(done, job.result())


def _channel_axes(output: np.ndarray) -> tuple[int, ...]:
    """Every axis but the channel axis (1): what a per-channel mean reduces over."""
    return tuple(a for a in range(output.ndim) if a != 1)


def _channel_means(output: np.ndarray) -> np.ndarray:
    """Mean over every axis but the channel axis (1), accumulated in float64 without a float64 copy."""
    return output.mean(axis=_channel_axes(output), dtype=np.float64)


class _BiasEditor:
    """Moves a layer's bias by a per-channel amount in the form the graph stores it: int32 codes behind a
    DequantizeLinear (rounded to the bias scale), or a float initializer."""

    def __init__(self, graph: GraphIndex):
        self.inits, self.producer = graph.initializers, graph.producer
        self.readers = {name: len(nodes) for name, nodes in graph.consumers.items()}

    def move(self, node: Any, amount: np.ndarray) -> np.ndarray | None:
        """Add ``amount`` to ``node``'s bias; the change actually made (after rounding), or None when the bias is
        not a per-channel constant this layer owns."""
        name = node.input[2]
        dq = self.producer.get(name)
        if dq is not None and dq.op_type == "DequantizeLinear":
            codes_name, scale_name = dq.input[0], dq.input[1]
            if codes_name not in self.inits or scale_name not in self.inits or self.readers.get(codes_name) != 1:
                return None
            codes = numpy_helper.to_array(self.inits[codes_name]).astype(np.float64)
            scale = numpy_helper.to_array(self.inits[scale_name]).astype(np.float64)
            if codes.shape != amount.shape:
                return None
            step = np.where(scale > 0, scale, 1.0)
            new = np.clip(np.round(codes + amount / step), -(2**31), 2**31 - 1)
            self.inits[codes_name].CopyFrom(numpy_helper.from_array(new.astype(np.int32), codes_name))
            return (new - codes) * scale
        if name in self.inits and self.readers.get(name) == 1:
            bias = numpy_helper.to_array(self.inits[name])
            if bias.shape != amount.shape:
                return None
            new_bias = (bias.astype(np.float64) + amount).astype(bias.dtype)
            self.inits[name].CopyFrom(numpy_helper.from_array(new_bias, name))
            return new_bias.astype(np.float64) - bias.astype(np.float64)
        return None
