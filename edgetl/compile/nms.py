"""TensorRT's EfficientNMS plugin appended to a detector network at compile time (``--nms trt``).

A detector bundle whose graph ends in ``boxes`` (N, A, 4, xyxy) and ``scores`` (N, A, C, already
sigmoid) leaves NMS to the host. With ``edgetl compile --nms trt`` the engine instead ends in the
``EfficientNMS_TRT`` plugin (shipped in ``libnvinfer_plugin``), so thresholding, per-class NMS and the
top-K cut run on the GPU and the engine returns the plugin's four fixed-size outputs, which the
runtime reads as postprocess ``outputs: "nms"``:

    num_detections int32 (N, 1), det_boxes float32 (N, K, 4), det_scores float32 (N, K),
    det_classes int32 (N, K)   with K = the manifest's ``max_detections``.

The ONNX graphs in the bundle are not touched; only the engine artifact records the changed layout.
EfficientNMS_TRT is an ``IPluginV2DynamicExt`` plugin (TensorRT 10-11.0), added with
``add_plugin_v2``; should a TensorRT release hand back an ``IPluginV3`` object instead, it goes
through ``add_plugin_v3``.

Plugin versions differ in the attributes they know, and an unknown attribute is ignored silently:
``class_agnostic`` is missing from older EfficientNMS_TRT builds, which always run per-class NMS.
So the attributes are checked against what the creator declares (``creator.field_names``) before
anything is sent: a missing required one, or ``class_agnostic: true`` on a plugin that does not
declare it, stops the build with the reason (host NMS honours it); ``class_agnostic: false`` there
is simply left out, since per-class NMS is what that plugin does.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from edgetl.errors import BadInputError, EnvironmentMissingError
from edgetl.lazy import lazy_import
from edgetl.runtime.backends.tensorrt import TensorRTError

trt = lazy_import("tensorrt", "tensorrt", purpose="TensorRT's EfficientNMS plugin")

PLUGIN_NAME = "EfficientNMS_TRT"
PLUGIN_VERSION = "1"
#: Engine output names, in the plugin's output order (the runtime's ``nms`` layout).
NMS_OUTPUTS = ("num_detections", "det_boxes", "det_scores", "det_classes")
#: What `compile_bundle` records in the engine artifact's ``info``.
INFO_NAME = "efficientnms_trt"
NMS_MODES = ("keep", "trt")


def check_nms_request(task: str, postprocess: dict[str, Any], nms: str) -> None:
    """Refuse ``--nms trt`` for a bundle it cannot apply to (exit 2), before TensorRT is touched."""
    if nms not in NMS_MODES:
        raise BadInputError(f"unknown --nms {nms!r}; expected one of {', '.join(NMS_MODES)}")
    if nms == "keep":
        return
    if task != "detect":
        raise BadInputError(
            f"--nms trt applies to detector bundles only; this bundle's task is {task!r}",
            hint="drop --nms (classifiers have no NMS)",
        )
    layout = postprocess.get("outputs", "boxes_scores")
    if layout != "boxes_scores":
        raise BadInputError(
            f"--nms trt needs a graph that ends in boxes and scores; this bundle's postprocess outputs "
            f"are {layout!r} (NMS already in the graph)",
            hint="re-export without --nms onnx, or compile without --nms trt",
        )


def plugin_params(postprocess: dict[str, Any]) -> dict[str, Any]:
    """EfficientNMS_TRT attributes from the manifest's detect postprocess section."""
    try:
        params = {
            "score_threshold": float(postprocess.get("score_threshold", 0.25)),
            "iou_threshold": float(postprocess.get("iou_threshold", 0.5)),
            "max_output_boxes": int(postprocess.get("max_detections", 100)),
            "background_class": -1,  # every class is an object class
            "score_activation": 0,  # the graph's scores are already sigmoid probabilities
            "class_agnostic": int(bool(postprocess.get("class_agnostic", False))),
            "box_coding": 0,  # corner boxes x1, y1, x2, y2
        }
    except (TypeError, ValueError) as exc:
        raise BadInputError(f"the manifest's postprocess section has a non-numeric threshold: {exc}") from exc
    if params["max_output_boxes"] < 1:
        raise BadInputError(f"postprocess max_detections must be >= 1, got {params['max_output_boxes']}")
    if not 0.0 <= params["iou_threshold"] <= 1.0:
        raise BadInputError(f"postprocess iou_threshold must be in [0, 1], got {params['iou_threshold']}")
    return params


_FLOAT_FIELDS = ("score_threshold", "iou_threshold")
#: Attributes only some plugin versions declare; the value at which leaving them out changes nothing.
_OPTIONAL_FIELDS = {"class_agnostic": 0}


def declared_fields(creator: Any) -> set[str] | None:
    """The attribute names a plugin creator declares, or None when it does not say."""
    fields = getattr(creator, "field_names", None)
    if fields is None:
        return None
    try:
        return {str(f.name) for f in fields}
    except (TypeError, AttributeError):
        return None


def supported_params(params: dict[str, Any], declared: set[str] | None, version: str) -> dict[str, Any]:
    """``params`` restricted to what the plugin declares; raise where leaving one out would change the result.

    Args:
        params: the attributes from `plugin_params`.
        declared: `declared_fields` of the creator (None: unknown, so optional attributes are not relied on).
        version: TensorRT's version, for the message.
    """
    kept = {}
    for name, value in params.items():
        default = _OPTIONAL_FIELDS.get(name)
        if (name in declared) if declared is not None else default is None:
            kept[name] = value  # declared, or a required attribute of a plugin that does not list them
            continue
        if default is not None and value == default:
            continue  # the plugin's own behaviour already: do not send a field it would ignore
        said = "does not declare" if declared is not None else "does not list its attributes, so it may ignore"
        raise EnvironmentMissingError(
            f"{PLUGIN_NAME} in TensorRT {version} {said} {name!r} (it declares "
            f"{', '.join(sorted(declared or [])) or 'nothing'}); an unknown attribute is ignored silently, "
            f"so the engine would not do what the manifest's postprocess asks ({name}={value})",
            hint="compile without --nms trt (host NMS honours every postprocess setting), or use a TensorRT "
            "whose plugin library has this attribute" + (", or set class_agnostic to false in the manifest"
                                                         if name == "class_agnostic" else ""),
        )
    return kept


def _fields(params: dict[str, Any]) -> Any:
    fields = []
    for name, value in params.items():
        if name in _FLOAT_FIELDS:
            data, kind = np.array([value], dtype=np.float32), trt.PluginFieldType.FLOAT32
        else:
            data, kind = np.array([value], dtype=np.int32), trt.PluginFieldType.INT32
        fields.append(trt.PluginField(name, data, kind))
    return trt.PluginFieldCollection(fields)


def _creator(logger: Any) -> Any:
    # The plugin library registers its creators only when asked to; without this the lookup fails.
    trt.init_libnvinfer_plugins(logger, "")
    registry = trt.get_plugin_registry()
    creator = registry.get_creator(PLUGIN_NAME, PLUGIN_VERSION, "")  # TensorRT 10+: V2 and V3 creators alike
    if creator is None:
        raise EnvironmentMissingError(
            f"TensorRT {trt.__version__} has no {PLUGIN_NAME} version {PLUGIN_VERSION} plugin",
            hint="install TensorRT's plugin library (libnvinfer-plugin / JetPack's libnvinfer-plugin10), "
            "or compile without --nms trt and keep NMS on the host",
        )
    return creator


def _output(network: Any, name: str) -> Any:
    for i in range(network.num_outputs):
        tensor = network.get_output(i)
        if tensor.name == name:
            return tensor
    names = [network.get_output(i).name for i in range(network.num_outputs)]
    raise BadInputError(
        f"--nms trt needs a graph output named {name!r}; the graph has {names}",
        hint="export the detector with host NMS (the default), which outputs boxes and scores",
    )


def add_efficient_nms(network: Any, postprocess: dict[str, Any], logger: Any) -> dict[str, Any]:
    """Replace the network's ``boxes``/``scores`` outputs with EfficientNMS_TRT's four outputs.

    Args:
        network: a parsed network whose outputs include ``boxes`` (N, A, 4) and ``scores`` (N, A, C).
        postprocess: the manifest's detect postprocess section (thresholds, max_detections, class_agnostic).
        logger: the TensorRT logger (for ``init_libnvinfer_plugins``).

    Returns:
        What the engine artifact records: plugin name/version and its attributes.
    """
    params = plugin_params(postprocess)
    boxes, scores = _output(network, "boxes"), _output(network, "scores")
    b_shape, s_shape = tuple(boxes.shape), tuple(scores.shape)
    if len(b_shape) != 3 or b_shape[2] != 4 or len(s_shape) != 3:
        raise BadInputError(f"--nms trt expects boxes (N, A, 4) and scores (N, A, C), got {b_shape} and {s_shape}")
    creator = _creator(logger)
    params = supported_params(params, declared_fields(creator), str(trt.__version__))
    fields = _fields(params)
    if hasattr(trt, "IPluginCreatorV3One") and isinstance(creator, trt.IPluginCreatorV3One):
        plugin = creator.create_plugin("edgetl_nms", fields, trt.TensorRTPhase.BUILD)
    else:
        plugin = creator.create_plugin("edgetl_nms", fields)
    if plugin is None:
        raise TensorRTError(f"TensorRT could not create the {PLUGIN_NAME} plugin with {params}")
    if hasattr(trt, "IPluginV3") and isinstance(plugin, trt.IPluginV3):
        layer = network.add_plugin_v3([boxes, scores], [], plugin)
    else:
        layer = network.add_plugin_v2([boxes, scores], plugin)
    if layer is None or layer.num_outputs != len(NMS_OUTPUTS):
        raise TensorRTError(f"TensorRT could not add the {PLUGIN_NAME} layer to the network")
    layer.name = "edgetl_efficient_nms"
    network.unmark_output(boxes)
    network.unmark_output(scores)
    for i, name in enumerate(NMS_OUTPUTS):
        out = layer.get_output(i)
        out.name = name
        network.mark_output(out)
    return {"plugin": PLUGIN_NAME, "version": PLUGIN_VERSION, "params": params}


__all__ = ["NMS_MODES", "NMS_OUTPUTS", "add_efficient_nms", "check_nms_request", "plugin_params"]
