"""wbc.workflows.evaluate: numpy metrics against hand-computed numbers, folder scoring, errors, the
CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import DataError, ModelError
from wbc.core.metrics import compute_metrics, confusion_matrix, metrics_from_confusion
from wbc.core.runfolder import write_classes
from wbc.workflows.evaluate import evaluate, format_table

from conftest import CLASSES, STUDY_CONFIG, make_class_folders

IMAGE_SIZE = (48, 64)


# --------------------------------------------------------------------------- pure metrics


def test_confusion_matrix_by_hand():
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0, 2, 3]
    expected = np.array(
        [
            [2, 1, 0, 0],
            [0, 1, 1, 0],
            [1, 0, 3, 0],
            [0, 0, 0, 1],
        ]
    )
    np.testing.assert_array_equal(confusion_matrix(y_true, y_pred, 4), expected)


def test_metrics_by_hand():
    # class 0: TP 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3
    # class 1: TP 1, predicted 2, support 2 -> P 1/2, R 1/2, F1 1/2
    # class 2: TP 3, predicted 4, support 4 -> P 3/4, R 3/4, F1 3/4
    # class 3: TP 1, predicted 1, support 1 -> P 1, R 1, F1 1
    y_true = [0, 0, 0, 1, 1, 2, 2, 2, 2, 3]
    y_pred = [0, 0, 1, 1, 2, 2, 2, 0, 2, 3]
    m = compute_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert m["accuracy"] == pytest.approx(7 / 10)
    assert m["n_images"] == 10
    assert m["per_class"]["a"] == pytest.approx(
        {"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3, "support": 3}
    )
    assert m["per_class"]["b"] == pytest.approx(
        {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    )
    assert m["per_class"]["c"] == pytest.approx(
        {"precision": 0.75, "recall": 0.75, "f1": 0.75, "support": 4}
    )
    assert m["per_class"]["d"] == pytest.approx(
        {"precision": 1.0, "recall": 1.0, "f1": 1.0, "support": 1}
    )
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0.75 + 1.0) / 4)
    assert m["classes"] == ["a", "b", "c", "d"]


def test_metrics_with_asymmetric_errors():
    # true 0 x4 predicted [0,0,0,1]; true 1 x2 predicted [1,1]; class 2 never occurs
    m = compute_metrics([0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 1], ["a", "b", "c"])
    a, b = m["per_class"]["a"], m["per_class"]["b"]
    assert (a["precision"], a["recall"]) == pytest.approx((1.0, 0.75))
    assert a["f1"] == pytest.approx(2 * 0.75 / 1.75)
    assert (b["precision"], b["recall"]) == pytest.approx((2 / 3, 1.0))
    assert b["f1"] == pytest.approx(0.8)
    assert m["per_class"]["c"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # macro-F1 over the classes that occur (as scikit-learn), not the absent class c
    assert m["macro_f1"] == pytest.approx((2 * 0.75 / 1.75 + 0.8) / 2)


def test_collapsed_predictions_have_zero_precision_not_nan():
    m = compute_metrics([0, 1, 2, 3], [2, 2, 2, 2], list("abcd"))
    assert m["accuracy"] == 0.25
    assert m["per_class"]["a"]["precision"] == 0.0
    assert m["per_class"]["c"]["precision"] == 0.25
    assert not any(np.isnan(v["f1"]) for v in m["per_class"].values())


def test_empty_and_invalid_inputs():
    m = metrics_from_confusion(np.zeros((2, 2), int), ["a", "b"])
    assert m["accuracy"] == 0.0 and m["macro_f1"] == 0.0 and m["n_images"] == 0
    with pytest.raises(ValueError):
        confusion_matrix([0, 1], [0], 2)
    with pytest.raises(ValueError):
        confusion_matrix([0, 5], [0, 1], 2)


def test_format_table_shows_everything():
    m = compute_metrics([0, 0, 1, 1], [0, 1, 1, 1], ["NEUTROPHIL", "MONOCYTE"])
    m["errors"] = [{"path": "x/y.jpg", "reason": "empty file (0 bytes)"}]
    text = format_table(m)
    for piece in (
        "accuracy  0.7500",
        "macro-F1",
        "precision",
        "recall",
        "support",
        "NEUTROPHIL",
        "MONOCYTE",
        "confusion matrix",
        "x/y.jpg: empty file",
    ):
        assert piece in text


# --------------------------------------------------------------------------- a saved model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A run-like folder: an (untrained) model.keras + config.yaml + classes.json."""
    import keras

    from wbc.core.config import dump_config
    from wbc.models.study import build_model

    keras.utils.set_random_seed(3)
    config = load_config(STUDY_CONFIG, ["train.image_size=[48,64]"])
    root = tmp_path_factory.mktemp("run")
    model = build_model(config.model, IMAGE_SIZE, len(CLASSES))
    # Make the untrained model's outputs differ between images (not one constant class).
    weights = model.get_weights()
    model.set_weights([w * 3.0 for w in weights])
    model.save(root / "model.keras")
    dump_config(config, root / "config.yaml")
    write_classes(sorted(CLASSES), root / "classes.json")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("test_side")
    make_class_folders(root, {c: 6 for c in CLASSES}, size=(60, 80), seed=5)
    # Other supported formats, and an unreadable file that must be skipped and reported.
    make_class_folders(root, {"MONOCYTE": 1}, size=(60, 80), seed=6, ext=".png")
    make_class_folders(root, {"EOSINOPHIL": 1}, size=(60, 80), seed=7, ext=".bmp")
    make_class_folders(root, {"LYMPHOCYTE": 1}, size=(60, 80), seed=8, ext=".tif")
    (root / "NEUTROPHIL" / "NEUTROPHIL.999.jpg").write_bytes(b"not a jpeg")
    (root / "NEUTROPHIL" / "notes.txt").write_text("ignored: not an image name")
    return root


def _by_hand(model_path: Path, root: Path):
    """Predictions computed without wbc.workflows.evaluate: the shared loader, the model, numpy
    loops."""
    import keras

    from wbc.core.imageio import is_image_name
    from wbc.imaging.preprocess import load_resized, scale

    model = keras.saving.load_model(model_path, safe_mode=True)
    classes = sorted(CLASSES)
    matrix = np.zeros((4, 4), int)
    for t, name in enumerate(classes):
        for path in sorted((root / name).iterdir()):
            if not is_image_name(path) or path.name.endswith(".999.jpg"):
                continue
            x = scale(load_resized(path, IMAGE_SIZE)[None])
            p = int(np.argmax(np.asarray(model(x, training=False))[0]))
            matrix[t, p] += 1
    return matrix


def test_evaluate_matches_hand_computed_confusion(model_dir, folder):
    metrics = evaluate(model_dir / "model.keras", folder)
    expected = _by_hand(model_dir / "model.keras", folder)
    assert metrics["confusion_matrix"] == expected.tolist()
    assert metrics["n_images"] == 27  # 24 jpg + png + bmp + tif; the broken file is skipped
    assert metrics["accuracy"] == pytest.approx(np.trace(expected) / expected.sum())
    assert [e["path"] for e in metrics["errors"]] == [
        str(folder / "NEUTROPHIL" / "NEUTROPHIL.999.jpg")
    ]
    assert metrics["classes"] == sorted(CLASSES)
    support = {c: metrics["per_class"][c]["support"] for c in CLASSES}
    assert support == {"NEUTROPHIL": 6, "EOSINOPHIL": 7, "LYMPHOCYTE": 7, "MONOCYTE": 7}


def test_run_folder_works_as_model_path(model_dir, folder):
    by_file = evaluate(model_dir / "model.keras", folder)
    by_dir = evaluate(model_dir, folder)
    assert by_dir["confusion_matrix"] == by_file["confusion_matrix"]


def test_image_size_comes_from_the_runs_config(model_dir, tmp_path):
    # Big images are resized to the run's train.image_size (48x64), never re-typed by the caller.
    root = make_class_folders(tmp_path / "big", {"MONOCYTE": 2}, size=(120, 160))
    assert evaluate(model_dir / "model.keras", root)["n_images"] == 2


def test_a_subset_of_the_classes_is_fine(model_dir, tmp_path):
    root = make_class_folders(tmp_path / "two", {"MONOCYTE": 2, "EOSINOPHIL": 1})
    metrics = evaluate(model_dir / "model.keras", root)
    assert metrics["n_images"] == 3
    assert metrics["per_class"]["NEUTROPHIL"]["support"] == 0


def _with_basophils(root: Path) -> Path:
    """``root`` with a MONOCYTE folder and a BASOPHIL folder (a class the model never saw)."""
    make_class_folders(root, {"MONOCYTE": 1})
    (root / "BASOPHIL").mkdir()
    source = next((root / "MONOCYTE").iterdir())
    (root / "BASOPHIL" / "BASOPHIL.1.jpg").write_bytes(source.read_bytes())
    return root


def test_unknown_class_folder_is_an_error_naming_it(model_dir, tmp_path):
    root = _with_basophils(tmp_path / "data")
    with pytest.raises(DataError, match="BASOPHIL"):
        evaluate(model_dir / "model.keras", root)


def test_folder_without_class_folders_is_an_error(model_dir, tmp_path):
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        evaluate(model_dir / "model.keras", tmp_path / "flat")
    with pytest.raises(DataError, match="not found"):
        evaluate(model_dir / "model.keras", tmp_path / "missing")


def test_missing_or_invalid_model_is_a_model_error(model_dir, folder, tmp_path):
    with pytest.raises(ModelError, match="not found"):
        evaluate(tmp_path / "nothing.keras", folder)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.keras").write_bytes(b"garbage")
    for name in ("config.yaml", "classes.json"):
        (broken / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelError) as info:
        evaluate(broken / "model.keras", folder)
    assert "\n" not in str(info.value) and "model.keras" in str(info.value)


def test_missing_classes_json_is_a_model_error(model_dir, folder, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.keras", "config.yaml"):
        (run / name).write_bytes((model_dir / name).read_bytes())
    with pytest.raises(ModelError, match="classes.json"):
        evaluate(run / "model.keras", folder)


# --------------------------------------------------------------------------- CLI


def test_cli_table(model_dir, folder):
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", str(model_dir / "model.keras"), "--data", str(folder)]
    )
    assert result.exit_code == 0, result.output
    for piece in (
        "accuracy",
        "macro-F1",
        "precision",
        "recall",
        "f1",
        "support",
        "confusion matrix",
        *CLASSES,
    ):
        assert piece in result.output


def test_cli_json_and_output_file(model_dir, folder, tmp_path):
    out = tmp_path / "metrics.json"
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(model_dir),
            "--data",
            str(folder),
            "--format",
            "json",
            "--output",
            str(out),
        ],
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    saved = json.loads(out.read_text())
    assert printed["confusion_matrix"] == saved["confusion_matrix"]
    assert set(saved) >= {
        "accuracy",
        "macro_f1",
        "per_class",
        "confusion_matrix",
        "n_images",
        "errors",
        "classes",
    }


def test_cli_unknown_class_and_missing_model_are_one_line_errors(model_dir, tmp_path):
    root = _with_basophils(tmp_path / "data")
    result = CliRunner().invoke(cli, ["evaluate", "--model", str(model_dir), "--data", str(root)])
    assert result.exit_code == 1
    assert "BASOPHIL" in result.output and "Traceback" not in result.output
    result = CliRunner().invoke(
        cli, ["evaluate", "--model", str(tmp_path / "none.keras"), "--data", str(root)]
    )
    assert result.exit_code == 1
    assert "none.keras: model file not found" in result.output


def test_metrics_match_scikit_learn_and_the_hand_formulas_on_random_predictions():
    """The sklearn-computed metrics agree with an independent numpy computation."""
    from sklearn.metrics import classification_report

    rng = np.random.default_rng(7)
    y_true = rng.integers(0, 4, 200)
    y_pred = np.where(rng.random(200) < 0.6, y_true, rng.integers(0, 3, 200))  # class 3 rare
    metrics = compute_metrics(y_true, y_pred, CLASSES)
    report = classification_report(
        y_true, y_pred, labels=range(4), output_dict=True, zero_division=0
    )
    for i, name in enumerate(CLASSES):
        assert metrics["per_class"][name]["f1"] == pytest.approx(report[str(i)]["f1-score"])
        tp = np.sum((y_true == i) & (y_pred == i))
        recall = tp / max(1, np.sum(y_true == i))
        precision = tp / max(1, np.sum(y_pred == i))
        assert metrics["per_class"][name]["recall"] == pytest.approx(recall)
        assert metrics["per_class"][name]["precision"] == pytest.approx(precision)
    assert metrics["accuracy"] == pytest.approx(np.mean(y_true == y_pred))
    assert metrics["macro_f1"] == pytest.approx(report["macro avg"]["f1-score"])


def test_compare_scores_each_run_and_the_majority_baseline(model_dir, folder, tmp_path):
    from wbc.workflows.evaluate import evaluate as evaluate_one

    out = tmp_path / "compare.json"
    result = CliRunner().invoke(
        cli,
        [
            "compare",
            str(model_dir),
            str(tmp_path / "missing"),
            "--data",
            str(folder),
            "--json",
            str(out),
        ],
    )
    assert result.exit_code == 1  # the missing run is its own error row
    assert "1 of 2 runs could not be scored" in result.stderr
    table = result.stdout.splitlines()
    assert table[0] == f"evaluation on {folder}"
    assert "study crop=none in=rgb norm=none" in table[2]
    assert "error:" in table[3] and table[4].startswith("(majority class)")
    data = json.loads(out.read_text())
    alone = evaluate_one(model_dir, folder)
    assert data["runs"][0]["metrics"]["accuracy"] == alone["accuracy"]
    counts = [alone["per_class"][c]["support"] for c in alone["classes"]]
    assert data["majority"]["accuracy"] == pytest.approx(max(counts) / sum(counts))
    assert f"{alone['accuracy']:.3f}" in table[2]


def test_compare_with_no_run_scored_is_a_table_of_error_rows(folder, tmp_path):
    result = CliRunner().invoke(
        cli, ["compare", str(tmp_path / "gone"), str(tmp_path / "lost"), "--data", str(folder)]
    )
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "2 of 2 runs could not be scored" in result.stderr
    rows = result.stdout.splitlines()
    assert "error:" in rows[2] and "error:" in rows[3]
