"""The detector graph: names, shapes, decode, freezing, ONNX parity and the in-graph NMS."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgetl.detect.model import (
    build_detector,
    detector_preprocess_spec,
    dfl_expectation,
    distances_to_boxes,
    list_detectors,
    make_anchors,
)
from edgetl.errors import BadInputError

SIZE = 64
CELLS = (SIZE // 8) ** 2 + (SIZE // 16) ** 2 + (SIZE // 32) ** 2


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    m = build_detector("yolo-lite0-n", num_classes=3, weights="pretrained").eval()
    with torch.no_grad():  # spread the scores so NMS has real work to do
        for pred in m.head.cls_preds:
            pred.bias.fill_(-1.0)
            pred.weight.normal_(0, 0.5)
    return m


@pytest.fixture(scope="module")
def onnx_path(model: torch.nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from edgetl.export.onnx_graph import trace_to_onnx

    path = tmp_path_factory.mktemp("det") / "det.onnx"
    trace_to_onnx(model, path, size=(SIZE, SIZE), input_name="input", output_names=list(model.onnx_output_names),
                  opset=17, dynamic_batch=True)
    return path


def _batch(n: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.RandomState(seed).randn(n, 3, SIZE, SIZE).astype(np.float32)


def test_names_and_unknown_name():
    names = list_detectors()
    assert {"yolo-lite0-n", "yolo-lite0-s", "yolo-mbv3-n"} <= set(names)
    assert list_detectors("yolo-mbv3-*") == ["yolo-mbv3-n", "yolo-mbv3-s"]
    with pytest.raises(BadInputError, match=r"did you mean .*yolo-lite0-n"):
        build_detector("yolo-lite0-m", num_classes=2)


def test_outputs_shapes_ranges_and_facts(model):
    with torch.no_grad():
        boxes, scores = model(torch.from_numpy(_batch(2)))
    assert boxes.shape == (2, CELLS, 4) and scores.shape == (2, CELLS, 3)
    assert float(scores.min()) >= 0 and float(scores.max()) <= 1
    assert bool((boxes[..., 2:] >= boxes[..., :2]).all())  # DFL distances are never negative
    assert model.onnx_output_names == ("boxes", "scores")
    spec = model.postprocess_spec()
    assert spec["type"] == "detect" and spec["outputs"] == "boxes_scores" and spec["strides"] == [8, 16, 32]
    assert {"score_threshold", "iou_threshold", "max_detections", "class_agnostic"} <= set(spec)
    assert model.postprocess_spec(nms="onnx")["outputs"] == "nms"
    assert "ImageNet" in model.weights_source or "package" in model.weights_source
    pre = detector_preprocess_spec("yolo-lite0-n", 96)
    assert pre.resize == "letterbox" and pre.size == (96, 96) and pre.mean == (0.5, 0.5, 0.5)


def test_sizes_differ_and_input_must_be_multiple_of_32(model):
    small = sum(p.numel() for p in build_detector("yolo-lite0-n", 3, weights="none").parameters())
    big = sum(p.numel() for p in build_detector("yolo-lite0-s", 3, weights="none").parameters())
    assert big > small
    with pytest.raises(BadInputError, match="multiple of 32"):
        model(torch.zeros(1, 3, 70, 64))
    with pytest.raises(BadInputError, match="multiple of 32"):
        detector_preprocess_spec("yolo-lite0-n", 100)


def test_decode_places_boxes_around_cell_centres():
    anchors, stride = make_anchors([(2, 2), (1, 1)], (8, 16), torch.device("cpu"), torch.float32)
    assert anchors.tolist() == [[4, 4], [12, 4], [4, 12], [12, 12], [8, 8]]
    assert stride[:, 0].tolist() == [8, 8, 8, 8, 16]
    logits = torch.full((1, 5, 4, 4), -50.0)
    logits[..., 2] = 50.0  # every side: all mass on bin 2
    ltrb = dfl_expectation(logits, 4)
    assert torch.allclose(ltrb, torch.full((1, 5, 4), 2.0))
    boxes = distances_to_boxes(anchors, ltrb * stride)
    assert boxes[0, 0].tolist() == [-12, -12, 20, 20] and boxes[0, 4].tolist() == [-24, -24, 40, 40]


def test_backbone_freezing_modes_keep_frozen_batchnorm_in_eval():
    m = build_detector("yolo-lite0-n", num_classes=2, weights="none")
    total = len(list(m.backbone.parameters()))
    assert m.set_backbone_trainable("frozen") == total
    m.train()
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert all(p.requires_grad for p in m.head.parameters())
    assert not m.backbone.bn1.training and m.head.training
    partial = m.set_backbone_trainable("partial")
    assert 0 < partial < total
    assert not m.backbone.conv_stem.weight.requires_grad
    assert all(p.requires_grad for p in m.backbone.blocks[2].parameters())
    assert not m.backbone.bn1.training and m.backbone.blocks[3][0].bn1.training
    assert m.set_backbone_trainable("full") == 0
    assert m.backbone.bn1.training
    with pytest.raises(BadInputError):
        m.set_backbone_trainable("half")


def test_checkpoint_round_trip(model, tmp_path):
    from edgetl.train.checkpoint import CheckpointMeta, build_from_checkpoint, save_checkpoint

    meta = CheckpointMeta(task="detect", model="yolo-lite0-n", labels=["a", "b", "c"],
                          preprocess=detector_preprocess_spec("yolo-lite0-n", SIZE), model_args=model.model_args())
    save_checkpoint(tmp_path / "d.pt", model.state_dict(), meta)
    rebuilt, meta2 = build_from_checkpoint(tmp_path / "d.pt")
    x = torch.from_numpy(_batch(1))
    with torch.no_grad():
        for a, b in zip(model(x), rebuilt(x)):
            assert torch.allclose(a, b, atol=1e-5)
    assert meta2.task == "detect" and meta2.preprocess.resize == "letterbox"


def test_decode_parity_torch_onnx_numpy(model, onnx_path):
    import onnxruntime as ort

    from edgetl.runtime.detection import postprocess_detections

    x = _batch(3)
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores = session.run(["boxes", "scores"], {"input": x})
    with torch.no_grad():
        t_boxes, t_scores = (v.numpy() for v in model(torch.from_numpy(x)))
    assert np.abs(boxes - t_boxes).max() < 1e-3
    assert np.abs(scores - t_scores).max() < 1e-4
    post = {**model.postprocess_spec(), "score_threshold": 0.3}
    from_onnx = postprocess_detections({"boxes": boxes, "scores": scores}, post, [None] * 3)
    from_torch = postprocess_detections({"boxes": t_boxes, "scores": t_scores}, post, [None] * 3)
    assert sum(len(r) for r in from_onnx) > 0
    for a, b in zip(from_onnx, from_torch):
        assert len(a) == len(b) and (a.labels == b.labels).all()
        assert np.abs(a.boxes - b.boxes).max() < 1e-2


@pytest.mark.parametrize("agnostic", [False, True])
def test_in_graph_nms_matches_host_nms(onnx_path, agnostic):
    import onnx
    import onnxruntime as ort

    from edgetl.detect.nms_onnx import NMS_OUTPUTS, add_nms
    from edgetl.runtime.detection import postprocess_detections

    graph = onnx.load(str(onnx_path))
    post = {"score_threshold": 0.3, "iou_threshold": 0.5, "max_detections": 7, "class_agnostic": agnostic}
    with_nms = add_nms(graph, max_detections=7, iou_threshold=0.5, score_threshold=0.3, class_agnostic=agnostic)
    onnx.checker.check_model(with_nms, full_check=True)
    x = _batch(3, seed=1)
    raw = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    boxes, scores = raw.run(["boxes", "scores"], {"input": x})
    session = ort.InferenceSession(with_nms.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = dict(zip(NMS_OUTPUTS, session.run(list(NMS_OUTPUTS), {"input": x})))
    assert outs["num_detections"].shape == (3, 1) and outs["num_detections"].dtype == np.int32
    assert outs["det_boxes"].shape == (3, 7, 4) and outs["det_classes"].dtype == np.int32
    host = postprocess_detections({"boxes": boxes, "scores": scores}, {**post, "outputs": "boxes_scores"}, [None] * 3)
    device = postprocess_detections(outs, {**post, "outputs": "nms"}, [None] * 3)
    for n, (h, d) in enumerate(zip(host, device)):
        assert len(h) == len(d) == int(outs["num_detections"][n, 0]) > 0
        np.testing.assert_allclose(d.boxes, h.boxes, atol=1e-4)
        np.testing.assert_allclose(d.scores, h.scores, atol=1e-6)
        assert (d.labels == h.labels).all()
        assert (outs["det_classes"][n, len(d):] == -1).all()  # padding rows


def test_in_graph_nms_with_nothing_above_threshold(onnx_path):
    import onnx
    import onnxruntime as ort

    from edgetl.detect.nms_onnx import add_nms

    graph = add_nms(onnx.load(str(onnx_path)), max_detections=5, score_threshold=0.9999)
    session = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    num, boxes, scores, _classes = session.run(None, {"input": _batch(2)})
    assert num.ravel().tolist() == [0, 0] and boxes.shape == (2, 5, 4) and not scores.any()


def test_in_graph_nms_refuses_a_graph_without_boxes(tmp_path):
    import onnx
    from onnx import TensorProto, helper

    from edgetl.detect.nms_onnx import add_nms

    node = helper.make_node("Identity", ["input"], ["logits"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 3])])
    with pytest.raises(BadInputError, match="not a boxes/scores detector"):
        add_nms(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert onnx  # imported for the helper


def test_decode_tail_is_everything_after_the_last_convs(onnx_path):
    import onnx

    from edgetl.detect.nms_onnx import decode_tail_nodes

    graph = onnx.load(str(onnx_path)).graph
    tail = set(decode_tail_nodes(onnx.load(str(onnx_path))))
    ops = {n.op_type for n in graph.node if n.name in tail}
    assert {"Sigmoid", "Softmax", "ReduceSum", "Concat"} <= ops and "Conv" not in ops
    convs = [n for n in graph.node if n.op_type == "Conv"]
    assert len(convs) > 50 and not any(n.name in tail for n in convs)
    # Every tail node lies downstream of the head: none of the backbone's nodes is in it.
    assert not any(name.startswith("/backbone") for name in tail)
