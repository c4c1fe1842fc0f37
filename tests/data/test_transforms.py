"""Training/eval transforms come from the one preprocessing spec; the torchvision eval mirror equals it."""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
skimage_data = pytest.importorskip("skimage.data")

from PIL import Image  # noqa: E402

from edgetl.data.transforms import SpecTransform, eval_transform, train_transform  # noqa: E402
from edgetl.models import get_model_info  # noqa: E402
from edgetl.preprocess import PreprocessSpec, preprocess  # noqa: E402

PHOTOS = ("chelsea", "coffee", "astronaut")


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize(
    "spec",
    [
        get_model_info("efficientnet_lite0").preprocess_spec(),  # center-crop, bicubic, 0.875
        get_model_info("resnet18").preprocess_spec(96),  # center-crop, crop_pct 0.95, ImageNet mean/std
        PreprocessSpec(size=(64, 80), resize="resize", interpolation="bilinear"),
        PreprocessSpec(size=(80, 80), resize="center-crop", interpolation="bilinear", crop_pct=1.0),
    ],
    ids=["lite0-224-center-crop", "resnet-96-center-crop", "resize-64x80", "center-crop-pct1-bilinear"],
)
def test_torchvision_eval_transform_matches_preprocess(photo: str, spec: PreprocessSpec) -> None:
    array = getattr(skimage_data, photo)()
    expected, _ = preprocess(array, spec)
    got = eval_transform(spec)(Image.fromarray(array).convert("RGB")).numpy()
    assert got.shape == expected.shape == (3, *spec.size)
    assert float(np.abs(got - expected).max()) <= 1e-5


def test_spec_transform_is_preprocess() -> None:
    spec = get_model_info("efficientnet_lite0").preprocess_spec(64)
    array = skimage_data.chelsea()
    expected, _ = preprocess(array, spec)
    assert np.array_equal(SpecTransform(spec)(Image.fromarray(array)).numpy(), expected)


def test_train_transform_augments_at_spec_size_and_flip_is_switchable() -> None:
    spec = PreprocessSpec(size=(48, 48), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    image = Image.fromarray(skimage_data.coffee())
    torch.manual_seed(0)
    a = train_transform(spec)(image)
    b = train_transform(spec)(image)
    assert a.shape == (3, 48, 48) and not torch.equal(a, b)
    names = [type(t).__name__ for t in train_transform(spec, hflip=False).transforms]
    assert "RandomHorizontalFlip" not in names and "RandomResizedCrop" in names
    assert "RandomHorizontalFlip" in [type(t).__name__ for t in train_transform(spec).transforms]
    plain = train_transform(spec, augment=False)(image).numpy()
    assert np.abs(plain - preprocess(np.asarray(image), spec)[0]).max() <= 1e-5
