"""Shared fixtures: small generated data and a tiny real checkpoint; skip rules for gpu/tensorrt tests."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def _has_cuda() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    has_trt = importlib.util.find_spec("tensorrt") is not None
    has_cuda = None
    for item in items:
        if "tensorrt" in item.keywords and not has_trt:
            item.add_marker(pytest.mark.skip(reason="needs TensorRT: `import tensorrt` fails on this machine"))
        if "gpu" in item.keywords:
            if has_cuda is None:
                has_cuda = _has_cuda()
            if not has_cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU: torch.cuda.is_available() is False"))


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The digits sample, small: 12 train and 6 val images per class, 48x48."""
    from edgetl.data.samples import write_digits

    out = tmp_path_factory.mktemp("data") / "digits"
    write_digits(out, train_per_class=12, val_per_class=6, size=48, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> Path:
    """A real EfficientNet-Lite0 checkpoint (ImageNet backbone, 10-class head fitted by a few steps) at 64 px.

    Built directly with the checkpoint API so that export/quantize/runtime tests do not depend on the
    training loop.
    """
    import torch

    from edgetl.data import load_classification_data
    from edgetl.models import create, get_model_info
    from edgetl.preprocess import preprocess_batch
    from edgetl.train.checkpoint import CheckpointMeta, save_checkpoint

    torch.manual_seed(0)
    data = load_classification_data(digits_dir)
    spec = get_model_info("efficientnet_lite0").preprocess_spec(64)
    model = create("efficientnet_lite0", num_classes=len(data.classes)).eval()
    x, _ = preprocess_batch([s.path for s in data.train], spec)
    y = torch.tensor([s.label for s in data.train])
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(torch.from_numpy(x)), pre_logits=True)
    head = model.get_classifier()
    optim = torch.optim.Adam(head.parameters(), lr=1e-2)
    for _ in range(60):
        optim.zero_grad()
        torch.nn.functional.cross_entropy(head(feats), y).backward()
        optim.step()
    meta = CheckpointMeta(
        task="classify", model="efficientnet_lite0", labels=data.classes, preprocess=spec,
        train_config={"strategy": "linear-probe", "fixture": True},
    )
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pt"
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="session")
def fp32_bundle(tiny_checkpoint: Path, digits_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny checkpoint exported once per session (export, quantize and validate tests).

    Read-only: tests that change a bundle take `bundle_copy`.
    """
    from edgetl.export import export_checkpoint

    out = tmp_path_factory.mktemp("exported") / "bundle"
    export_checkpoint(tiny_checkpoint, out, parity_data=digits_dir, golden=4)
    return out


@pytest.fixture
def bundle_copy(fp32_bundle: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(fp32_bundle, tmp_path / "bundle"))


@pytest.fixture(scope="session")
def colour_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Colour images for the hand-built colour classifier (tests/bundle_factory.py)."""
    from bundle_factory import colour_images

    out = tmp_path_factory.mktemp("colours")
    colour_images(out)
    return out


@pytest.fixture(scope="session")
def colour_bundle(tmp_path_factory: pytest.TempPathFactory, colour_dir: Path) -> Path:
    """Read-only: fp32 + validated int8 ONNX, golden samples. Copy it before changing anything."""
    from bundle_factory import make_bundle

    return make_bundle(tmp_path_factory.mktemp("bundle") / "colours", sorted(colour_dir.glob("*.png")))
