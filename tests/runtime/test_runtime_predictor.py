"""Predictor: every input type, typed results, batching limits, threads, close()."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from bundle_factory import colour_images, make_bundle
from PIL import Image

import edgetl.runtime
from edgetl.errors import BadInputError
from edgetl.runtime import ClassificationResult, PredictionError


@pytest.fixture(scope="module")
def predictor(colour_bundle: Path):
    with edgetl.runtime.load(colour_bundle, precision="fp32") as p:
        yield p


def test_every_input_type_gives_the_same_result(predictor, colour_dir: Path) -> None:
    path = colour_dir / "green_0.png"
    rgb = np.asarray(Image.open(path).convert("RGB"))
    results = [
        predictor.predict(path),
        predictor.predict(str(path)),
        predictor.predict(path.read_bytes()),
        predictor.predict(Image.open(path)),
        predictor.predict(rgb),
        predictor.predict(np.ascontiguousarray(rgb[..., ::-1]), bgr=True),
    ]
    assert all(isinstance(r, ClassificationResult) for r in results)
    assert {r.label for r in results} == {"green"}
    assert max(r.score for r in results) - min(r.score for r in results) < 1e-6
    # The same array read as BGR swaps red and blue: the flag is honoured.
    red = np.asarray(Image.open(colour_dir / "red_0.png").convert("RGB"))
    assert predictor.predict(red, bgr=True).label == "blue"


def test_list_in_list_out_with_top_k(predictor, colour_dir: Path) -> None:
    paths = sorted(colour_dir.glob("*.png"))
    results = predictor.predict(paths, top_k=3)
    assert [r.label for r in results] == [p.name.split("_")[0] for p in paths]
    for r in results:
        assert len(r.top_k) == 3 and r.top_k[0] == (r.label, r.score)
        assert r.top_k[0][1] >= r.top_k[1][1] >= r.top_k[2][1]
        assert 0.0 < r.score <= 1.0
    assert len(predictor.predict(paths[0], top_k=99).top_k) == 4  # clipped to the number of classes
    assert results[0].to_dict()["top_k"][0]["label"] == results[0].label


def test_bad_inputs_raise_or_return_errors(predictor, colour_dir: Path, tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadInputError, match="cannot decode"):
        predictor.predict(tmp_path / "bad.png")
    with pytest.raises(BadInputError, match="uint8"):
        predictor.predict(np.zeros((8, 8, 3), dtype=np.float32))
    mixed = predictor.predict([colour_dir / "red_0.png", tmp_path / "bad.png", tmp_path / "gone.png"],
                              on_error="return")
    assert mixed[0].label == "red"
    assert isinstance(mixed[1], PredictionError) and "cannot decode" in mixed[1].error
    assert isinstance(mixed[2], PredictionError) and "not found" in mixed[2].error


def test_predict_batch_splits_to_the_model_limit(colour_bundle: Path, colour_dir: Path) -> None:
    from edgetl.preprocess import preprocess_batch

    with edgetl.runtime.load(colour_bundle, precision="fp32") as whole, \
            edgetl.runtime.load(colour_bundle, precision="fp32", max_batch=2) as small:
        x, _ = preprocess_batch(sorted(colour_dir.glob("*.png")), whole.spec)
        a, b = whole.predict_batch(x), small.predict_batch(x)
        assert small.max_batch == 2 and small.input_shape == [2, 3, 32, 32]
        assert a["logits"].shape == (12, 4)
        np.testing.assert_allclose(a["logits"], b["logits"], atol=1e-5)
        with pytest.raises(BadInputError, match="expected an N x 3 x 32 x 32"):
            whole.predict_batch(x[:, :, :16])


def test_static_batch_model_runs_one_at_a_time(tmp_path: Path) -> None:
    images = colour_images(tmp_path / "img", n_per_class=1)
    bundle = make_bundle(tmp_path / "static", images, int8=False, dynamic_batch=False)
    with edgetl.runtime.load(bundle) as p:
        assert p.max_batch == 1
        assert [r.label for r in p.predict(images)] == ["red", "green", "blue", "grey"]


def test_thread_safe_shared_predictor(colour_bundle: Path, colour_dir: Path) -> None:
    paths = sorted(colour_dir.glob("*.png"))
    with edgetl.runtime.load(colour_bundle) as p:
        expected = [(r.label, r.score) for r in p.predict(paths)]
        got: dict[int, list] = {}
        errors: list[BaseException] = []

        def work(i: int) -> None:
            try:
                out = []
                for _ in range(10):
                    out = [(r.label, r.score) for r in p.predict(paths[i % 3:] + paths[: i % 3])]
                got[i] = out[len(paths) - i % 3:] + out[: len(paths) - i % 3]
            except BaseException as exc:  # pragma: no cover - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors
    for out in got.values():
        assert [lab for lab, _ in out] == [lab for lab, _ in expected]
        np.testing.assert_allclose([s for _, s in out], [s for _, s in expected], atol=1e-6)


def test_close_is_idempotent_and_final(colour_bundle: Path, colour_dir: Path) -> None:
    p = edgetl.runtime.load(colour_bundle)
    p.close()
    p.close()
    with pytest.raises(BadInputError, match="closed"):
        p.predict(colour_dir / "red_0.png")
