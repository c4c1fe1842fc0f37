"""A QDQ ONNX graph as a trainable PyTorch module: the fake quantization of QAT is the exported graph itself.

Quantization-aware training only pays off when the numbers it trains against are the numbers the device
computes. Rebuilding the PyTorch model and inserting fake-quant modules leaves three places to drift from the
exported graph: BatchNorm (PyTorch trains conv + BN, the exporter folds BN into the conv *before* its weights
are rounded), which tensors carry a Q/DQ pair (ONNX Runtime's quantizer decides, op by op), and which ops stay
in float (ReLU6 kept as Clip, the detector's decode). Here the starting point is the PTQ graph itself
(`edgetl.quantize.api`): every node runs as the matching torch op, every QuantizeLinear/DequantizeLinear pair
on an activation becomes ``torch.fake_quantize_per_tensor_affine`` with the calibrated scale, and every
quantized weight becomes a float parameter behind ``torch.fake_quantize_per_channel_affine`` with the scale
the exporter recomputes from it (symmetric, ``max|w| / qmax``). The parameter starts at the graph's own
dequantized weight (BatchNorm already folded as exported), not at the FP32 weight: PTQ's codes come from GPTQ
rounding, not from rounding the FP32 weight to nearest, and its biases are corrected for those codes, so step 0
of training is the PTQ model itself. Biases are int32 in the graph (scale = input scale x weight scale) and are
rounded the same way in training.

Every trainable tensor is stored in units of its quantization step: a weight as ``w / step`` with its channel's
PTQ step (so the parameter starts at the int8 codes themselves), a bias in units of 256 of its int32 codes, a
weight kept in float in units of ``max|w| / 127``. Adam moves each parameter by about the learning rate per step,
whatever its size, and after BatchNorm folding the per-channel steps of one layer span orders of magnitude: in
absolute units a learning rate that changes any code of the wide channels churns the narrow ones (on the demo's
classifier with 7-bit weights, lr 1e-4 raised the training loss from 0.011 to 0.089 mid-run) and one that keeps
them still changes almost no code (lr 1e-5 ended at PTQ's agreement). In code units the learning rate is a
fraction of a code per step for every channel alike (`benchmarks/qat.py`).

`QdqModule.to_onnx` writes the trained parameters back into a copy of the graph: int8 weights, their scales,
int32 biases. Activation scales stay those of the calibration (the convention of NVIDIA's TensorRT Model
Optimizer, whose QAT trains weights against fixed activation ranges), so the graph keeps exactly the Q/DQ
layout that ONNX Runtime and TensorRT's explicit INT8 already accept from PTQ.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

torch = lazy_import("torch", "train", purpose="quantization-aware fine-tuning")
onnx = lazy_import("onnx", "train", purpose="quantization-aware fine-tuning")

#: The weighted layers: what QAT trains, and what ``--qat-layers`` counts.
WEIGHTED_OPS = ("Conv", "Gemm", "MatMul")

#: Ops this module runs; a graph with any other op is refused with its name (`unsupported_ops`).
SUPPORTED_OPS = frozenset({
    "QuantizeLinear", "DequantizeLinear", "Conv", "Gemm", "MatMul", "Clip", "Relu", "Sigmoid", "Mul", "Add",
    "Sub", "Div", "GlobalAveragePool", "Flatten", "Identity", "Reshape", "Concat", "Softmax", "Transpose",
    "MaxPool", "Resize", "Split", "Slice", "Constant", "Shape", "Gather", "Unsqueeze", "Squeeze", "Cast",
    "ReduceMax", "ReduceSum", "ReduceMean", "ArgMax", "Exp", "Pow", "Sqrt", "Neg", "HardSigmoid", "HardSwish",
    "AveragePool", "Pad",
})


@dataclass
class _Weight:
    """A quantized layer's weight: the trainable float tensor and how the graph stores it."""

    layer: str
    param: str  # key in the module's parameter dict
    quantized: str  # int8 initializer
    scale: str
    zero_point: str | None
    axis: int
    qmax: int
    bias_param: str | None = None
    bias: str | None = None  # int32 initializer
    bias_scale: str | None = None
    input_scale: np.ndarray | None = None  # per output channel (all equal): bias scale / weight scale


#: A bias parameter's unit, in int32 bias codes. One bias code (input scale x weight step) moves an output as much
#: as one weight code does on an input of one activation code, so in single codes the biases would hardly move;
#: 256 of them match one weight code on an input of 256 activation codes, about the full range of an 8-bit one.
BIAS_UNIT_CODES = 256.0
#: Smallest ``max|w|`` a float-kept tensor's unit is computed from (an all-zero bias still trains).
FLOAT_UNIT_FLOOR = 1e-3


def _along(values: Any, ndim: int, axis: int) -> Any:
    """Per-channel ``values`` shaped to broadcast along ``axis`` of an ``ndim``-dimensional tensor."""
    shape = [1] * ndim
    shape[axis] = -1
    return values.reshape(shape)


def unsupported_ops(model: Any) -> list[str]:
    return sorted({n.op_type for n in model.graph.node} - SUPPORTED_OPS)


def _attrs(node: Any) -> dict[str, Any]:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


class QdqModule:
    """Build with `QdqModule.create` (torch is imported lazily; this wrapper holds the ``torch.nn.Module``)."""

    @staticmethod
    def create(quantized: Any, reference: Any) -> Any:
        """The QDQ graph ``quantized`` (made from the FP32 graph ``reference``) as a ``torch.nn.Module``.

        Raises:
            BadInputError: an op this module does not run, or a Q/DQ layout it does not recognise.
        """
        return _build_module_class()(quantized, reference)


def reciprocal(scale: float) -> np.float32:
    """The float32 reciprocal of a quantization scale: torch's per-tensor quantizer multiplies by it."""
    return np.float32(np.float32(1.0) / np.float32(scale))


def _code(x: float, inverse: np.float32) -> float:
    """An input's code as torch computes it: the float32 product with the reciprocal, rounded half to even."""
    return float(np.round(np.float32(np.float32(x) * inverse)))


@functools.cache
def input_interval(scale: float, low: int, high: int) -> tuple[float, float]:
    """The float32 inputs ``x`` whose code ``round(x * (1 / scale))`` lies in ``[low, high]``: ``[first, last]``.

    The code is monotone in ``x``, so the codes in range are one interval of inputs: clamping the input to it
    gives the clamped code, and the input lying inside it is the straight-through gradient's mask
    (``torch.fake_quantize_per_tensor_affine``'s). Found by stepping float32 neighbours from the half-code
    estimate, a few steps away."""
    inverse = reciprocal(scale)

    def edge(target: float, below: bool) -> float:
        x = np.float32((target - 0.5 if below else target + 0.5) / float(inverse))
        up, down = np.float32(np.inf), np.float32(-np.inf)
        if below:  # smallest x with code(x) >= target
            while _code(x, inverse) >= target:
                x = np.nextafter(x, down)
            while _code(x, inverse) < target:
                x = np.nextafter(x, up)
        else:  # largest x with code(x) <= target
            while _code(x, inverse) <= target:
                x = np.nextafter(x, up)
            while _code(x, inverse) > target:
                x = np.nextafter(x, down)
        return float(x)

    return edge(low, below=True), edge(high, below=False)


def clipped_interval(scale: float, low: int, high: int,
                     clip: tuple[float | None, float | None]) -> tuple[float, float] | None:
    """`input_interval` for ``torch.clamp(x, *clip)`` followed by the quantizer, when one interval reproduces both
    bit for bit (``None`` when not: the Clip then runs on its own).

    ``torch.clamp``'s gradient passes strictly inside its bounds, the quantizer's at its edges too, so the mask is
    ``max(first, next(min)) <= x <= min(last, previous(max))``; clamping to that interval must give every input
    beyond a clip bound the code the bound itself gets."""
    inverse = reciprocal(scale)
    first, last = input_interval(scale, low, high)
    lo, hi = clip
    lower = first if lo is None else max(first, float(np.nextafter(np.float32(lo), np.float32(np.inf))))
    upper = last if hi is None else min(last, float(np.nextafter(np.float32(hi), np.float32(-np.inf))))
    if lower > upper:
        return None
    for bound, edge in ((lo, lower), (hi, upper)):
        if bound is not None and min(max(_code(bound, inverse), low), high) != _code(edge, inverse):
            return None
    return lower, upper


@functools.lru_cache(maxsize=1)
def fake_quant() -> Any:
    """The autograd function QAT quantizes activations with: ``fake_quant().apply(x, scale, first, last)``, the
    input interval from `input_interval` or `clipped_interval` (built on first use: torch is imported lazily)."""

    class _FakeQuant(torch.autograd.Function):
        """``torch.fake_quantize_per_tensor_affine`` (after ``torch.clamp`` with `clipped_interval`), the same values
        and the same straight-through gradient, bit for bit, in five passes over the tensor: clamp the input to
        its interval, compare, scale, round, scale back.

        PyTorch's CPU kernel took a third of a detector's QAT step, the backward's ``where`` another tenth; a
        ReLU6 as its own ``torch.clamp`` a quarter of a classifier's backward pass (`benchmarks/qat.py` times the
        QAT it is part of)."""

        @staticmethod
        def forward(ctx: Any, x: Any, scale: float, first: float, last: float) -> Any:
            out = x.clamp(first, last)
            # The mask as float: comparing into a float tensor and multiplying by it take half the time of a bool
            # mask's (the elementwise kernels vectorise float32 only), at three more bytes per element.
            inside = torch.empty_like(x)
            torch.eq(out, x, out=inside)
            ctx.save_for_backward(inside)
            # PyTorch's kernel multiplies by the float32 reciprocal and rounds half to even, as torch.round does.
            return out.mul_(float(reciprocal(scale))).round_().mul_(scale)

        @staticmethod
        def backward(ctx: Any, grad: Any) -> tuple[Any, None, None, None]:
            (inside,) = ctx.saved_tensors
            return grad * inside, None, None, None

    return _FakeQuant


def _build_module_class() -> type:
    F = torch.nn.functional

    from edgetl.quantize.qdq_edit import GraphIndex
    from edgetl.quantize.weights import dequantize_weight, quantized_layers

    class _QdqGraph(torch.nn.Module):
        """Runs the nodes of a QDQ graph in order; see the module docstring."""

        def __init__(self, quantized: Any, reference: Any) -> None:
            super().__init__()
            missing = unsupported_ops(quantized)
            if missing:
                raise BadInputError(f"quantization-aware training cannot run these ops of the graph: {missing}",
                                    hint="quantize without --qat (post-training quantization handles any op)")
            self.graph_proto = quantized
            self.nodes = list(quantized.graph.node)
            self.input_names = [i.name for i in quantized.graph.input]
            self.output_names = [o.name for o in quantized.graph.output]
            inits = {i.name: onnx.numpy_helper.to_array(i) for i in quantized.graph.initializer}
            self.params = torch.nn.ParameterDict()  # each in units of its quantization step (module docstring)
            self.units: dict[str, torch.Tensor] = {}
            self.weights: dict[str, _Weight] = {}  # DQ output name -> weight record
            self.bias_of: dict[str, _Weight] = {}  # bias DQ output name -> its layer's record
            index = GraphIndex(quantized)
            producer = index.producer
            for i, layer in enumerate(quantized_layers(quantized, reference)):
                dq = producer[layer.node.input[1]]
                key = f"w{i}"
                step = inits[layer.scale].astype(np.float32)
                start_weight = dequantize_weight(inits[layer.weight], step, layer.axis)
                self._add_param(key, start_weight, _along(step, start_weight.ndim, layer.axis))
                record = _Weight(layer.node.name, key, layer.weight, layer.scale, layer.zero_point, layer.axis,
                                 layer.qmax)
                if layer.bias is not None:
                    bias_dq = producer[layer.node.input[2]]
                    scale_b = inits[layer.bias_scale].astype(np.float64)
                    scale_w = inits[layer.scale].astype(np.float64)
                    # Start from the graph's own bias (bias correction included): step 0 is the PTQ model.
                    start = (inits[layer.bias].astype(np.float64) * scale_b).astype(np.float32)
                    self._add_param(f"b{i}", start, BIAS_UNIT_CODES * scale_b)
                    record.bias_param, record.bias, record.bias_scale = f"b{i}", layer.bias, layer.bias_scale
                    record.input_scale = np.where(scale_w > 0, scale_b / np.maximum(scale_w, 1e-30), 0.0)
                    self.bias_of[bias_dq.output[0]] = record
                self.weights[dq.output[0]] = record
            # Float weights of layers kept in float (budget mode) train too; every other initializer is a constant.
            taken = {r.quantized for r in self.weights.values()} | {r.bias for r in self.weights.values() if r.bias}
            self.float_params: dict[str, str] = {}
            for node in quantized.graph.node:
                if node.op_type not in WEIGHTED_OPS:
                    continue
                for name in node.input[1:3]:
                    if name in inits and name not in taken and inits[name].dtype == np.float32:
                        key = f"f{len(self.float_params)}"
                        self._add_param(key, inits[name], np.float32(max(float(np.abs(inits[name]).max()),
                                                                          FLOAT_UNIT_FLOOR) / 127.0))
                        self.float_params[name] = key
            self.constants = {name: torch.from_numpy(np.array(value)) for name, value in inits.items()
                              if name not in self.float_params}
            # Nodes that read only constants (weight and bias DQs, Constant): they run in any tail, wherever they are.
            static = set(inits)
            self.static_nodes: set[int] = set()
            self._tails: dict[int, list[Any]] = {}
            for i, node in enumerate(quantized.graph.node):
                if all(not name or name in static for name in node.input):
                    static.update(node.output)
                    self.static_nodes.add(i)
            self.activation_qdq: dict[str, tuple[float, int, int, int]] = {}  # Q output -> scale, zp, qmin, qmax
            for node in quantized.graph.node:
                if node.op_type == "QuantizeLinear":
                    self.activation_qdq[node.output[0]] = _per_tensor(inits, node)
            self.clip_interval: dict[str, tuple[float, float]] = {}  # Q output -> `clipped_interval` of its Clip
            self.folded_clips: set[str] = set()  # Clip outputs the QuantizeLinear reading them clamps instead
            for node in quantized.graph.node:
                clip, out = _constant_clip(node, inits), node.output[0]
                users = index.consumers.get(out, [])
                if (clip is None or out in self.output_names or len(users) != 1
                        or users[0].op_type != "QuantizeLinear" or users[0].output[0] not in self.activation_qdq):
                    continue
                scale, zp, qmin, qmax = self.activation_qdq[users[0].output[0]]
                interval = clipped_interval(scale, qmin - zp, qmax - zp, clip)
                if interval is not None:
                    self.clip_interval[users[0].output[0]] = interval
                    self.folded_clips.add(out)
            for node in quantized.graph.node:
                if (node.op_type == "DequantizeLinear" and node.input[0] in self.activation_qdq
                        and _per_tensor(inits, node)[:2] != self.activation_qdq[node.input[0]][:2]):
                    raise BadInputError(f"{node.name}: dequantizes with another scale than its QuantizeLinear",
                                            hint="QAT starts from the INT8 graph `edgetl quantize` writes")

        # ---- parameters -------------------------------------------------------------------------------------
        def _add_param(self, key: str, start: np.ndarray, unit: Any) -> None:
            """A trainable tensor starting at ``start``, stored as ``start / unit`` (the module docstring says why); a
            zero unit (an all-zero channel's step) counts as 1."""
            unit = np.asarray(unit, dtype=np.float32)
            unit = np.where(unit > 0, unit, np.float32(1.0))
            self.units[key] = torch.from_numpy(unit.copy())
            self.params[key] = torch.nn.Parameter(torch.from_numpy((start / unit).astype(np.float32)))

        def value_of(self, key: str) -> torch.Tensor:
            """A parameter's value in the graph's own units: what every quantizer and the export read."""
            return self.params[key] * self.units[key]

        # ---- quantizers -------------------------------------------------------------------------------------
        def weight_scale(self, record: _Weight) -> torch.Tensor:
            """The exporter's per-channel scale, recomputed from the current weight: ``max|w| / qmax``."""
            w = self.value_of(record.param).detach()
            dims = [d for d in range(w.ndim) if d != record.axis]
            amax = w.abs().amax(dim=dims) if dims else w.abs()
            return torch.clamp(amax, min=1e-8) / record.qmax

        def fake_weight(self, record: _Weight) -> torch.Tensor:
            w = self.value_of(record.param)
            scale = self.weight_scale(record)
            zero = torch.zeros(scale.shape, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, record.axis, -record.qmax, record.qmax)

        def fake_bias(self, record: _Weight) -> torch.Tensor:
            b = self.value_of(record.bias_param)
            scale = self.weight_scale(record) * torch.from_numpy(record.input_scale.astype(np.float32))
            scale = torch.where(scale > 0, scale, torch.ones_like(scale))
            rounded = torch.clamp(torch.round(b.detach() / scale), -(2**31), 2**31 - 1) * scale
            return b + (rounded - b.detach())  # straight-through: the gradient of the float bias

        # ---- graph ------------------------------------------------------------------------------------------
        def forward(self, x: torch.Tensor, extra: list[str] | None = None,
                    start: tuple[int, str] | None = None) -> dict[str, torch.Tensor]:
            """The graph's outputs by name, and the intermediate tensors named in ``extra``.

            ``start=(index, tensor)`` (a `cut_points` entry) runs only the nodes after ``index``, with ``x`` as
            the value of ``tensor``: the tail of the graph, from a cached prefix. Images run channels-last, the
            layout oneDNN's convolutions are fastest in (9 % less time per detector QAT step on one thread).
            """
            if x.ndim == 4:
                x = x.contiguous(memory_format=torch.channels_last)
            wanted = list(dict.fromkeys([*self.output_names, *(extra or [])]))
            env: dict[str, Any] = {self.input_names[0] if start is None else start[1]: x}
            self.run_nodes(self.nodes if start is None else self.tail(start[0]), env, keep=set(wanted))
            return {name: env[name] for name in wanted}

        def run_nodes(self, nodes: list[Any], env: dict[str, Any], keep: set[str]) -> None:
            """Run ``nodes`` in order into ``env``, dropping each tensor after its last reader (unless in ``keep``):
            a batch's intermediate tensors are not all held at once (autograd still keeps what backward needs)."""
            last: dict[str, int] = {}
            for i, node in enumerate(nodes):
                for name in node.input:
                    last[name] = i
            for i, node in enumerate(nodes):
                for name, value in zip(node.output, self.run_node(node, env, keep)):
                    env[name] = value
                for name in node.input:
                    if last.get(name) == i and name not in keep:
                        env.pop(name, None)

        def tail(self, index: int) -> list[Any]:
            """The nodes after ``index``, and the constant nodes (weight DQs...) they read, in graph order."""
            if index not in self._tails:
                wanted = {name for node in self.nodes[index + 1:] for name in node.input}
                keep = []
                for i in range(len(self.nodes) - 1, -1, -1):
                    node = self.nodes[i]
                    if i > index or (i in self.static_nodes and wanted.intersection(node.output)):
                        keep.append(node)
                        wanted.update(node.input)
                self._tails[index] = keep[::-1]
            return self._tails[index]

        def prefix(self, x: torch.Tensor, cut: tuple[int, str]) -> torch.Tensor:
            """The value of the cut tensor: the nodes up to ``cut[0]``."""
            env: dict[str, Any] = {self.input_names[0]: x}
            self.run_nodes(self.nodes[: cut[0] + 1], env, keep={cut[1]})
            return env[cut[1]]

        def cut_points(self) -> list[tuple[int, str, int]]:
            """Where the graph narrows to one tensor: ``(node index, tensor, weighted layers after it)``.

            Everything before such a point can run once, without gradients, and be cached; training the layers
            after it then costs only their share of the graph. Only float tensors with a weighted layer before
            them count: a QuantizeLinear output is an integer tensor in the exported graph, which runs the prefix.
            """
            last_use: dict[str, int] = {}
            for i, node in enumerate(self.nodes):
                for name in node.input:
                    last_use[name] = i
            for name in self.output_names:
                last_use[name] = len(self.nodes)
            layers_after = [0] * (len(self.nodes) + 1)
            for i in range(len(self.nodes) - 1, -1, -1):
                layers_after[i] = layers_after[i + 1] + (self.nodes[i].op_type in WEIGHTED_OPS)
            live = {self.input_names[0]}
            cuts = []
            for i, node in enumerate(self.nodes):
                if i in self.static_nodes:
                    continue
                live.update(node.output)
                live = {t for t in live if last_use.get(t, -1) > i}
                if (len(live) == 1 and i + 1 < len(self.nodes) and node.op_type != "QuantizeLinear"
                        and layers_after[i + 1] < layers_after[0]):
                    cuts.append((i, next(iter(live)), layers_after[i + 1]))
            return cuts

        def value(self, name: str, env: dict[str, Any]) -> Any:
            if name in env:
                return env[name]
            if name in self.float_params:
                return self.value_of(self.float_params[name])
            return self.constants[name]

        def run_node(self, node: Any, env: dict[str, Any], keep: set[str] | frozenset[str] = frozenset()) -> list[Any]:
            """One node's outputs. A Clip whose only reader is a QuantizeLinear (`folded_clips`) passes its input on,
            unless its own value is wanted (``keep``): the quantizer clamps to both ranges at once (`fake_quant`)."""
            op, a = node.op_type, _attrs(node)
            if op == "Clip" and node.output[0] in self.folded_clips and node.output[0] not in keep:
                return [self.value(node.input[0], env)]
            if op == "DequantizeLinear":
                out = node.output[0]
                if out in self.weights:
                    return [self.fake_weight(self.weights[out])]
                if out in self.bias_of:
                    return [self.fake_bias(self.bias_of[out])]
                if node.input[0] in self.activation_qdq:  # the QuantizeLinear already produced the float value
                    return [env[node.input[0]]]
                x = self.constants[node.input[0]]
                scale = self.constants[node.input[1]]
                zp = self.constants[node.input[2]] if len(node.input) > 2 and node.input[2] else 0
                return [(x.float() - (zp.float() if torch.is_tensor(zp) else 0.0)) * scale]
            x = [self.value(n, env) if n else None for n in node.input]
            if op == "QuantizeLinear":
                scale, zp, qmin, qmax = self.activation_qdq[node.output[0]]
                first, last = self.clip_interval.get(node.output[0]) or input_interval(scale, qmin - zp, qmax - zp)
                return [fake_quant().apply(x[0], scale, first, last)]
            if op == "Conv":
                if a.get("auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
                    raise BadInputError(f"{node.name}: automatic Conv padding is not supported by QAT",
                                        hint="re-export the model with `edgetl export` (explicit pads)")
                pads = list(a.get("pads", [0] * (2 * (x[0].ndim - 2))))
                half = len(pads) // 2
                inp, padding = x[0], pads[:half]
                if pads[:half] != pads[half:]:  # asymmetric ("same" with stride 2): pad first, as ONNX does
                    inp = F.pad(inp, [v for d in reversed(range(half)) for v in (pads[d], pads[d + half])])
                    padding = [0] * half
                return [F.conv2d(inp, x[1], x[2], stride=a.get("strides", 1), padding=padding,
                                 dilation=a.get("dilations", 1), groups=a.get("group", 1))]
            if op == "Gemm":
                left = x[0].t() if a.get("transA", 0) else x[0]
                right = x[1].t() if a.get("transB", 0) else x[1]
                out = a.get("alpha", 1.0) * (left @ right)
                return [out + a.get("beta", 1.0) * x[2] if len(x) > 2 and x[2] is not None else out]
            if op == "Clip":
                lo = x[1] if len(x) > 1 and x[1] is not None else None
                hi = x[2] if len(x) > 2 and x[2] is not None else None
                return [torch.clamp(x[0], None if lo is None else float(lo), None if hi is None else float(hi))]
            simple = _SIMPLE.get(op)
            if simple is not None:
                return [simple(*x)]
            return _other(op, a, x, node)

        def to_onnx(self) -> Any:
            """A copy of the graph with the trained weights quantized as the fake quantization saw them."""
            out = copy.deepcopy(self.graph_proto)
            inits = {i.name: i for i in out.graph.initializer}

            def put(name: str, array: np.ndarray) -> None:
                inits[name].CopyFrom(onnx.numpy_helper.from_array(array, name))

            with torch.no_grad():
                for record in self.weights.values():
                    scale = self.weight_scale(record)
                    # Integers from the fake-quantized values themselves: the export is what training saw.
                    q = torch.round(self.fake_weight(record) / _along(scale, self.params[record.param].ndim,
                                                                        record.axis))
                    put(record.quantized, q.numpy().astype(np.int8))
                    put(record.scale, scale.numpy().astype(np.float32))
                    if record.bias_param is not None:
                        bias_scale = (scale.numpy().astype(np.float64) * record.input_scale).astype(np.float32)
                        safe = np.where(bias_scale > 0, bias_scale, 1.0)
                        b = self.value_of(record.bias_param).numpy().astype(np.float64)
                        put(record.bias_scale, bias_scale)
                        put(record.bias, np.clip(np.round(b / safe), -(2**31), 2**31 - 1).astype(np.int32))
                for name, key in self.float_params.items():
                    put(name, self.value_of(key).numpy().astype(np.float32))
            return out

    _SIMPLE: dict[str, Any] = {
        "Relu": torch.relu, "Sigmoid": torch.sigmoid, "Add": torch.add, "Sub": torch.sub, "Mul": torch.mul,
        "Div": torch.div, "Identity": lambda t: t, "Exp": torch.exp, "Sqrt": torch.sqrt, "Neg": torch.neg,
        "Pow": torch.pow, "MatMul": torch.matmul,
        "GlobalAveragePool": lambda t: t.mean(dim=tuple(range(2, t.ndim)), keepdim=True),
        "Shape": lambda t: torch.tensor(t.shape, dtype=torch.int64),
    }

    def _other(op: str, a: dict[str, Any], x: list[Any], node: Any) -> list[Any]:
        if op == "Flatten":
            axis = a.get("axis", 1)
            return [x[0].reshape(int(np.prod(x[0].shape[:axis])) if axis else 1, -1)]
        if op == "Reshape":
            shape = [int(s) for s in x[1].tolist()]
            shape = [x[0].shape[i] if s == 0 else s for i, s in enumerate(shape)]
            return [x[0].reshape(shape)]
        if op == "Concat":
            return [torch.cat([t for t in x if t is not None], dim=a["axis"])]
        if op == "Softmax":
            return [torch.softmax(x[0], dim=a.get("axis", -1))]
        if op == "Transpose":
            return [x[0].permute(*a["perm"]) if "perm" in a else x[0].permute(*reversed(range(x[0].ndim)))]
        if op == "MaxPool":
            pads = a.get("pads", [0, 0, 0, 0])
            return [F.max_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), pads[: len(pads) // 2],
                                 a.get("dilations", 1), bool(a.get("ceil_mode", 0)))]
        if op == "AveragePool":
            pads = a.get("pads", [0, 0, 0, 0])
            return [F.avg_pool2d(x[0], a["kernel_shape"], a.get("strides", 1), pads[: len(pads) // 2],
                                 bool(a.get("ceil_mode", 0)), bool(a.get("count_include_pad", 0)))]
        if op == "Resize":
            mode = a.get("mode", b"nearest")
            mode = mode.decode() if isinstance(mode, bytes) else mode
            scales = x[2] if len(x) > 2 and x[2] is not None and x[2].numel() else None
            if mode != "nearest" or scales is None:
                raise BadInputError(f"{node.name}: Resize {mode} without scales is not supported by QAT")
            return [F.interpolate(x[0], scale_factor=[float(s) for s in scales.tolist()[2:]], mode="nearest")]
        if op == "Split":
            sizes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("split")
            axis = a.get("axis", 0)
            if sizes is None:
                sizes = x[0].shape[axis] // len(node.output)
            return list(torch.split(x[0], sizes, dim=axis))
        if op == "Slice":
            starts, ends = x[1].tolist(), x[2].tolist()
            axes = x[3].tolist() if len(x) > 3 and x[3] is not None else list(range(len(starts)))
            steps = x[4].tolist() if len(x) > 4 and x[4] is not None else [1] * len(starts)
            index = [slice(None)] * x[0].ndim
            for s, e, ax, st in zip(starts, ends, axes, steps):
                size = x[0].shape[ax]
                index[ax] = slice(max(min(s, size), -size), max(min(e, size), -size - 1), st)
            return [x[0][tuple(index)]]
        if op == "Constant":
            return [torch.from_numpy(np.array(onnx.numpy_helper.to_array(a["value"])))]
        if op == "Gather":
            axis = a.get("axis", 0) % x[0].ndim
            index = torch.as_tensor(x[1]).long()
            picked = torch.index_select(x[0], axis, index.reshape(-1) % x[0].shape[axis])
            return [picked.reshape([*x[0].shape[:axis], *index.shape, *x[0].shape[axis + 1:]])]
        if op == "Unsqueeze":
            out = x[0]
            for ax in sorted(int(v) for v in (x[1].tolist() if len(x) > 1 else a["axes"])):
                out = out.unsqueeze(ax)
            return [out]
        if op == "Squeeze":
            axes = x[1].tolist() if len(x) > 1 and x[1] is not None else a.get("axes")
            return [x[0].squeeze() if axes is None else x[0].squeeze(tuple(int(v) for v in axes))]
        if op == "Cast":
            return [x[0].to({1: torch.float32, 7: torch.int64, 6: torch.int32, 9: torch.bool}[a["to"]])]
        if op in ("ReduceMax", "ReduceSum", "ReduceMean"):
            axes = a.get("axes") or (x[1].tolist() if len(x) > 1 and x[1] is not None else None)
            keep = bool(a.get("keepdims", 1))
            dims = tuple(int(v) for v in axes) if axes else tuple(range(x[0].ndim))
            if op == "ReduceMax":
                return [x[0].amax(dim=dims, keepdim=keep)]
            return [x[0].sum(dim=dims, keepdim=keep) if op == "ReduceSum" else x[0].mean(dim=dims, keepdim=keep)]
        if op == "ArgMax":
            return [x[0].argmax(dim=a.get("axis", 0), keepdim=bool(a.get("keepdims", 1)))]
        if op == "HardSigmoid":
            return [torch.clamp(a.get("alpha", 0.2) * x[0] + a.get("beta", 0.5), 0, 1)]
        if op == "HardSwish":
            return [F.hardswish(x[0])]
        if op == "Pad":  # constant mode: the explicit pads of a centred activation (`edgetl.quantize.shift`)
            if a.get("mode", b"constant") not in (b"constant", "constant") or (len(x) > 3 and x[3] is not None):
                raise BadInputError(f"{node.name}: QAT runs constant Pad over every axis only")
            pads = [int(v) for v in x[1].tolist()]
            half = len(pads) // 2
            value = float(x[2]) if len(x) > 2 and x[2] is not None else 0.0
            return [F.pad(x[0], [v for d in reversed(range(half)) for v in (pads[d], pads[d + half])], value=value)]
        raise BadInputError(f"{node.name}: op {op} is not supported by QAT")

    return _QdqGraph


def _constant_clip(node: Any, inits: dict[str, np.ndarray]) -> tuple[float | None, float | None] | None:
    """A Clip node's ``(min, max)`` when both are constants (inputs or, before opset 11, attributes), else ``None``."""
    if node.op_type != "Clip":
        return None
    attrs = _attrs(node)
    bounds: list[float | None] = [attrs.get("min"), attrs.get("max")]
    for k, name in enumerate(node.input[1:3]):
        if not name:
            continue
        if name not in inits:
            return None
        bounds[k] = float(inits[name])
    return (None if bounds[0] is None else float(bounds[0]), None if bounds[1] is None else float(bounds[1]))


def _per_tensor(inits: dict[str, np.ndarray], node: Any) -> tuple[float, int, int, int]:
    """(scale, zero point, qmin, qmax) of an activation Q or DQ node, which must be per tensor."""
    if node.input[1] not in inits:
        raise BadInputError(f"{node.name}: its scale is not a constant", hint="QAT needs a calibrated graph")
    scale = inits[node.input[1]]
    zp = inits[node.input[2]] if len(node.input) > 2 and node.input[2] in inits else np.array(0, np.uint8)
    if scale.size != 1:
        raise BadInputError(f"{node.name}: activations quantized per channel; QAT expects per-tensor activations")
    info = np.iinfo(zp.dtype)
    return float(scale.reshape(())), int(zp.reshape(())), int(info.min), int(info.max)
