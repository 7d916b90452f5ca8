"""wbc predict / count / explain and wbc.models.runs, on a tiny untrained run folder made here."""

from __future__ import annotations

import csv
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.core.errors import ModelError

from conftest import CLASSES, make_class_folders, make_run, synthetic_smear

IMAGE_SIZE = (40, 56)


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    return make_run(tmp_path_factory.mktemp("runs") / "20250101-000000-small")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    """10 small smears in class folders (48x64 JPEGs) plus one PNG."""
    root = make_class_folders(
        tmp_path_factory.mktemp("images"),
        {"NEUTROPHIL": 3, "EOSINOPHIL": 3, "LYMPHOCYTE": 2, "MONOCYTE": 1},
    )
    array, _ = synthetic_smear("MONOCYTE", np.random.default_rng(7), (48, 64))
    Image.fromarray(array).save(root / "MONOCYTE" / "extra.PNG")
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root


@pytest.fixture
def bad_folder(tmp_path, images) -> Path:
    """Two good images and one of each bad kind: zero bytes, not an image, truncated JPEG."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = sorted((images / "NEUTROPHIL").glob("*.jpg"))[:2]
    for path in good:
        (folder / path.name).write_bytes(path.read_bytes())
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("hello, I am not a JPEG\n")
    data = good[0].read_bytes()
    (folder / "truncated.jpg").write_bytes(data[: len(data) // 2])
    return folder


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_predict_json_schema_probabilities_and_top(model_path, images):
    result = invoke("predict", images, "--model", model_path, "--format", "json", "--top", 2)
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # stdout holds nothing but the JSON
    assert document["classes"] == list(CLASSES)
    assert document["images"] == 10 and document["failed"] == 0
    rows = document["predictions"]
    assert len(rows) == 10
    assert any(row["file"].endswith("extra.PNG") for row in rows)
    for row in rows:
        assert set(row) == {
            "file",
            "class",
            "probability",
            "confidence",
            "top",
            "probabilities",
            "error",
        }  # no domain.json: no stain columns
        assert row["confidence"] == row["probability"]
        assert row["error"] is None
        assert row["class"] in CLASSES
        assert sum(row["probabilities"].values()) == pytest.approx(1.0, abs=1e-4)
        assert len(row["top"]) == 2
        assert row["top"][0]["class"] == row["class"]
        assert row["top"][0]["probability"] == row["probability"]
        assert row["top"][0]["probability"] >= row["top"][1]["probability"]
        assert row["probability"] == max(row["probabilities"].values())


def test_predict_csv_and_output_file(model_path, images, tmp_path):
    out = tmp_path / "predictions.csv"
    result = invoke(
        "predict",
        images / "NEUTROPHIL",
        images / "MONOCYTE",
        "--model",
        model_path,
        "--format",
        "csv",
        "--output",
        out,
        "--top",
        4,
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == 5
    for row in rows:
        assert row["class"] in CLASSES and row["error"] == ""
        total = sum(float(row[f"top{i}_probability"]) for i in range(1, 5))
        assert total == pytest.approx(1.0, abs=1e-4)
        assert row["top1_class"] == row["class"]


def test_predict_table_single_image(model_path, images):
    image = sorted((images / "EOSINOPHIL").glob("*.jpg"))[0]
    result = invoke("predict", image, "--model", model_path)
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert lines[0].split()[:3] == ["file", "class", "prob"]
    assert len(lines) == 2 and str(image) in lines[1]


def test_predict_bad_files_give_error_rows_and_exit_1(model_path, bad_folder):
    missing = bad_folder / "missing.jpg"
    result = invoke("predict", bad_folder, missing, "--model", model_path, "--format", "json")
    assert result.exit_code == 1
    rows = {Path(r["file"]).name: r for r in json.loads(result.stdout)["predictions"]}
    assert len(rows) == 6
    assert "empty" in rows["empty.jpg"]["error"]
    assert "not an image" in rows["text.jpg"]["error"]
    assert "truncated" in rows["truncated.jpg"]["error"]
    assert "not found" in rows["missing.jpg"]["error"]
    good = [r for r in rows.values() if r["error"] is None]
    assert len(good) == 2 and all(r["class"] in CLASSES for r in good)
    assert "4 of 6 images could not be classified" in result.stderr
    assert "Traceback" not in result.output


def test_missing_model_is_one_line_error(tmp_path, images):
    result = invoke("predict", images, "--model", tmp_path / "nope" / "model.keras")
    assert result.exit_code != 0
    assert result.stdout == ""
    assert result.stderr.strip().count("\n") == 0
    assert "model file not found" in result.stderr and "Traceback" not in result.output


def test_no_runs_is_one_line_error(tmp_path, images, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = invoke("predict", images)
    assert result.exit_code != 0
    assert result.stderr.strip() == (
        "Error: no trained model found under runs/; run `wbc train` or pass --model"
    )


def test_invalid_model_file(tmp_path):
    from wbc.models.runs import load_run

    run = tmp_path / "run"
    run.mkdir()
    (run / "model.keras").write_bytes(b"garbage, not a zip")
    with pytest.raises(ModelError, match=r"model\.keras: not a valid \.keras model file"):
        load_run(run / "model.keras")


def test_lambda_model_is_refused(tmp_path):
    import keras

    from wbc.models.runs import load_run

    inputs = keras.Input((*IMAGE_SIZE, 3))
    outputs = keras.layers.Dense(4, activation="softmax")(
        keras.layers.GlobalAveragePooling2D()(keras.layers.Lambda(lambda x: x * 2.0)(inputs))
    )
    run = tmp_path / "evil"
    make_run(run)  # config.yaml and classes.json, then replace the model
    keras.Model(inputs, outputs).save(run / "model.keras")
    with pytest.raises(ModelError) as info:
        load_run(run / "model.keras")
    message = str(info.value)
    assert message.startswith(str(run / "model.keras"))
    assert "contains a Lambda layer (arbitrary code); refusing to load it" in message
    assert "\n" not in message
    result = invoke("predict", run / "model.keras", "--model", run / "model.keras")
    assert result.exit_code != 0 and "refusing to load it" in result.stderr


def test_latest_model_picks_newest_run(tmp_path):
    from wbc.models.runs import latest_model

    runs = tmp_path / "runs"
    for name, age in [
        ("20250101-000000-small", 300),
        ("20250301-000000-full", 100),
        ("20250201-000000-medium", 200),
    ]:
        (runs / name).mkdir(parents=True)
        model = runs / name / "model.keras"
        model.write_bytes(b"x")
        stamp = time.time() - age
        os.utime(model, (stamp, stamp))
    (runs / "20250401-000000-killed").mkdir()  # no model.keras yet: skipped
    assert latest_model(runs) == runs / "20250301-000000-full" / "model.keras"
    with pytest.raises(ModelError, match="no trained model found under"):
        latest_model(tmp_path / "empty")


def test_count_totals_percentages_and_plot(model_path, images, tmp_path):
    plot = tmp_path / "differential.png"
    result = invoke("count", images, "--model", model_path, "--format", "json", "--plot", plot)
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["images"] == 10 and summary["per"] == "image"
    assert sum(summary["counts"].values()) == summary["cells"] == 10
    assert sum(summary["percent"].values()) == pytest.approx(100.0, abs=1e-9)
    assert set(summary["counts"]) == set(CLASSES)
    with Image.open(plot) as picture:
        assert picture.format == "PNG" and picture.size[0] > 100
    table = invoke("count", images, "--model", model_path)
    assert table.exit_code == 0
    assert "total" in table.stdout and "100.0%" in table.stdout


def test_count_reports_bad_files(model_path, bad_folder):
    result = invoke("count", bad_folder, "--model", model_path, "--format", "json")
    assert result.exit_code == 1
    summary = json.loads(result.stdout)
    assert summary["cells"] == 2 and len(summary["failed"]) == 3


def test_explain_writes_png_of_image_size(model_path, tmp_path):
    array, _ = synthetic_smear("EOSINOPHIL", np.random.default_rng(3), (60, 90))
    image = tmp_path / "cell.jpg"
    Image.fromarray(array).save(image)
    out = tmp_path / "cam.png"
    result = invoke("explain", image, "--model", model_path, "--output", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.split(":")[0] == str(image)
    with Image.open(out) as picture:
        assert picture.format == "PNG" and picture.size == (90, 60)


def test_grad_cam_highlights_something(model_path):
    from wbc.models.keras_family import grad_cam
    from wbc.models.runs import load_run

    run = load_run(model_path)
    array, _ = synthetic_smear("MONOCYTE", np.random.default_rng(1), IMAGE_SIZE)
    cam, probs = grad_cam(run.model.model, array[None])
    assert cam.ndim == 2 and 0.0 <= cam.min() and cam.max() <= 1.0
    assert probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_predictor_matches_model_predict(model_path, images):
    from wbc.imaging.preprocess import scale
    from wbc.models.runs import load_run
    from wbc.workflows.predict import Predictor, load_input

    run = load_run(model_path)
    files = sorted((images / "NEUTROPHIL").glob("*.jpg"))
    batch = np.stack([load_input(f, run.spec) for f in files])
    expected = run.model.model.predict(scale(batch), verbose=0)
    np.testing.assert_allclose(Predictor.from_run(run)(batch), expected, atol=1e-5)


def test_percentages_add_up_to_100():
    from wbc.workflows.count import percentages

    assert percentages([1, 1, 1]) == [33.34, 33.33, 33.33]
    assert sum(percentages([3, 7, 0, 11])) == pytest.approx(100.0)
    assert percentages([0, 0]) == [0.0, 0.0]


def test_find_images_walks_folders_without_following_symlink_loops(tmp_path):
    from wbc.workflows.predict import find_images

    root = tmp_path / "smears"
    (root / "sub").mkdir(parents=True)
    for name in ["a.JPG", "b.tiff", "sub/c.png", "sub/d.bmp", "sub/e.Jpeg", "skip.txt"]:
        (root / name).write_bytes(b"x")
    os.symlink(root, root / "sub" / "loop")  # a symlink loop back to the top
    found = find_images([root, root / "a.JPG", tmp_path / "missing.jpg"])
    names = [p.name for p in found]
    assert sorted(names) == ["a.JPG", "b.tiff", "c.png", "d.bmp", "e.Jpeg", "missing.jpg"]


def smear_with_cells(centres, size=(240, 320), radius=22, seed=0) -> np.ndarray:
    """A pink smear with one purple round 'WBC' nucleus at each (x, y) centre."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.clip(
        np.full((height, width, 3), (228, 190, 200), np.float32)
        + rng.normal(0, 4, (height, width, 3)),
        0,
        255,
    ).astype(np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for cx, cy in centres:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = (95, 40, 140)
    return image


@pytest.fixture(scope="module")
def detect_model(tmp_path_factory) -> Path:
    return make_run(
        tmp_path_factory.mktemp("runs") / "20250102-000000-small",
        overrides=["crop.mode=detect", "crop.size=64"],
    )


def test_count_with_detector_counts_every_cell(detect_model, tmp_path):
    from wbc.data.cells import detect_cells

    folder = tmp_path / "sample"
    folder.mkdir()
    three = smear_with_cells([(60, 60), (240, 70), (160, 180)])
    assert len(detect_cells(three)) == 3
    Image.fromarray(three).save(folder / "three.png")
    Image.fromarray(smear_with_cells([(100, 120)], seed=1)).save(folder / "one.png")
    Image.fromarray(smear_with_cells([], seed=2)).save(folder / "none.png")
    result = invoke("count", folder, "--model", detect_model, "--format", "json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["per"] == "cell" and summary["images"] == 3
    assert summary["cells"] == sum(summary["counts"].values()) == 4
    assert summary["no_cells"] == [str(folder / "none.png")]
    assert sum(summary["percent"].values()) == pytest.approx(100.0)
    # adapting on the sample reads every cell of every smear again, each to its own image
    # (the study's CNN has no BatchNorm to adapt, so the counts stay)
    adapted = invoke(
        "count", folder, "--model", detect_model, "--format", "json", "--adapt", "always"
    )
    again = json.loads(adapted.stdout)
    assert again["adapted"]["cells"] == 4 and again["adapted"]["images"] == 2
    assert again["adapted"]["parts"][0]["method"] == "skipped"
    assert again["counts"] == summary["counts"]

    # predict: one row per image (the main cell), cut from the whole smear
    rows = json.loads(
        invoke("predict", folder, "--model", detect_model, "--format", "json").stdout
    )["predictions"]
    assert [r["error"] for r in rows] == [None, None, None]


def test_model_inputs_crop_like_the_crop_stage(detect_model):
    from wbc.data.cells import crop_cells, crop_square, reframe_box
    from wbc.imaging.preprocess import resize
    from wbc.models.runs import load_run
    from wbc.workflows.predict import model_inputs

    run = load_run(detect_model)
    rgb = smear_with_cells([(200, 100)])
    (cell,) = model_inputs(rgb, run.spec, run.crop_size)
    (expected,) = crop_cells(rgb, "detect", run.spec.crop_padding, run.crop_size)
    np.testing.assert_array_equal(cell.pixels, resize(expected.image, run.spec.image_size))
    assert cell.box[2] - cell.box[0] == cell.box[3] - cell.box[1]  # a square region
    # An image that already is a (square) crop framed about as wbc frames is only resized,
    # unless told it is a smear.
    x0, y0, x1, y1 = cell.box
    tight = rgb[y0:y1, x0:x1]
    (as_crop,) = model_inputs(tight, run.spec, run.crop_size)
    assert as_crop.box is None
    np.testing.assert_array_equal(as_crop.pixels, resize(tight, run.spec.image_size))
    (as_smear,) = model_inputs(tight, run.spec, run.crop_size, input_kind="smear")
    assert as_smear.box is not None
    # A crop with a much wider margin (the cell a third of its side) is re-cut around its cell,
    # as the crop stage re-cuts it, whether it is found to be a crop or said to be one.
    loose = rgb[10:190, 110:290]
    for kind in ("auto", "crop"):
        (reframed,) = model_inputs(loose, run.spec, run.crop_size, input_kind=kind)
        assert reframed.box is not None and reframed.box[2] - reframed.box[0] < 0.5 * 180
        box = reframe_box(loose, run.spec.crop_padding)
        expected = crop_square(loose, box, run.spec.crop_padding, run.crop_size)
        np.testing.assert_array_equal(reframed.pixels, resize(expected, run.spec.image_size))


def test_explain_with_crop_model(detect_model, tmp_path):
    image = tmp_path / "smear.png"
    Image.fromarray(smear_with_cells([(250, 60)])).save(image)
    out = tmp_path / "cam.png"
    result = invoke("explain", image, "--model", detect_model, "--output", out)
    assert result.exit_code == 0, result.output
    with Image.open(out) as picture:
        assert picture.size == (320, 240)
        changed = np.asarray(picture.convert("RGB")).astype(int) != np.asarray(
            Image.open(image).convert("RGB")
        ).astype(int)
    ys, xs = np.nonzero(changed.any(axis=2))
    assert xs.min() > 150  # only the crop square around the cell at x=250 is painted
