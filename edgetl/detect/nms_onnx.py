"""In-graph NMS for ``--nms onnx``: append ONNX ``NonMaxSuppression`` to a detector graph.

The exported detector ends in ``boxes`` (N, A, 4) and ``scores`` (N, A, C). This module rewires the
graph to end in the TensorRT EfficientNMS layout instead, so a device needs no host NMS:

* ``num_detections`` int32 (N, 1): valid rows per image;
* ``det_boxes`` float32 (N, K, 4) xyxy input pixels, ``det_scores`` float32 (N, K),
  ``det_classes`` int32 (N, K), best score first; rows past ``num_detections`` are padding
  (zeros, class -1).

It works on the ONNX graph (not through the PyTorch exporter), so it is independent of how the graph
was produced and uses only standard opset-11+ operators: NonMaxSuppression, GatherND, TopK, CumSum,
ScatterND. ONNX Runtime runs it on the CPU; TensorRT parses NonMaxSuppression (or the compile step
can swap in the EfficientNMS plugin, which has the same outputs).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import

onnx = lazy_import("onnx", "train", purpose="adding NMS to the graph")

NMS_OUTPUTS = ("num_detections", "det_boxes", "det_scores", "det_classes")
_PREFIX = "edgetl_nms/"


def add_nms(model: Any, *, max_detections: int = 100, iou_threshold: float = 0.5, score_threshold: float = 0.25,
            class_agnostic: bool = False, boxes: str = "boxes", scores: str = "scores") -> Any:
    """Return a copy of an ONNX detector graph that ends in NMS with EfficientNMS-style outputs.

    Args:
        model: ``onnx.ModelProto`` with outputs ``boxes`` (N, A, 4) and ``scores`` (N, A, C).
        max_detections: K, detections kept per image (and per class before the merge).
        iou_threshold: boxes of the same class overlapping more than this are suppressed.
        score_threshold: candidates must score strictly above this.
        class_agnostic: one NMS over the best class of each box instead of one per class.
        boxes, scores: names of the graph outputs to consume.

    Raises:
        BadInputError: the graph lacks the outputs, or the arguments are out of range.
    """
    TensorProto, helper = onnx.TensorProto, onnx.helper
    if max_detections < 1:
        raise BadInputError(f"max_detections must be >= 1, got {max_detections}")
    if not 0.0 <= iou_threshold <= 1.0:
        raise BadInputError(f"iou_threshold must be in [0, 1], got {iou_threshold}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    names = [o.name for o in graph.output]
    if boxes not in names or scores not in names:
        raise BadInputError(f"the graph outputs {names} lack {boxes!r}/{scores!r}: not a boxes/scores detector")
    opset = next((o.version for o in out.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise BadInputError(f"in-graph NMS needs opset >= 13, the graph has {opset}")
    batch_dim = next(o for o in graph.output if o.name == boxes).type.tensor_type.shape.dim[0]
    batch_name = batch_dim.dim_param or int(batch_dim.dim_value)

    nodes: list[Any] = []
    inits: list[Any] = []

    def n(name: str) -> str:
        return _PREFIX + name

    def const(name: str, value: Any, dtype: int = TensorProto.INT64) -> str:
        np_dtype = {TensorProto.INT64: np.int64, TensorProto.FLOAT: np.float32}[dtype]
        inits.append(onnx.numpy_helper.from_array(np.asarray(value, dtype=np_dtype), n(name)))
        return n(name)

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [n(output)], name=n(output), **attrs))
        return n(output)

    k = int(max_detections)
    c0, c1 = const("i0", [0]), const("i1", [1])
    # --- candidates per class: scores (N, A, C) -> (N, C, A) -------------------------------------
    if class_agnostic:
        best = node("ReduceMax", [scores], "best", axes=[2], keepdims=1) if opset < 18 else \
            node("ReduceMax", [scores, const("ax2", [2])], "best", keepdims=1)
        best_cls = node("ArgMax", [scores], "best_cls", axis=2, keepdims=0)  # (N, A)
        nms_scores = node("Transpose", [best], "nms_scores", perm=[0, 2, 1])  # (N, 1, A)
    else:
        nms_scores = node("Transpose", [scores], "nms_scores", perm=[0, 2, 1])  # (N, C, A)
    selected = node("NonMaxSuppression", [boxes, nms_scores, const("max_out", [k]),
                                          const("iou", [iou_threshold], TensorProto.FLOAT),
                                          const("score", [score_threshold], TensorProto.FLOAT)],
                    "selected", center_point_box=0)  # (S, 3): batch, class, anchor
    b = node("Gather", [selected, const("col0", 0)], "b", axis=1)
    a = node("Gather", [selected, const("col2", 2)], "a", axis=1)
    ba = node("Concat", [node("Unsqueeze", [b, c1], "b_col"), node("Unsqueeze", [a, c1], "a_col")], "ba", axis=1)
    if class_agnostic:
        cls = node("GatherND", [best_cls, ba], "cls")  # (S,)
        sc = node("GatherND", [node("Squeeze", [best, const("i2", [2])], "best_sq"), ba], "sc")
    else:
        cls = node("Gather", [selected, const("col1", 1)], "cls", axis=1)
        bac = node("Concat", [ba, node("Unsqueeze", [cls, c1], "c_col")], "bac", axis=1)
        sc = node("GatherND", [scores, bac], "sc")  # (S,)
    bx = node("GatherND", [boxes, ba], "bx")  # (S, 4)
    # --- order by (image, score desc): key = 2 * image - score, scores in [0, 1] ------------------
    key = node("Sub", [node("Mul", [node("Cast", [b], "b_f", to=TensorProto.FLOAT),
                                     const("two", 2.0, TensorProto.FLOAT)], "b2"), sc], "key")
    count = node("Shape", [key], "count")
    order = helper.make_node("TopK", [key, count], [n("key_sorted"), n("order")], name=n("topk"), largest=0, sorted=1)
    nodes.append(order)
    b_s = node("Gather", [b, n("order")], "b_s")
    cls_s = node("Gather", [cls, n("order")], "cls_s")
    sc_s = node("Gather", [sc, n("order")], "sc_s")
    bx_s = node("Gather", [bx, n("order")], "bx_s")
    # --- rank within the image; keep the first K ------------------------------------------------
    shape_boxes = node("Shape", [boxes], "shape_boxes")
    n_img = node("Gather", [shape_boxes, c0], "n_img")  # (1,)
    images = node("Range", [const("zero", 0), node("Squeeze", [n_img, c0], "n_img_s"), const("one", 1)], "images")
    onehot = node("Cast", [node("Equal", [node("Unsqueeze", [b_s, c1], "b_s_col"),
                                         node("Unsqueeze", [images, c0], "img_row")], "eq")], "onehot",
                  to=TensorProto.INT64)  # (S, N)
    counts = node("ReduceSum", [onehot, c0], "counts", keepdims=0)  # (N,)
    starts = node("Sub", [node("CumSum", [counts, const("axis0", 0)], "cum"), counts], "starts")
    positions = node("Range", [const("zero2", 0), node("Squeeze", [count, c0], "count_s"), const("one2", 1)],
                     "positions")
    rank = node("Sub", [positions, node("Gather", [starts, b_s], "start_of")], "rank")
    keep = node("Squeeze", [node("NonZero", [node("Less", [rank, const("k", [k])], "in_k")], "keep_nz"), c0], "keep")
    b_k = node("Gather", [b_s, keep], "b_k")
    slot = node("Unsqueeze", [node("Add", [node("Mul", [b_k, const("k2", [k])], "b_k_k"),
                                           node("Gather", [rank, keep], "rank_k")], "slot_flat"), c1], "slot")
    total = node("Mul", [n_img, const("k3", [k])], "total")  # (1,)
    zeros_s = node("ConstantOfShape", [total], "zeros_s", value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    zeros_b = node("ConstantOfShape", [node("Concat", [total, const("four", [4])], "total4", axis=0)], "zeros_b",
                   value=helper.make_tensor("v", TensorProto.FLOAT, [1], [0.0]))
    minus_c = node("ConstantOfShape", [total], "minus_c", value=helper.make_tensor("v", TensorProto.INT64, [1], [-1]))
    det_s = node("ScatterND", [zeros_s, slot, node("Gather", [sc_s, keep], "sc_k")], "det_s_flat")
    det_b = node("ScatterND", [zeros_b, slot, node("Gather", [bx_s, keep], "bx_k")], "det_b_flat")
    det_c = node("ScatterND", [minus_c, slot, node("Gather", [cls_s, keep], "cls_k")], "det_c_flat")
    shape_nk = node("Concat", [n_img, const("k4", [k])], "shape_nk", axis=0)
    shape_nk4 = node("Concat", [n_img, const("k5", [k]), const("four2", [4])], "shape_nk4", axis=0)
    nodes.append(helper.make_node("Reshape", [det_s, shape_nk], ["det_scores"], name=n("det_scores")))
    nodes.append(helper.make_node("Reshape", [det_b, shape_nk4], ["det_boxes"], name=n("det_boxes")))
    nodes.append(helper.make_node("Cast", [node("Reshape", [det_c, shape_nk], "det_c")], ["det_classes"],
                                  name=n("det_classes"), to=TensorProto.INT32))
    capped = node("Min", [counts, node("Expand", [const("k6", [k]), n_img], "k_n")], "capped")
    nodes.append(helper.make_node("Cast", [node("Unsqueeze", [capped, c1], "num_col")], ["num_detections"],
                                  name=n("num_detections"), to=TensorProto.INT32))

    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    for name in (boxes, scores):
        graph.output.remove(next(o for o in graph.output if o.name == name))
    graph.output.extend([
        helper.make_tensor_value_info("num_detections", TensorProto.INT32, [batch_name, 1]),
        helper.make_tensor_value_info("det_boxes", TensorProto.FLOAT, [batch_name, k, 4]),
        helper.make_tensor_value_info("det_scores", TensorProto.FLOAT, [batch_name, k]),
        helper.make_tensor_value_info("det_classes", TensorProto.INT32, [batch_name, k]),
    ])
    return out


def decode_tail_nodes(model: Any, outputs: tuple[str, ...] = ("boxes", "scores")) -> list[str]:
    """Names of the decode nodes between the head's last convolutions and the detector outputs.

    The decode (level concat, sigmoid, DFL softmax-expectation, anchor offsets) carries box coordinates
    in input pixels: quantized to INT8 with one scale for the whole image, a 320 px range becomes steps
    of ~2.5 px, which costs mAP at the strict IoU thresholds for no speed gain. INT8 quantization of a
    detector keeps these nodes in float; every convolution stays INT8.

    Args:
        model: the FP32 ``onnx.ModelProto``.
        outputs: the decoded outputs to walk back from.

    Returns:
        node names, found by walking back from ``outputs`` and stopping at convolutions.
    """
    producers = {out: node for node in model.graph.node for out in node.output}
    seen: set[str] = set()
    tail: list[str] = []
    stack = [name for name in outputs if name in producers]
    while stack:
        node = producers.get(stack.pop())
        if node is None or node.name in seen or node.op_type in ("Conv", "ConvTranspose", "MatMul", "Gemm"):
            continue
        seen.add(node.name)
        tail.append(node.name)
        stack.extend(node.input)
    return tail
