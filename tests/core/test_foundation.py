"""The foundation: CLI group, exit codes, registry, weights, preprocessing spec, manifest."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgetl import __version__
from edgetl.cli.main import VERBS, cli


def test_version_and_help_list_every_verb() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0
    for verb in VERBS:
        assert verb in result.output


def test_help_does_not_import_torch() -> None:
    code = "import sys; from edgetl.cli.main import main; sys.argv=['edgetl','--help']\n" \
           "try:\n main()\nexcept SystemExit: pass\nassert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


def test_pretrained_lite0_recognises_real_photos() -> None:
    """The shipped ImageNet weights are right: a cat photo -> a cat class, a coffee cup -> espresso."""
    torch = pytest.importorskip("torch")
    skimage_data = pytest.importorskip("skimage.data")
    from timm.data import ImageNetInfo

    from edgetl.models import create, get_model_info
    from edgetl.preprocess import preprocess

    model = create("efficientnet_lite0").eval()
    assert model.edgetl_weights.startswith("package:")
    spec = get_model_info("efficientnet_lite0").preprocess_spec()
    names = ImageNetInfo()
    results = {}
    for photo in ("chelsea", "coffee"):
        x, _ = preprocess(getattr(skimage_data, photo)(), spec)
        with torch.no_grad():
            top = int(model(torch.from_numpy(x[None])).argmax())
        results[photo] = names.index_to_description(top)
    assert "cat" in results["chelsea"]
    assert results["coffee"] == "espresso"


def test_manifest_roundtrip_and_newer_version_refused(tmp_path) -> None:
    from edgetl.bundle import open_bundle
    from edgetl.bundle.manifest import Bundle
    from edgetl.errors import BundleError
    from edgetl.preprocess import PreprocessSpec

    bundle = Bundle.create(tmp_path, task="classify", name="m", labels=["a", "b"], input_name="input",
                           preprocess=PreprocessSpec(size=(32, 32)))
    (tmp_path / "model.onnx").write_bytes(b"x" * 10)
    bundle.add_artifact("model.onnx", kind="onnx", created_by="test")
    bundle.save()
    again = open_bundle(tmp_path)
    assert again.labels == ["a", "b"] and again.preprocess.size == (32, 32)
    (tmp_path / "model.onnx").write_bytes(b"y" * 10)
    with pytest.raises(BundleError, match="sha256"):
        open_bundle(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    manifest["schema_version"] = 99
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="newer"):
        open_bundle(tmp_path, verify=False)


def test_preprocess_center_crop_shapes_and_values() -> None:
    from edgetl.preprocess import PreprocessSpec, preprocess

    image = np.full((300, 400, 3), 255, dtype=np.uint8)
    spec = PreprocessSpec(size=(224, 224), mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    x, info = preprocess(image, spec)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32 and info is None
    assert np.allclose(x, 1.0)


def test_letterbox_maps_back() -> None:
    from edgetl.preprocess import PreprocessSpec, preprocess

    spec = PreprocessSpec(size=(320, 320), resize="letterbox")
    x, info = preprocess(np.zeros((100, 200, 3), dtype=np.uint8), spec)
    assert x.shape == (3, 320, 320)
    assert info.scale == pytest.approx(1.6) and info.pad_x == 0 and info.pad_y == 80
