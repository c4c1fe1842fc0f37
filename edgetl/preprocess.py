"""The one implementation of the preprocessing spec, in numpy and PIL.

Training evaluation, calibration, validation and the device runtime all call this module, so the
deployed model sees exactly the pixels the model was evaluated on. It never imports torch.

A spec travels in the bundle manifest (``preprocess``) and in every checkpoint; see
`PreprocessSpec.to_dict`.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from edgetl.errors import BadInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Default decode limit: a 20000x20000 PNG is refused before its pixels are decoded.
DEFAULT_MAX_PIXELS = 40_000_000

RESIZE_MODES = ("resize", "letterbox", "center-crop")
_PIL_INTERPOLATION = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
}

ImageSource = str | Path | bytes | bytearray | Image.Image | np.ndarray


@dataclass(frozen=True)
class PreprocessSpec:
    """How raw RGB pixels become the model's NCHW float32 input.

    Args:
        size: output ``(height, width)``.
        resize: ``"center-crop"`` (resize the short side to ``size / crop_pct``, then crop the centre,
            as timm and torchvision evaluate ImageNet models), ``"resize"`` (stretch to ``size``), or
            ``"letterbox"`` (keep the aspect ratio, pad with ``pad_value``; detectors).
        interpolation: PIL resampling filter name.
        crop_pct: fraction of the resized image kept by ``center-crop``.
        mean, std: per-channel normalisation applied after ``scale``.
        channel_order: ``"RGB"``; the runtime converts BGR inputs before this step.
        scale: multiplier from uint8 to float (1/255).
        pad_value: letterbox border value (uint8).
    """

    size: tuple[int, int] = (224, 224)
    resize: str = "center-crop"
    interpolation: str = "bilinear"
    crop_pct: float = 0.875
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    channel_order: str = "RGB"
    scale: float = 1.0 / 255.0
    pad_value: int = 114
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if self.resize not in RESIZE_MODES:
            raise BadInputError(f"unknown resize mode {self.resize!r}; expected one of {RESIZE_MODES}")
        if self.interpolation not in _PIL_INTERPOLATION:
            raise BadInputError(
                f"unknown interpolation {self.interpolation!r}; expected one of {sorted(_PIL_INTERPOLATION)}"
            )
        if self.channel_order != "RGB":
            raise BadInputError(f"channel_order must be 'RGB' in the spec, got {self.channel_order!r}")
        if not 0.0 < self.crop_pct <= 1.0:
            raise BadInputError(f"crop_pct must be in (0, 1], got {self.crop_pct}")
        h, w = (int(v) for v in self.size)
        if h <= 0 or w <= 0:
            raise BadInputError(f"size must be positive, got {self.size}")
        object.__setattr__(self, "size", (h, w))
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def resize_size(self) -> tuple[int, int]:
        """The size the short side is resized to before the centre crop (``center-crop`` mode)."""
        h, w = self.size
        return (math.floor(h / self.crop_pct), math.floor(w / self.crop_pct))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"] = list(self.size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        if not d["extra"]:
            d.pop("extra")
        return d

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PreprocessSpec:
        known = {f for f in cls.__dataclass_fields__}
        unknown = set(data) - known
        if unknown:
            raise BadInputError(f"unknown preprocess fields {sorted(unknown)}")
        kwargs = dict(data)
        if "size" in kwargs:
            size = kwargs["size"]
            kwargs["size"] = (int(size), int(size)) if isinstance(size, int) else tuple(size)
        for key in ("mean", "std"):
            if key in kwargs:
                kwargs[key] = tuple(kwargs[key])
        return cls(**kwargs)

    def with_size(self, size: int | Sequence[int]) -> PreprocessSpec:
        """A copy of this spec at another input size."""
        hw = (int(size), int(size)) if isinstance(size, int) else (int(size[0]), int(size[1]))
        return PreprocessSpec.from_dict({**self.to_dict(), "size": list(hw)})


@dataclass(frozen=True)
class LetterboxInfo:
    """How an original image maps into the letterboxed input: ``x_in = x_orig * scale + pad_x``."""

    scale: float
    pad_x: int
    pad_y: int
    orig_w: int
    orig_h: int


def load_image(
    source: ImageSource, *, bgr: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS, name: str | None = None
) -> Image.Image:
    """Decode any supported image source into an RGB PIL image.

    Args:
        source: a path, encoded bytes, a PIL image, or a numpy ``HxWx3`` / ``HxW`` uint8 array.
        bgr: the numpy array is BGR (OpenCV's order); ignored for encoded sources.
        max_pixels: refuse images with more pixels than this before decoding them (decompression bombs);
            ``None`` disables the check.
        name: what error messages call the image (a request's part, an upload's file name); default: its
            path, or "the image bytes". Bytes have no name of their own, and a message that cannot say
            which of several inputs failed does not help.

    Raises:
        BadInputError: the source cannot be decoded, or is too large.
    """
    if isinstance(source, Image.Image):
        return _check_pixels(source, max_pixels, name or "image").convert("RGB")
    if isinstance(source, np.ndarray):
        return _array_to_image(source, bgr)
    if isinstance(source, (bytes, bytearray)):
        return _open_encoded(io.BytesIO(bytes(source)), name or "the image bytes", max_pixels)
    if isinstance(source, (str, Path)):
        path = Path(source)
        if not path.is_file():
            raise BadInputError(f"image not found: {path}")
        with path.open("rb") as fh:
            return _open_encoded(io.BytesIO(fh.read()), name or str(path), max_pixels)
    raise BadInputError(f"unsupported image source type {type(source).__name__}")


def _check_pixels(image: Image.Image, max_pixels: int | None, where: str) -> Image.Image:
    w, h = image.size
    if max_pixels is not None and w * h > max_pixels:
        raise BadInputError(
            f"{where}: {w}x{h} = {w * h} pixels exceeds the limit of {max_pixels}",
            hint="resize the image before sending it, or raise the pixel limit",
        )
    return image


def _open_encoded(stream: io.BytesIO, where: str, max_pixels: int | None) -> Image.Image:
    try:
        image = Image.open(stream)
        _check_pixels(image, max_pixels, where)  # header only: nothing decoded yet
        image.load()
        return image.convert("RGB")
    except BadInputError:
        raise
    except UnidentifiedImageError as exc:
        raise BadInputError(f"{where}: cannot decode image: not in an image format Pillow reads "
                            "(JPEG, PNG, BMP, GIF, WebP, TIFF, PPM...)") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        # Pillow names the stream it read (``<_io.BytesIO object at 0x...>``), which means nothing to anyone.
        detail = re.sub(r"<_?io\.\w+ object at 0x[0-9a-fA-F]+>", "it", str(exc))
        raise BadInputError(f"{where}: cannot decode image ({detail})") from exc


def _array_to_image(array: np.ndarray, bgr: bool) -> Image.Image:
    if array.dtype != np.uint8:
        raise BadInputError(f"numpy images must be uint8 HxWx3, got dtype {array.dtype}")
    if array.ndim == 2:
        return Image.fromarray(array, mode="L").convert("RGB")
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise BadInputError(f"numpy images must be HxWx3 (or HxWx4), got shape {array.shape}")
    rgb = array[..., :3]
    if bgr:
        rgb = rgb[..., ::-1]
    return Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")


def resize_and_crop(image: Image.Image, spec: PreprocessSpec) -> tuple[Image.Image, LetterboxInfo | None]:
    """Geometric part of the spec: returns the image at ``spec.size`` (and letterbox mapping if any)."""
    h, w = spec.size
    resample = _PIL_INTERPOLATION[spec.interpolation]
    if spec.resize == "resize":
        return image.resize((w, h), resample), None
    if spec.resize == "letterbox":
        iw, ih = image.size
        scale = min(h / ih, w / iw)
        nw, nh = max(1, round(iw * scale)), max(1, round(ih * scale))
        canvas = Image.new("RGB", (w, h), (spec.pad_value,) * 3)
        pad_x, pad_y = (w - nw) // 2, (h - nh) // 2
        canvas.paste(image.resize((nw, nh), resample), (pad_x, pad_y))
        return canvas, LetterboxInfo(scale, pad_x, pad_y, iw, ih)
    # center-crop: resize the short side (torchvision Resize(int) semantics), then crop the centre.
    target_short = spec.resize_size[0] if h <= w else spec.resize_size[1]
    iw, ih = image.size
    if iw <= ih:
        nw, nh = target_short, int(target_short * ih / iw)
    else:
        nh, nw = target_short, int(target_short * iw / ih)
    image = image.resize((nw, nh), resample)
    if nh < h or nw < w:  # tiny inputs: stretch rather than pad, the model always gets its size
        image = image.resize((max(nw, w), max(nh, h)), resample)
        nw, nh = image.size
    top = int(round((nh - h) / 2.0))
    left = int(round((nw - w) / 2.0))
    return image.crop((left, top, left + w, top + h)), None


def normalize(image: Image.Image | np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Pixel part of the spec: HWC uint8 RGB -> CHW float32, scaled and normalised."""
    array = np.asarray(image, dtype=np.uint8)
    chw = array.transpose(2, 0, 1).astype(np.float32) * np.float32(spec.scale)
    mean = np.asarray(spec.mean, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec.std, dtype=np.float32).reshape(3, 1, 1)
    return (chw - mean) / std


def preprocess(
    source: ImageSource, spec: PreprocessSpec, *, bgr: bool = False, max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, LetterboxInfo | None]:
    """Decode, resize and normalise one image: returns ``(CHW float32, letterbox info or None)``."""
    image = load_image(source, bgr=bgr, max_pixels=max_pixels)
    resized, info = resize_and_crop(image, spec)
    return normalize(resized, spec), info


def preprocess_batch(
    sources: Sequence[ImageSource], spec: PreprocessSpec, *, bgr: bool = False
) -> tuple[np.ndarray, list[LetterboxInfo | None]]:
    """Preprocess several images into one contiguous ``NCHW`` float32 batch."""
    arrays, infos = [], []
    for source in sources:
        chw, info = preprocess(source, spec, bgr=bgr)
        arrays.append(chw)
        infos.append(info)
    if not arrays:
        h, w = spec.size
        return np.zeros((0, 3, h, w), dtype=np.float32), []
    return np.ascontiguousarray(np.stack(arrays)), infos
