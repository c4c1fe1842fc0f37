"""Torchvision transforms built from a `PreprocessSpec`: training augmentation and the eval mirror.

Training augmentation and evaluation preprocessing derive from the one spec that is saved with the
model, so the input statistics a model was trained on are the ones the deployed model gets.
`eval_transform` mirrors `edgetl.preprocess.preprocess` with torchvision ops (PIL backend); a test
keeps the two equal to 1e-5, so either can feed a model.
"""

from __future__ import annotations

from typing import Any

from edgetl.errors import BadInputError
from edgetl.lazy import lazy_import
from edgetl.preprocess import PreprocessSpec, normalize, resize_and_crop

tv_transforms = lazy_import("torchvision.transforms", "train", purpose="training transforms")
torch = lazy_import("torch", "train", purpose="training transforms")


def _interpolation(spec: PreprocessSpec) -> Any:
    modes = tv_transforms.InterpolationMode
    return {
        "nearest": modes.NEAREST,
        "bilinear": modes.BILINEAR,
        "bicubic": modes.BICUBIC,
        "lanczos": modes.LANCZOS,
    }[spec.interpolation]


def _to_tensor_normalized(spec: PreprocessSpec) -> list[Any]:
    t = tv_transforms
    if abs(spec.scale - 1.0 / 255.0) > 1e-12:
        raise BadInputError(f"torchvision transforms assume scale 1/255, the spec has {spec.scale}")
    return [t.ToTensor(), t.Normalize(mean=list(spec.mean), std=list(spec.std))]


def eval_transform(spec: PreprocessSpec) -> Any:
    """The evaluation preprocessing of ``spec`` as a torchvision ``Compose`` over RGB PIL images.

    Args:
        spec: ``center-crop`` (resize the short side to ``size / crop_pct``, crop the centre) or
            ``resize`` (stretch); ``letterbox`` is a detector mode and is refused here.
    """
    t = tv_transforms
    h, w = spec.size
    interp = _interpolation(spec)
    if spec.resize == "resize":
        geometry = [t.Resize((h, w), interpolation=interp)]
    elif spec.resize == "center-crop":
        short = spec.resize_size[0] if h <= w else spec.resize_size[1]
        geometry = [t.Resize(short, interpolation=interp), t.CenterCrop((h, w))]
    else:
        raise BadInputError(f"classification transforms do not support resize={spec.resize!r}")
    return t.Compose([*geometry, *_to_tensor_normalized(spec)])


def train_transform(
    spec: PreprocessSpec,
    augment: bool = True,
    *,
    hflip: bool = True,
    scale: tuple[float, float] = (0.5, 1.0),
    color_jitter: float = 0.2,
) -> Any:
    """Training augmentation ending in the spec's size and normalisation.

    Args:
        spec: the model's preprocessing spec (size, interpolation, mean/std).
        augment: False returns `eval_transform` (deterministic; what linear-probe feature caching uses).
        hflip: random horizontal flips; turn off where mirroring changes the class (digits, text).
        scale: area range of ``RandomResizedCrop``; kept above ImageNet's 0.08 since small datasets
            often centre their subject.
        color_jitter: brightness/contrast/saturation strength (0 disables).
    """
    if not augment:
        return eval_transform(spec)
    t = tv_transforms
    ops: list[Any] = [t.RandomResizedCrop(spec.size, scale=scale, interpolation=_interpolation(spec))]
    if hflip:
        ops.append(t.RandomHorizontalFlip())
    if color_jitter > 0:
        ops.append(t.ColorJitter(brightness=color_jitter, contrast=color_jitter, saturation=color_jitter))
    return t.Compose([*ops, *_to_tensor_normalized(spec)])


class SpecTransform:
    """``edgetl.preprocess`` as a transform: PIL image -> CHW float tensor, exactly what deployment computes.

    Validation during training uses this so the reported accuracy is the deployed pipeline's.
    """

    def __init__(self, spec: PreprocessSpec) -> None:
        self.spec = spec

    def __call__(self, image: Any) -> Any:
        resized, _ = resize_and_crop(image, self.spec)
        return torch.from_numpy(normalize(resized, self.spec))
