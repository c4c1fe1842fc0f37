"""Small hand-built ONNX graphs for quantization tests: one way to wrap nodes and initializers into a checked
model, so each test file only says which layers it needs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper


def small_model(nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], side: int,
                classes: int) -> onnx.ModelProto:
    """A checked opset-17 model: input ``input`` [N, 3, side, side], output ``logits`` [N, classes]."""
    graph = helper.make_graph(nodes, "net", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                          [None, 3, side, side])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, classes])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def saved_net(tmp_path: Path, build: Callable[[np.random.Generator], onnx.ModelProto],
              side: int) -> tuple[onnx.ModelProto, Path, np.ndarray]:
    """``build(rng)`` saved as ``tmp_path/net.onnx``, and 64 inputs from the same generator with a positive mean
    (so that rounding shifts the layers' mean outputs)."""
    rng = np.random.default_rng(0)
    model = build(rng)
    path = tmp_path / "net.onnx"
    onnx.save(model, str(path))
    return model, path, rng.normal(0.8, 1.0, (64, 3, side, side)).astype(np.float32)
