"""The LiteRT inference engine: same probabilities as TensorFlow, a conversion cache, fallbacks."""

import json
import os
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.errors import DataError
from wbc.models import lite
from wbc.models.runs import load_run
from wbc.workflows.predict import Predictor

from conftest import make_class_folders, make_run


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    return load_run(make_run(tmp_path_factory.mktemp("lite") / "run"))


def batch(n, shape, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, *shape, 3), dtype=np.uint8)


def test_litert_gives_tensorflows_probabilities_for_any_batch_size(run):
    fast = Predictor.from_run(run, "litert")
    slow = Predictor.from_run(run, "tensorflow")
    assert (fast.engine, slow.engine) == ("litert", "tensorflow")
    for n in (1, 5, 1, 64, 3):  # the interpreter is resized whenever the batch size changes
        images = batch(n, run.spec.image_size, seed=n)
        probs = fast(images)
        assert probs.shape == (n, len(run.classes))
        np.testing.assert_allclose(probs, slow(images), atol=1e-5)
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert fast(batch(0, run.spec.image_size)).shape == (0, len(run.classes))


@pytest.mark.parametrize("dropout", ["2_v2", "before_dense"])
def test_models_with_dropout_convert(tmp_path, dropout):
    model_run = load_run(make_run(tmp_path / "run", [f"model.dropout={dropout}"]))
    images = batch(2, model_run.spec.image_size)
    np.testing.assert_allclose(
        Predictor.from_run(model_run, "litert")(images),
        Predictor.from_run(model_run, "tensorflow")(images),
        atol=1e-5,
    )


def test_conversion_is_cached_by_model_content(tmp_path, monkeypatch):
    monkeypatch.setenv("WBC_CACHE_DIR", str(tmp_path / "cache"))
    first = load_run(make_run(tmp_path / "a", seed=1))
    Predictor.from_run(first, "litert")
    entries = list((tmp_path / "cache" / "litert").glob("*.tflite"))
    assert len(entries) == 1

    def no_conversion(model):
        raise AssertionError("converted again although cached")

    monkeypatch.setattr(lite, "convert", no_conversion)
    again = Predictor.from_run(first, "litert")  # read back from the cache
    images = batch(2, first.spec.image_size)
    np.testing.assert_allclose(
        again(images), Predictor.from_run(first, "tensorflow")(images), atol=1e-5
    )
    other = load_run(make_run(tmp_path / "b", seed=2))  # other weights: another key
    with pytest.raises(DataError, match="converted again"):
        Predictor.from_run(other, "litert")


def test_an_unwritable_cache_is_skipped(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would go")
    monkeypatch.setenv("WBC_CACHE_DIR", str(blocker))
    model_run = load_run(make_run(tmp_path / "run"))
    predictor = Predictor.from_run(model_run, "litert")
    assert predictor.engine == "litert"
    assert predictor(batch(1, model_run.spec.image_size)).shape == (1, 4)


def test_auto_falls_back_to_tensorflow_and_says_why(run, monkeypatch):
    monkeypatch.setitem(sys.modules, "ai_edge_litert", None)  # as if it were not installed
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    predictor = Predictor.from_run(run, "auto")
    assert predictor.engine == "tensorflow"
    assert "LiteRT unavailable" in predictor.fallback
    with pytest.raises(DataError, match="cannot run on LiteRT"):
        Predictor.from_run(run, "litert")


def test_cli_engines_agree_and_json_stays_clean(run, tmp_path):
    images = make_class_folders(tmp_path / "images", {"NEUTROPHIL": 2, "MONOCYTE": 1})
    outputs = {}
    for engine in ("litert", "tensorflow"):
        result = CliRunner().invoke(
            cli,
            [
                "predict",
                str(images),
                "--model",
                str(run.model_path),
                "--format",
                "json",
                "--engine",
                engine,
            ],
        )
        assert result.exit_code == 0, result.output
        outputs[engine] = json.loads(result.stdout)  # no converter output mixed into stdout
    rows = {engine: out["predictions"] for engine, out in outputs.items()}
    assert [r["class"] for r in rows["litert"]] == [r["class"] for r in rows["tensorflow"]]
    for a, b in zip(rows["litert"], rows["tensorflow"]):
        assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_a_fresh_process_prints_no_runtime_chatter(run, tmp_path):
    # TensorFlow's converter and LiteRT's XNNPACK delegate log from C++ straight to fd 2 (and
    # Keras prints the export's signature on stdout): none of it may reach the user.
    import subprocess

    images = make_class_folders(tmp_path / "images", {"EOSINOPHIL": 2})
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "wbc",
            "predict",
            str(images),
            "--model",
            str(run.model_path),
            "--format",
            "json",
            "--engine",
            "litert",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "WBC_CACHE_DIR": str(tmp_path / "cache")},
    )
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["predictions"]) == 2
    assert "XNNPACK" not in done.stderr and "Saved artifact" not in done.stderr
    assert done.stderr.strip() == ""


def test_the_cache_keeps_the_most_recently_used_entries(tmp_path):
    folder = tmp_path / "litert"
    folder.mkdir()
    for index in range(5):
        entry = folder / f"{index}.tflite"
        entry.write_bytes(b"x")
        os.utime(entry, (1000 + index, 1000 + index))
    lite._prune(folder, keep=3)
    assert sorted(p.name for p in folder.iterdir()) == ["2.tflite", "3.tflite", "4.tflite"]


def test_evaluate_converts_without_caching(run, tmp_path, monkeypatch):
    from wbc.workflows.evaluate import evaluate

    monkeypatch.setenv("WBC_CACHE_DIR", str(tmp_path / "cache"))
    images = make_class_folders(tmp_path / "images", {"NEUTROPHIL": 2, "MONOCYTE": 2})
    metrics = evaluate(run.model_path, images)
    assert metrics["n_images"] == 4
    assert not (tmp_path / "cache").exists()
