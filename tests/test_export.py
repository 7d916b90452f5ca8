"""``wbc export``: every family's formats, loaded in their own runtimes, give the run's
probabilities (parity), carry their preprocessing and class order, and fail in one line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import ModelError

from conftest import CLASSES, STUDY_CONFIG, make_class_folders


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("export-crops")
    make_class_folders(root / "train", {c: 8 for c in CLASSES}, size=(64, 64), seed=1)
    make_class_folders(root / "test", {c: 3 for c in CLASSES}, size=(64, 64), seed=2)
    return root


def _train(crops: Path, run_dir: Path, path=None, *overrides) -> Path:
    from wbc.workflows.train import train

    config = load_config(path, ["train.epochs=1", "train.patience=null", *overrides])
    return train(
        config, run_dir=run_dir, folders=(crops / "train", crops / "test"), echo=lambda _m: None
    )


@pytest.fixture(scope="module")
def runs(crops, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export-runs")
    return {
        # the study's CNN on whole images, the cnn family with Reinhard and TTA, the default
        "study": _train(crops, root / "study", STUDY_CONFIG, "train.image_size=[48, 64]"),
        "cnn": _train(
            crops,
            root / "cnn",
            None,
            "model.family=cnn",
            "color.normalize=reinhard",
            "model.tta=true",
            "model.cnn.widths=[8, 16]",
            "train.batch_size=8",
        ),
        "features": _train(crops, root / "features"),
    }


def _export(run_dir: Path, fmt: str, out: Path, crops: Path):
    return CliRunner().invoke(
        cli,
        ["export", str(run_dir), "--format", fmt, "-o", str(out), "--check", str(crops / "test")],
    )


@pytest.mark.parametrize(
    "family, fmt",
    [
        ("study", "onnx"),
        ("study", "tflite"),
        ("study", "savedmodel"),
        ("cnn", "onnx"),
        ("cnn", "tflite"),
        ("cnn", "savedmodel"),
        ("features", "onnx"),
    ],
)
def test_exported_model_gives_the_runs_probabilities_in_its_runtime(
    runs, crops, tmp_path, family, fmt
):
    from wbc.models.runs import load_run
    from wbc.workflows.export import _runtime, metadata_path, sample_inputs
    from wbc.workflows.predict import find_images

    out = tmp_path / {"onnx": "m.onnx", "tflite": "m.tflite", "savedmodel": "sm"}[fmt]
    result = _export(runs[family], fmt, out, crops)
    assert result.exit_code == 0, result.output
    # Only wbc's two lines: the converters' chatter is kept off stdout.
    assert result.stdout.count("\n") == 2 and result.stdout.startswith(f"wrote {out}")
    meta = json.loads(metadata_path(out, fmt).read_text())
    run = load_run(runs[family])
    assert meta["classes"] == [run.classes[i] for i in range(len(meta["classes"]))]
    assert meta["preprocessing"]["image_size"] == list(run.spec.image_size)
    assert meta["parity"]["images"] == 12
    # Independently of export's own check: the file, loaded fresh, against the run's predictor.
    inputs = sample_inputs(run, find_images([crops / "test"]))
    _, exported = _runtime(fmt, out)
    got = np.asarray(exported(run.model.export_inputs(inputs)), np.float64)
    expected = run.model.engine("tensorflow", cache=False)(inputs)
    assert got.shape == expected.shape
    tolerance = 1e-4 if family == "features" else 1e-5  # float32 ONNX SVM vs float64 sklearn
    np.testing.assert_allclose(got, expected, atol=tolerance)
    assert not np.allclose(expected, expected[:1])  # the inputs do not all give one answer


def test_metadata_carries_the_stain_reference_tta_and_onnx_props(runs, crops, tmp_path):
    import onnx

    out = tmp_path / "cnn.onnx"
    assert _export(runs["cnn"], "onnx", out, crops).exit_code == 0
    meta = json.loads(Path(f"{out}.json").read_text())
    pre = meta["preprocessing"]
    assert pre["color"]["normalize"] == "reinhard"
    reference = json.loads((runs["cnn"] / "stain_reference.json").read_text())
    assert pre["color"]["stain_reference"]["mean"] == pytest.approx(reference["mean"])
    assert pre["tta"] is True and pre["crop"]["mode"] == "detect"
    assert meta["input"]["dtype"] == "uint8"
    props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(props["wbc"])["classes"] == meta["classes"]
    assert (tmp_path / "MODEL_CARD.md").is_file()  # the run's card travels with it
    features_meta = tmp_path / "f.onnx"
    assert _export(runs["features"], "onnx", features_meta, crops).exit_code == 0
    described = json.loads(Path(f"{features_meta}.json").read_text())
    assert described["input"]["dtype"] == "float32" and len(described["input"]["features"]) == 62
    balance = described["preprocessing"]["color"]  # the default: no stain reference to carry
    assert balance["normalize"] == "balance" and balance["stain_reference"] is None
    assert "background colour" in balance["order"]


def test_default_output_is_in_the_run_and_a_rerun_replaces_it(runs, crops):
    for _ in range(2):
        result = CliRunner().invoke(cli, ["export", str(runs["study"]), "--format", "tflite"])
        assert result.exit_code == 0, result.output
    folder = runs["study"] / "export"
    assert sorted(p.name for p in folder.iterdir()) == [
        "MODEL_CARD.md",
        "model.tflite",
        "model.tflite.json",
    ]


def test_unsupported_formats_and_missing_extras_are_one_line_errors(runs, tmp_path, monkeypatch):
    result = CliRunner().invoke(
        cli,
        ["export", str(runs["features"]), "--format", "tflite", "-o", str(tmp_path / "f.tflite")],
    )
    assert result.exit_code == 1
    assert "a features model cannot be exported as tflite; it exports to onnx" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "f.tflite").exists()

    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "tf2onnx" else real(name, *a)
    )
    result = CliRunner().invoke(
        cli, ["export", str(runs["study"]), "--format", "onnx", "-o", str(tmp_path / "s.onnx")]
    )
    assert result.exit_code == 1
    assert (
        "onnx export needs tf2onnx" in result.output
        and "pip install 'wbc[export]'" in result.output
    )
    assert len(result.output.strip().splitlines()) == 1


def test_a_failed_parity_check_keeps_nothing(runs, tmp_path, monkeypatch):
    from wbc.models.runs import load_run
    from wbc.workflows import export

    monkeypatch.setattr(export, "parity", lambda *a, **k: (0.5, "stub runtime"))
    out = tmp_path / "bad.onnx"
    with pytest.raises(ModelError, match="differ from the run's by 5.00e-01"):
        export.export_run(load_run(runs["study"]), "onnx", out)
    assert list(tmp_path.iterdir()) == []


def test_an_ensemble_says_to_export_its_members(tmp_path):
    from wbc.workflows.export import export_run

    class Run:
        model = type("Ensemble", (), {"export_formats": ()})()
        config = load_config(overrides=["model.ensemble=[features, features]"])
        model_path = tmp_path / "ensemble.json"

    with pytest.raises(ModelError, match="export each member"):
        export_run(Run(), "onnx", tmp_path / "x.onnx")


@pytest.mark.realdata
def test_parity_on_twenty_real_cell_crops(real_raw, runs, tmp_path):
    """The issue's check: 20 real smears, each cut to its WBC by the detector, through every
    format of every family."""
    from wbc.models.runs import load_run
    from wbc.workflows.export import export_run

    smears = sorted((real_raw / "JPEGImages").glob("*.jpg"))[:20]
    for family, formats in (("cnn", ("onnx", "tflite", "savedmodel")), ("features", ("onnx",))):
        run = load_run(runs[family])
        assert run.spec.crop_mode == "detect"
        for fmt in formats:
            result = export_run(run, fmt, tmp_path / family / f"m-{fmt}", check_images=smears)
            assert result.checked_images == 20
            assert result.max_difference <= (1e-4 if family == "features" else 1e-5)


def test_onnx_opsets_are_written_in_one_order(tmp_path):
    """skl2onnx lists its opsets in set order (the process's hash seed): the export sorts them,
    so that one run exports the same bytes in every process."""
    import onnx
    from onnx import TensorProto, helper

    from wbc.workflows.export import _set_onnx_metadata

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
    )
    files = []
    for order in (["ai.onnx.ml", ""], ["", "ai.onnx.ml"]):
        opsets = [helper.make_opsetid(d, 1 if d else 17) for d in order]
        path = tmp_path / f"{len(files)}.onnx"
        onnx.save(helper.make_model(graph, opset_imports=opsets), str(path))
        _set_onnx_metadata(path, {"classes": ["A"], "family": "features"})
        files.append(path.read_bytes())
    assert files[0] == files[1]
    assert [o.domain for o in onnx.load(str(tmp_path / "0.onnx")).opset_import] == [
        "",
        "ai.onnx.ml",
    ]
