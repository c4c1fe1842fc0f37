"""The model registry and every weight source: package, state dict file, checkpoint, none, missing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli
from edgetl.errors import BadInputError, EnvironmentMissingError
from edgetl.models import create, get_model_info, list_models

torch = pytest.importorskip("torch")


@pytest.fixture
def no_weight_caches(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Point the Hugging Face and torch hub caches at empty folders (as on a fresh offline machine)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    hub = pytest.importorskip("huggingface_hub.constants")
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hf"))


def test_registry_names_patterns_and_unknown_model_hint() -> None:
    names = list_models()
    for expected in ("efficientnet_lite0", "mobilenetv3_large_100", "mobilenetv2_100", "resnet18"):
        assert expected in names
    assert list_models("mobilenet*") == ["mobilenetv2_100", "mobilenetv3_large_100", "mobilenetv3_small_100"]
    assert get_model_info("efficientnet_lite0").preprocess_spec(96).size == (96, 96)
    with pytest.raises(BadInputError, match=r"did you mean .*efficientnet_lite0"):
        get_model_info("efficientnet_lite")


@pytest.fixture(scope="module")
def lite0() -> object:
    return create("efficientnet_lite0", num_classes=10)


def test_state_dict_file_and_checkpoint_as_weights(tmp_path: Path, lite0: object, tiny_checkpoint: Path) -> None:
    torch.manual_seed(1)
    for p in lite0.parameters():
        p.data.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "sd.pth"
    torch.save(lite0.state_dict(), path)
    loaded = create("efficientnet_lite0", weights=path, num_classes=10)
    assert loaded.edgetl_weights == f"file:{path}"
    for key, value in lite0.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    # an edgetl checkpoint: backbone and 10-class head both carried over
    from edgetl.train.checkpoint import load_checkpoint

    raw, _ = load_checkpoint(tiny_checkpoint)
    from_ckpt = create("efficientnet_lite0", weights=tiny_checkpoint, num_classes=10)
    assert torch.equal(from_ckpt.classifier.weight, raw["state_dict"]["classifier.weight"])
    # a different class count keeps the backbone and drops the head
    three = create("efficientnet_lite0", weights=tiny_checkpoint, num_classes=3)
    assert torch.equal(three.conv_stem.weight, raw["state_dict"]["conv_stem.weight"])
    assert three.classifier.weight.shape == (3, 1280)


def test_weights_none_is_random_and_wrong_file_is_bad_input(tmp_path: Path, lite0: object) -> None:
    scratch = create("efficientnet_lite0", weights="none", num_classes=10)
    assert scratch.edgetl_weights.startswith("none")
    assert not torch.equal(scratch.conv_stem.weight, create("efficientnet_lite0").conv_stem.weight)
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a torch file")
    with pytest.raises(BadInputError, match="not a loadable weights file"):
        create("efficientnet_lite0", weights=junk)
    other = tmp_path / "resnet.pth"
    torch.save(create("resnet18", weights="none").state_dict(), other)
    with pytest.raises(BadInputError, match=r"has shape|another architecture"):
        create("efficientnet_lite0", weights=other)


def test_no_offline_weights_says_how_to_provide_them(no_weight_caches: None) -> None:
    with pytest.raises(EnvironmentMissingError) as info:
        create("mobilenetv3_large_100")
    text = str(info.value)
    assert "never downloads" in text and "--weights PATH" in text and "HF_HOME" in text


def test_train_cli_exits_3_without_offline_weights(no_weight_caches: None, digits_dir: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", "classify", "--data", str(digits_dir), "--model",
                                      "mobilenetv3_large_100", "--out", str(tmp_path / "run"), "--quiet"])
    assert result.exit_code == 3, result.output
    assert "no pretrained weights for mobilenetv3_large_100" in result.output


def test_models_cli_lists_the_registry(no_weight_caches: None) -> None:
    result = CliRunner().invoke(cli, ["models", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)["models"]}
    assert rows["efficientnet_lite0"]["weights_offline"].startswith("package:")
    assert rows["efficientnet_lite0"]["params_m"] == pytest.approx(4.65, abs=0.01)
    assert rows["efficientnet_lite0"]["input_size"] == [224, 224]
    assert rows["mobilenetv3_large_100"]["weights_offline"] is None
    table = CliRunner().invoke(cli, ["models", "mobilenet*"])
    assert table.exit_code == 0 and "mobilenetv3_small_100" in table.output and "resnet18" not in table.output
