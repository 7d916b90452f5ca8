"""Bad images through wbc predict and wbc evaluate, and bad model files through --model."""

from __future__ import annotations

import json
import zipfile

import pytest

from tests.conftest import CLASSES, make_class_folders, make_run
from tests.robustness import corpus
from tests.robustness.helpers import clean_error, run, tree_hash


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("runs") / "run")


@pytest.fixture(scope="module")
def good_image(tmp_path_factory):
    folder = make_class_folders(tmp_path_factory.mktemp("good"), {"NEUTROPHIL": 1})
    return next(folder.rglob("*.jpg"))


@pytest.mark.parametrize("case", corpus.IMAGE_CASES, ids=lambda c: c.name)
def test_predict_reports_each_bad_image_and_goes_on(model, good_image, tmp_path, case):
    bad = tmp_path / "input" / "bad.jpg"
    bad.parent.mkdir()
    bad.write_bytes(case.make())
    before = tree_hash(bad.parent)
    outcome = run(["predict", good_image, bad, "--model", model, "--format", "json"])
    assert not outcome.traceback, outcome.output
    assert outcome.exit_code == (0 if case.readable else 1), outcome.output
    rows = json.loads(outcome.stdout)["predictions"]
    assert len(rows) == 2 and rows[0]["class"] in CLASSES
    if case.readable:
        assert rows[1]["class"] in CLASSES
    else:
        assert case.reason in rows[1]["error"]
    assert tree_hash(bad.parent) == before


def test_evaluate_skips_bad_images_and_lists_them(model, tmp_path):
    data = make_class_folders(tmp_path / "data", {c: 2 for c in CLASSES})
    for case in corpus.IMAGE_CASES:
        (data / "NEUTROPHIL" / f"bad-{case.name}.jpg").write_bytes(case.make())
    outcome = run(["evaluate", "--model", model, "--data", data, "--format", "json"])
    assert outcome.exit_code == 0 and not outcome.traceback, outcome.output
    metrics = json.loads(outcome.stdout)
    unreadable = [c for c in corpus.IMAGE_CASES if not c.readable]
    assert len(metrics["errors"]) == len(unreadable)
    assert metrics["n_images"] == 8 + len(corpus.IMAGE_CASES) - len(unreadable)


def lambda_model(path):
    import keras

    inputs = keras.Input((40, 56, 3))
    outputs = keras.layers.Dense(4, activation="softmax")(
        keras.layers.Flatten()(keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    )
    keras.Model(inputs, outputs).save(path)


@pytest.mark.parametrize("kind", ["not-a-model", "empty", "truncated-zip", "lambda", "missing"])
def test_bad_model_files_are_one_line_errors(model, good_image, tmp_path, kind):
    path = tmp_path / "run" / "model.keras"
    path.parent.mkdir()
    for name in ("config.yaml", "classes.json"):
        (path.parent / name).write_bytes((model.parent / name).read_bytes())
    if kind == "not-a-model":
        path.write_text("this is a text file, not a model")
    elif kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated-zip":
        path.write_bytes(model.read_bytes()[:200])
    elif kind == "lambda":
        lambda_model(path)
    for command in (
        ["predict", good_image],
        ["evaluate", "--data", good_image.parent.parent],
        ["count", good_image.parent],
        ["explain", good_image, "-o", tmp_path / "x.png"],
    ):
        outcome = run([*command, "--model", path])
        assert clean_error(outcome, "model.keras"), (command, outcome.output)
        if kind == "lambda":
            assert "Lambda" in outcome.output or "code" in outcome.output
    assert zipfile.is_zipfile(path) == (kind == "lambda")


def features_config() -> str:
    return "model:\n  family: features\ncrop:\n  mode: detect\n"


def skops_file(path, kind):
    """A bad ``model.skops`` of one kind: foreign code, a pickle under the name, garbage."""
    import pickle

    import numpy as np
    import skops.io as sio
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    if kind == "foreign-function":  # skops itself trusts every numpy ufunc and sklearn class
        path.write_bytes(sio.dumps(Pipeline([("f", FunctionTransformer(np.exp))])))
    elif kind == "pickle":
        path.write_bytes(pickle.dumps({"not": "skops"}))
    elif kind == "tampered-schema":
        sio_bytes = sio.dumps(Pipeline([("f", FunctionTransformer(np.exp))]))
        import io

        with zipfile.ZipFile(io.BytesIO(sio_bytes)) as source, zipfile.ZipFile(path, "w") as target:
            for item in source.infolist():
                data = source.read(item)
                if item.filename == "schema.json":
                    data = data.replace(b"FunctionTransformer", b"os.system")
                target.writestr(item, data)
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("kind", ["foreign-function", "pickle", "tampered-schema", "empty"])
def test_bad_skops_files_are_one_line_errors(good_image, tmp_path, kind):
    path = tmp_path / "run" / "model.skops"
    path.parent.mkdir()
    (path.parent / "config.yaml").write_text(features_config())
    (path.parent / "classes.json").write_text(json.dumps(list(CLASSES)))
    skops_file(path, kind)
    for command in (
        ["predict", good_image],
        ["evaluate", "--data", good_image.parent.parent],
        ["count", good_image.parent],
        ["explain", good_image, "-o", tmp_path / "x.png"],
    ):
        outcome = run([*command, "--model", path])
        assert clean_error(outcome, "model.skops"), (command, outcome.output)
        assert (
            "refusing to load" in outcome.output
            or "not a valid .skops" in outcome.output
            or "empty model file" in outcome.output
        )
