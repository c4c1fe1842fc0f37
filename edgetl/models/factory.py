"""`create`: the one way edgetl builds a model, classifier or multi-scale feature backbone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.models.registry import DEFAULT_MODEL, get_model_info
from edgetl.models.weights import WeightSource, load_state_dict_file, require_pretrained

timm = lazy_import("timm", "train", purpose="building models")


def _map_ordered(source: dict[str, Any], target: dict[str, Any], where: str) -> dict[str, Any]:
    """Map a state dict onto another architecture's names 1:1 in order, checking every shape."""
    if len(source) != len(target):
        raise BadInputError(f"{where}: {len(source)} tensors, the architecture has {len(target)}")
    mapped = {}
    for (src_key, tensor), (dst_key, ref) in zip(source.items(), target.items()):
        if tuple(tensor.shape) != tuple(ref.shape):
            raise BadInputError(
                f"{where}: tensor {src_key} {tuple(tensor.shape)} does not fit {dst_key} {tuple(ref.shape)}"
            )
        mapped[dst_key] = tensor
    return mapped


def _load_into(model: Any, state: dict[str, Any], where: str, *, allow_head_mismatch: bool) -> list[str]:
    """Load weights, dropping a classifier whose class count differs. Returns the keys left untouched."""
    own = model.state_dict()
    head_keys = _classifier_keys(model)
    kept = {}
    for key, tensor in state.items():
        if key not in own:
            continue
        if tuple(own[key].shape) != tuple(tensor.shape):
            if allow_head_mismatch and key in head_keys:
                continue
            raise BadInputError(f"{where}: {key} has shape {tuple(tensor.shape)}, model wants {tuple(own[key].shape)}")
        kept[key] = tensor
    missing = [k for k in own if k not in kept]
    unexpected_body = [k for k in missing if k not in head_keys and not k.endswith("num_batches_tracked")]
    if unexpected_body:
        raise BadInputError(
            f"{where}: weights do not cover {len(unexpected_body)} backbone tensors (e.g. {unexpected_body[:3]})",
            hint="the file is for another architecture; pick the matching --model",
        )
    model.load_state_dict(kept, strict=False)
    return missing


def _classifier_keys(model: Any) -> set[str]:
    name = getattr(model, "pretrained_cfg", {}).get("classifier", "classifier")
    return {k for k in model.state_dict() if k.startswith(f"{name}.")}


def create(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = "pretrained",
    num_classes: int = 1000,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (2, 3, 4),
    drop_rate: float = 0.0,
) -> Any:
    """Build a registered model.

    Args:
        name: registry name (`edgetl.models.list_models`).
        weights: ``"pretrained"`` (ImageNet weights from an offline source), ``"none"``/None (random
            init), or a path to a state dict / checkpoint (loaded with ``weights_only=True``).
        num_classes: classes of the new head; a pretrained 1000-class head is dropped when it differs.
        features_only: return a multi-scale feature extractor (timm ``features_only``) for detectors.
        out_indices: which feature levels to return with ``features_only``.
        drop_rate: dropout before the classifier.

    Returns:
        A ``torch.nn.Module`` with ``edgetl_weights`` (where its weights came from), ``edgetl_info``
        (the registry record) and ``edgetl_new_head`` (True when the classifier was not loaded from
        the weights, so training should initialise it: `edgetl.train.strategies.init_new_head`) attributes.
    """
    info = get_model_info(name)
    kwargs: dict[str, Any] = {"pretrained": False}
    full = timm.create_model(info.timm_name, num_classes=1000, **kwargs)
    source_desc = "none (random init)"
    file_state: dict[str, Any] | None = None
    full_head_loaded = head_loaded = False
    if weights not in (None, "none", "scratch"):
        source: WeightSource
        if weights == "pretrained":
            source = require_pretrained(info)
        else:
            source = WeightSource("file", Path(weights), "names")
        state = load_state_dict_file(source.path)
        if source.key_mapping == "ordered":
            state = _map_ordered(state, full.state_dict(), str(source.path))
        missing = _load_into(full, state, str(source.path), allow_head_mismatch=True)
        full_head_loaded = not _classifier_keys(full) & set(missing)
        if source.kind == "file":
            file_state = state
        source_desc = source.describe()
    if features_only:
        model = timm.create_model(
            info.timm_name, pretrained=False, features_only=True, out_indices=out_indices
        )
        missing = _load_into(model, full.state_dict(), name, allow_head_mismatch=False)
        if any(not k.endswith("num_batches_tracked") for k in missing):
            raise BadInputError(f"{name}: feature extractor keys not covered: {missing[:3]}")
    elif num_classes != 1000 or drop_rate:
        model = timm.create_model(info.timm_name, pretrained=False, num_classes=num_classes, drop_rate=drop_rate)
        _load_into(model, full.state_dict(), name, allow_head_mismatch=True)
        head_loaded = full_head_loaded and num_classes == 1000
    else:
        model = full
        head_loaded = full_head_loaded
    if file_state is not None and not features_only and model is not full:
        # a fine-tuned file's head fits a model with its class count: keep it (continued training)
        own = model.state_dict()
        head = {k: v for k, v in file_state.items()
                if k in _classifier_keys(model) and tuple(v.shape) == tuple(own[k].shape)}
        if head:
            model.load_state_dict(head, strict=False)
            head_loaded = True
    model.edgetl_new_head = not features_only and not head_loaded
    model.edgetl_weights = source_desc
    model.edgetl_info = info
    return model
