"""``edgetl models``: every classifier and detector, from recorded facts, without importing torch."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgetl.cli.main import cli

ROOT = Path(__file__).resolve().parents[2]


def test_models_lists_detectors_without_importing_torch() -> None:
    code = ("import json, sys; from click.testing import CliRunner; from edgetl.cli.main import cli; "
            "r = CliRunner().invoke(cli, ['models', '--json']); "
            "heavy = sorted(m for m in ('torch', 'timm', 'onnx', 'onnxruntime') if m in sys.modules); "
            "print(json.dumps({'code': r.exit_code, 'heavy': heavy, 'doc': json.loads(r.stdout)}))")
    started = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    seconds = time.perf_counter() - started
    report = json.loads(out.stdout)
    assert report["code"] == 0 and report["heavy"] == []
    rows = {r["name"]: r for r in report["doc"]["models"]}
    assert rows["efficientnet_lite0"]["task"] == "classify" and rows["efficientnet_lite0"]["params_m"] == 4.65
    assert rows["yolo-lite0-n"]["task"] == "detect" and rows["yolo-lite0-n"]["backbone"] == "efficientnet_lite0"
    assert {"yolo-lite0-s", "yolo-mbv3-n", "yolo-mbv2-s"} <= set(rows)
    assert seconds < 10, f"listing took {seconds:.1f} s"  # 14 s when it built every model; well under 1 s now


def test_models_table_is_on_stdout_and_filters_by_pattern() -> None:
    everything = CliRunner().invoke(cli, ["models"])
    assert everything.exit_code == 0
    assert "efficientnet_lite0" in everything.stdout and "yolo-lite0-n" in everything.stdout
    assert "efficientnet_lite0" not in everything.stderr
    detectors = CliRunner().invoke(cli, ["models", "yolo-*"])
    assert "yolo-lite0-n" in detectors.stdout and "detect" in detectors.stdout
    assert "efficientnet_lite0 " not in detectors.stdout and "classify" not in detectors.stdout


@pytest.mark.slow
def test_recorded_parameter_counts_match_the_built_models() -> None:
    pytest.importorskip("torch")
    from edgetl.detect.model import build_detector
    from edgetl.models import get_model_info, list_models
    from edgetl.models.detectors import PARAMS_CLASSES, get_detector_info, list_detectors
    from edgetl.models.factory import timm

    for name in list_models():
        model = timm.create_model(get_model_info(name).timm_name, pretrained=False)
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert get_model_info(name).params_m == pytest.approx(count, abs=0.006), name
    for name in list_detectors():
        model = build_detector(name, num_classes=PARAMS_CLASSES, weights="none")
        count = sum(p.numel() for p in model.parameters()) / 1e6
        assert get_detector_info(name).params_m == pytest.approx(count, abs=0.006), name


def test_preprocessing_comes_from_timm_and_the_listing_size_matches_it() -> None:
    """The registry types no mean/std: the spec is timm's pretrained config; the size the torch-free listing
    shows is recorded and must agree with timm's."""
    pytest.importorskip("timm")
    import timm.data
    import timm.models

    from edgetl.models import get_model_info, list_models

    for name in list_models():
        info = get_model_info(name)
        cfg = timm.data.resolve_data_config({}, pretrained_cfg=timm.models.get_pretrained_cfg(info.pretrained_name)
                                            .to_dict())
        spec = info.preprocess_spec()
        assert spec.size == tuple(cfg["input_size"][1:]) == info.input_size, name
        assert (spec.mean, spec.std) == (tuple(cfg["mean"]), tuple(cfg["std"])), name
        assert (spec.interpolation, spec.crop_pct) == (cfg["interpolation"], cfg["crop_pct"]), name
        assert spec.resize == "center-crop" and info.preprocess_spec(96).size == (96, 96)
    lite0 = get_model_info("efficientnet_lite0").preprocess_spec()
    assert lite0.mean == (0.5, 0.5, 0.5) and lite0.crop_pct == 0.875 and lite0.interpolation == "bicubic"
