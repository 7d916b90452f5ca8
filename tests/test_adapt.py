"""``wbc adapt``: a run adapted to a lab from its unlabelled cells. AdaBN moves the BatchNorm
statistics to the lab's, the features scaler is re-estimated, no folder name is read as a
label, run.json says what was adapted on, and every command applies the prior correction."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.core.config import dump_config, load_config
from wbc.models.adaptation import (
    PRIOR_FLOOR,
    PriorCorrection,
    em_priors,
    fit_temperature,
    tempered,
)

from conftest import CLASSES, make_class_folders, make_run

SIDE = 32


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def cnn_run(run_dir):
    """An untrained residual CNN run (BatchNorm statistics at their initial 0 and 1)."""
    import keras

    from wbc.models import family_for

    run_dir.mkdir(parents=True)
    config = load_config(
        overrides=[
            "model.family=cnn",
            f"model.cnn.image_size={SIDE}",
            "model.cnn.widths=[4, 8]",
            "crop.mode=none",
            "color.normalize=none",
        ]
    )
    keras.utils.set_random_seed(0)
    family_for(config).build(len(CLASSES)).save(run_dir / "model.keras")
    dump_config(config, run_dir / "config.yaml")
    (run_dir / "classes.json").write_text(json.dumps(list(CLASSES)))
    return run_dir


def lab_images(root, n=12, seed=3, background=(230, 215, 120)):
    """A lab's cells: square images with another stain (a yellow background)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    for i in range(n):
        image = np.empty((40, 40, 3), np.float64)
        image[:] = background
        r = 6 + i % 8
        yy, xx = np.mgrid[:40, :40]
        image[(yy - 20) ** 2 + (xx - 20) ** 2 <= r * r] = (120, 50, 90)
        image = np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(root / f"cell{i:02d}.png")
    return root


def relabelled(flat, root):
    """The same files in class folders named wrongly (and one nested level deeper)."""
    for i, path in enumerate(sorted(flat.iterdir())):
        folder = root / CLASSES[i % len(CLASSES)] / ("deep" if i % 3 else "")
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, folder / f"renamed{i}.png")
    return root


def batchnorm(run_dir):
    from wbc.models.adaptation import batchnorm_layers
    from wbc.models.runs import load_run

    model = load_run(run_dir).model.model
    return {
        layer.name: (np.asarray(layer.moving_mean), np.asarray(layer.moving_variance))
        for layer in batchnorm_layers(model)
    }


# --------------------------------------------------------------------------- Keras: AdaBN


def test_adabn_sets_batchnorm_statistics_to_the_labs_and_reads_no_label(tmp_path):
    import keras

    from wbc.models.runs import load_run
    from wbc.workflows.predict import load_input

    source = cnn_run(tmp_path / "run")
    flat = lab_images(tmp_path / "lab")
    result = invoke(
        "adapt",
        source,
        "--unlabelled",
        flat,
        "--out",
        tmp_path / "adapted",
        "--pooled",
        "--priors",
        "auto",
    )
    assert result.exit_code == 0, result.output
    assert "batchnorm: AdaBN" in result.output
    assert "priors: EM - not applied: no held-out source data" in result.output

    before, after = batchnorm(source), batchnorm(tmp_path / "adapted")
    assert set(before) == set(after) and len(after) >= 5
    # The first BatchNorm now holds the mean and variance of its inputs on the lab's cells.
    run = load_run(source)
    pixels = np.stack([load_input(p, run.spec) for p in sorted(flat.iterdir())])
    stem = keras.Model(run.model.model.inputs[0], run.model.model.get_layer("stem_conv").output)
    values = np.asarray(stem(pixels.astype(np.float32) / 255.0)).reshape(-1, 4)
    np.testing.assert_allclose(after["stem_norm"][0], values.mean(axis=0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(after["stem_norm"][1], values.var(axis=0), rtol=1e-3, atol=1e-6)
    assert not np.allclose(before["stem_norm"][0], after["stem_norm"][0])

    # Class-balanced (the default): wrongly named class folders, nested, give exactly the same
    # adaptation as the flat folder; it differs from the pooled one.
    folders = relabelled(flat, tmp_path / "labelled")
    flat_run = invoke("adapt", source, "--unlabelled", flat, "--out", tmp_path / "balanced")
    again = invoke("adapt", source, "--unlabelled", folders, "--out", tmp_path / "adapted2")
    assert again.exit_code == 0 and flat_run.exit_code == 0, again.output
    balanced = batchnorm(tmp_path / "balanced")
    assert not np.allclose(balanced["stem_norm"][0], after["stem_norm"][0])
    for name, (mean, variance) in batchnorm(tmp_path / "adapted2").items():
        np.testing.assert_array_equal(mean, balanced[name][0])
        np.testing.assert_array_equal(variance, balanced[name][1])
    info = json.loads((tmp_path / "balanced" / "run.json").read_text())["adaptation"]
    info2 = json.loads((tmp_path / "adapted2" / "run.json").read_text())["adaptation"]
    assert info["digest"] == info2["digest"] and info["digest"].startswith("sha256:")
    assert info["images"] == 12 and info["cells"] == 12 and info["labels_used"] is False
    assert info["folder"] == str(flat.resolve())
    assert [p["part"] for p in info["parts"]] == ["batchnorm", "priors"]
    # EM priors are off unless asked for: no correction file, and run.json says why.
    assert info["parts"][1]["kept"] is False and info["parts"][1]["reason"] == "--priors never"
    assert not (tmp_path / "balanced" / "prior_correction.json").exists()
    assert info["parts"][0]["method"].startswith("AdaBN")
    assert info["parts"][0]["weighting"] == "class-balanced" and info["parts"][0]["rounds"] > 0


def test_predict_adapts_a_cnn_on_its_images_as_wbc_adapt_would(tmp_path):
    """AdaBN in memory (``--adapt always``) gives the probabilities of the run ``wbc adapt``
    writes; ``auto`` leaves a run without a domain reference as it is."""
    source = cnn_run(tmp_path / "run")
    lab = lab_images(tmp_path / "lab")
    invoke("adapt", source, "--unlabelled", lab, "--out", tmp_path / "adapted")

    def probabilities(model, *extra):
        result = CliRunner().invoke(
            cli,
            ["predict", str(lab), "--model", str(model), "--format", "json", *extra],
        )
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)["predictions"]
        return np.array([[r["probabilities"][c] for c in CLASSES] for r in rows])

    in_memory = probabilities(source, "--adapt", "always", "--engine", "tensorflow")
    written = probabilities(tmp_path / "adapted", "--engine", "tensorflow")
    as_is = probabilities(source, "--adapt", "auto", "--engine", "tensorflow")
    np.testing.assert_allclose(in_memory, written, atol=1e-5)
    assert not np.allclose(in_memory, as_is, atol=1e-3)
    np.testing.assert_allclose(as_is, probabilities(source, "--engine", "tensorflow"), atol=1e-6)


def test_a_network_without_batchnorm_says_so_and_is_copied(tmp_path):
    make_run(tmp_path / "study")  # the study's CNN: no BatchNorm layer
    lab = lab_images(tmp_path / "lab", n=4)
    result = invoke(
        "adapt",
        tmp_path / "study",
        "--unlabelled",
        lab,
        "--out",
        tmp_path / "out",
        "--input",
        "crop",
    )
    assert result.exit_code == 0, result.output
    assert "batchnorm: skipped - not applied: the network has no BatchNormalization layer" in (
        result.output
    )
    assert (tmp_path / "out" / "model.keras").is_file()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda root: root / "missing", "folder not found"),
        (lambda root: (root / "empty").mkdir() or root / "empty", "no images found"),
    ],
)
def test_a_bad_folder_is_one_clear_line(tmp_path, make, message):
    make_run(tmp_path / "run")
    result = CliRunner().invoke(
        cli, ["adapt", str(tmp_path / "run"), "--unlabelled", str(make(tmp_path)), "--out", "x"]
    )
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0]
    assert not (tmp_path / "x").exists()


def test_an_existing_out_folder_is_refused(tmp_path):
    make_run(tmp_path / "run")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "file").write_text("x")
    result = invoke(
        "adapt",
        tmp_path / "run",
        "--unlabelled",
        lab_images(tmp_path / "lab", 2),
        "--out",
        tmp_path / "out",
    )
    assert result.exit_code == 1 and "already exists" in result.output


# --------------------------------------------------------------------------- features family


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    from wbc.workflows.train import train

    root = tmp_path_factory.mktemp("crops")
    make_class_folders(root / "train", {c: 8 for c in CLASSES}, size=(64, 64), seed=1)
    make_class_folders(root / "test", {c: 4 for c in CLASSES}, size=(64, 64), seed=2)
    run = train(
        load_config(overrides=["model.family=features"]),
        run_dir=root / "run",
        folders=(root / "train", root / "test"),
        echo=lambda _m: None,
    )
    return run, root


def test_cells_adapted_on_are_answered_without_measuring_them_again(
    features_run, tmp_path, monkeypatch
):
    from wbc.models import features
    from wbc.models.runs import load_run, resolve_model_path
    from wbc.workflows.adapt import load_cells
    from wbc.workflows.predict import Predictor

    run_dir, _ = features_run
    run = load_run(resolve_model_path(run_dir))
    cells, _ = load_cells(run, lab_images(tmp_path / "lab", n=24))
    others, _ = load_cells(run, lab_images(tmp_path / "more", n=3, seed=8))
    measured = []
    real = features._measure

    def counting(images, colour, nucleus):
        measured.append(len(images))
        return real(images, colour, nucleus)

    monkeypatch.setattr(features, "_measure", counting)
    run.model.adapt_to(cells, lambda _m: None, True)
    assert measured == [24]
    mixed = np.concatenate([cells[::-1], others])  # another order, and 3 cells it never saw
    remembered = Predictor(run.model, cache=False)(mixed)
    assert measured == [24, 3]
    run.model.adapted_measurements.clear()
    np.testing.assert_array_equal(Predictor(run.model, cache=False)(mixed), remembered)
    assert measured == [24, 3, 27]


def test_features_scaler_is_reestimated_and_priors_recorded(features_run, tmp_path):
    from wbc.models.runs import load_run

    run_dir, root = features_run
    # the lab: the held-out cells with a yellowish cast, and mostly one class
    lab = tmp_path / "lab"
    make_class_folders(lab, {"NEUTROPHIL": 9, "MONOCYTE": 3}, size=(64, 64), seed=5)
    for path in lab.rglob("*.jpg"):
        pixels = np.asarray(Image.open(path), np.int16) + np.array([10, 5, -40])
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    args = ["--calibration", root / "test", "--priors", "always"]
    result = invoke("adapt", run_dir, "--unlabelled", lab, "--out", tmp_path / "a", *args)
    assert result.exit_code == 0, result.output
    before, after = load_run(run_dir).model, load_run(tmp_path / "a").model
    assert not np.allclose(before.pipeline[0].mean_, after.pipeline[0].mean_)
    # the SVM itself is untouched
    for old, new in zip(
        before.pipeline[1].calibrated_classifiers_, after.pipeline[1].calibrated_classifiers_
    ):
        np.testing.assert_array_equal(
            old.estimator.support_vectors_, new.estimator.support_vectors_
        )
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["adapted_from"]["run"] == str(run_dir.resolve())
    parts = {p["part"]: p for p in info["adaptation"]["parts"]}
    assert parts["standardisation"]["rounds"] >= 1
    assert parts["priors"]["kept"] is True and parts["priors"]["calibration"]["images"] == 16
    assert (tmp_path / "a" / "prior_correction.json").is_file()
    assert "Adapted without labels" in (tmp_path / "a" / "MODEL_CARD.md").read_text()
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["n_images"] == 16
    # wbc compare says which run was adapted, to what, and what its own accuracy then means
    table = invoke("compare", run_dir, tmp_path / "a", "--data", lab, "--json", tmp_path / "c")
    assert table.exit_code == 0, table.output
    rows = json.loads((tmp_path / "c").read_text())["runs"]
    assert [r["adapted_on"] for r in rows] == [None, str(lab.resolve())]
    lines = table.stdout.splitlines()
    assert "adapted=" not in lines[2] and f"adapted={lab.name}" in lines[3]
    assert f"adapted without labels to {lab.resolve()} (these very cells)" in table.stdout

    # the same files in wrongly named class folders: the same scaler and priors
    flat = tmp_path / "flat"
    flat.mkdir()
    for i, path in enumerate(sorted(lab.rglob("*.jpg"))):
        shutil.copy(path, flat / f"x{i}.jpg")
    again = invoke("adapt", run_dir, "--unlabelled", flat, "--out", tmp_path / "b", *args)
    assert again.exit_code == 0, again.output
    np.testing.assert_array_equal(
        after.pipeline[0].mean_, load_run(tmp_path / "b").model.pipeline[0].mean_
    )
    assert (tmp_path / "a" / "prior_correction.json").read_text() == (
        tmp_path / "b" / "prior_correction.json"
    ).read_text()


def test_predict_and_evaluate_apply_the_runs_prior_correction(features_run, tmp_path):
    from wbc.models.adaptation import write_correction

    run_dir, root = features_run
    adapted = tmp_path / "adapted"
    shutil.copytree(run_dir, adapted)
    order = json.loads((run_dir / "classes.json").read_text())
    target = tuple(0.97 if name == "MONOCYTE" else 0.01 for name in order)
    correction = PriorCorrection(0.5, (0.25,) * 4, target)
    write_correction(correction, adapted)
    images = root / "test" / "NEUTROPHIL"

    def probabilities(run):
        out = invoke("predict", images, "--model", run, "--format", "json")
        assert out.exit_code == 0, out.output
        document = json.loads(out.output)
        rows, order = document["predictions"], document["classes"]
        return np.array([[row["probabilities"][c] for c in order] for row in rows]), rows

    plain, _ = probabilities(run_dir)
    corrected, rows = probabilities(adapted)
    np.testing.assert_allclose(corrected, correction(plain), atol=1e-5)
    # adapting such a run again on a sample is refused in one line (adapt the source instead)
    again = CliRunner().invoke(
        cli, ["count", str(images), "--model", str(adapted), "--adapt", "always"]
    )
    assert again.exit_code == 1 and "already adapted" in again.output
    assert "Traceback" not in again.output and len(again.output.strip().splitlines()) == 1
    moved = sum(row["class"] == "MONOCYTE" for row in rows)
    assert moved > int((plain.argmax(axis=1) == order.index("MONOCYTE")).sum())
    scored = invoke("evaluate", "--model", adapted, "--data", root / "test", "--format", "json")
    metrics = json.loads(scored.stdout)
    matrix = dict(zip(metrics["classes"], metrics["confusion_matrix"]))
    assert matrix["NEUTROPHIL"][metrics["classes"].index("MONOCYTE")] == moved
    # an exported graph would lack the correction: refused in one line, nothing written
    exported = CliRunner().invoke(
        cli, ["export", str(adapted), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    )
    assert exported.exit_code == 1 and "prior correction" in exported.output
    assert not (tmp_path / "m.onnx").exists()


# --------------------------------------------------------------------------- the maths


def test_bounded_em_keeps_every_class_above_the_floor():
    rng = np.random.default_rng(0)
    # posteriors of 200 cells that all look like class 0: naive EM would drive the rest to 0
    probs = rng.dirichlet([20, 1, 1, 1], size=200)
    prior, _ = em_priors(probs, np.full(4, 0.25))
    assert prior.min() >= PRIOR_FLOOR - 1e-12 and abs(prior.sum() - 1) < 1e-9
    assert prior[0] > 0.8


def test_temperature_fits_overconfident_posteriors():
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 4, 400)
    logits = rng.normal(0, 1, (400, 4))
    logits[np.arange(400), labels] += 1.0
    honest = tempered(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1.0)
    overconfident = tempered(honest, 0.25)  # four times too sharp
    assert 3.0 < fit_temperature(overconfident, labels) < 5.5


def test_predict_advises_adaptation_for_a_folder_of_another_stain(features_run, tmp_path):
    run_dir, root = features_run
    lab = lab_images(tmp_path / "lab", n=24)
    result = CliRunner().invoke(cli, ["predict", str(lab), "--model", str(run_dir)])
    assert result.exit_code == 0, result.output
    advice = f"wbc adapt {run_dir} --unlabelled {lab} --out {run_dir}-adapted"
    assert "adaptation advised: 24 of 24 cells" in result.stderr and advice in result.stderr
    assert "adaptation advised" not in result.stdout  # the table stays clean for other programs
    # the held-out cells of the training lab: nothing to advise
    same = CliRunner().invoke(cli, ["predict", str(root / "test"), "--model", str(run_dir)])
    assert "adaptation advised" not in same.stderr
    # the adapted run's domain is the lab's: no advice there any more
    invoke(
        "adapt", run_dir, "--unlabelled", lab, "--out", tmp_path / "adapted", "--priors", "never"
    )
    again = CliRunner().invoke(cli, ["predict", str(lab), "--model", str(tmp_path / "adapted")])
    assert again.exit_code == 0 and "adaptation advised" not in again.stderr


def test_saturated_backgrounds_are_reported_by_predict_count_and_adapt(features_run, tmp_path):
    run_dir, root = features_run
    # the lab's light, overexposed: red and green beyond the camera's 255, blue not
    bright = lab_images(tmp_path / "bright", n=20, background=(300, 280, 120))
    warning = "warning: 20 of 20 images have a saturated background (red in 20, green in 20)"
    predicted = CliRunner().invoke(
        cli, ["predict", str(bright), "--model", str(run_dir), "--format", "json"]
    )
    assert predicted.exit_code == 0, predicted.output
    assert warning in predicted.stderr
    document = json.loads(predicted.stdout)
    assert document["saturated_background"] == 20
    assert all(row["saturated_background"] == ["red", "green"] for row in document["predictions"])
    counted, _ = count_json(bright, run_dir, "--adapt", "never")
    assert counted["saturated_background"] == {
        "images": 20, "of": 20, "red": 20, "green": 20, "blue": 0
    }  # fmt: skip
    table = CliRunner().invoke(cli, ["count", str(bright), "--model", str(run_dir)])
    assert table.exit_code == 0 and warning in table.stdout
    adapted = invoke(
        "adapt", run_dir, "--unlabelled", bright, "--out", tmp_path / "a", "--priors", "never"
    )
    assert warning in adapted.output
    record = json.loads((tmp_path / "a" / "run.json").read_text())["adaptation"]
    assert record["saturated_background"]["images"] == 20
    # the same light within the camera's range, and the training lab's own cells: nothing to say
    for folder in (lab_images(tmp_path / "lab", n=20), root / "test"):
        quiet = CliRunner().invoke(cli, ["predict", str(folder), "--model", str(run_dir)])
        assert quiet.exit_code == 0 and "saturated background" not in quiet.stderr
    assert count_json(root / "test", run_dir)[0]["saturated_background"]["images"] == 0


def count_json(folder, model, *extra):
    result = CliRunner().invoke(
        cli, ["count", str(folder), "--model", str(model), "--format", "json", *map(str, extra)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout), result.stderr


def test_count_adapts_on_its_sample_as_wbc_adapt_then_count_would(features_run, tmp_path):
    """``--adapt`` adapts in memory exactly as ``wbc adapt --priors never`` writes a run: the
    same differential, whatever the files are named; ``auto`` only where the flag advises."""
    run_dir, root = features_run
    lab = lab_images(tmp_path / "lab", n=24)
    as_is, _ = count_json(lab, run_dir, "--adapt", "never")
    assert as_is["adapted"] is None and "wbc adapt" in as_is["adaptation_advised"]
    always, stderr = count_json(lab, run_dir, "--adapt", "always")
    invoke("adapt", run_dir, "--unlabelled", lab, "--out", tmp_path / "a", "--priors", "never")
    written, _ = count_json(lab, tmp_path / "a", "--adapt", "never")
    assert always["counts"] == written["counts"] and always["counts"] != as_is["counts"]
    assert always["adapted"]["cells"] == 24 and always["adapted"]["labels_used"] is False
    assert always["adapted"]["parts"][0]["part"] == "standardisation"
    assert always["adaptation_advised"] is None and "adapting" in stderr
    # every cell of this lab is flagged, so auto adapts too
    auto, _ = count_json(lab, run_dir)  # wbc count's default is auto
    assert auto["adapted"]["mode"] == "auto" and auto["counts"] == always["counts"]
    # renamed, in another order, in class folders: the same adapted model
    renamed = relabelled(lab, tmp_path / "renamed")
    assert count_json(renamed, run_dir, "--adapt", "always")[0]["counts"] == always["counts"]
    # the training lab's own held-out cells: auto leaves the run as it is
    home, _ = count_json(root / "test", run_dir)
    plain, _ = count_json(root / "test", run_dir, "--adapt", "never")
    assert home["adapted"] is None and home["counts"] == plain["counts"]
    table = CliRunner().invoke(cli, ["count", str(lab), "--model", str(run_dir), "--adapt", "auto"])
    assert "counted after adapting the model on this sample's 24 cells" in table.stdout
    page = tmp_path / "count.html"
    count_json(lab, run_dir, "--adapt", "always", "--report", page)
    assert "Counted after adapting the model on this sample's 24 cells" in page.read_text()


def test_predict_adapts_only_when_asked_and_marks_its_rows(features_run, tmp_path):
    run_dir, _ = features_run
    lab = lab_images(tmp_path / "lab", n=24)
    invoke("adapt", run_dir, "--unlabelled", lab, "--out", tmp_path / "a", "--priors", "never")

    def rows(model, *extra):
        result = CliRunner().invoke(
            cli, ["predict", str(lab), "--model", str(model), "--format", "json", *extra]
        )
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout), result.stderr

    plain, stderr = rows(run_dir)  # predict's default: the run as it is, with the advice
    assert plain["adapted"] == 0 and "adaptation advised" in stderr
    assert all("adapted" not in row for row in plain["predictions"])
    adapted, stderr = rows(run_dir, "--adapt", "auto")
    written, _ = rows(tmp_path / "a")
    assert [r["class"] for r in adapted["predictions"]] == [
        r["class"] for r in written["predictions"]
    ]
    assert adapted["adapted"] == 24 and "adaptation advised" not in stderr
    assert "answered after adapting the model on these 24 images" in stderr
    assert "fewer than 20" not in stderr
    two = CliRunner().invoke(
        cli,
        ["predict", *map(str, sorted(lab.iterdir())[:2]), "--model", str(run_dir)]
        + ["--adapt", "always"],
    )
    assert two.exit_code == 0 and "warning: adapting on 2 cells, fewer than 20" in two.stderr
    csv = CliRunner().invoke(
        cli, ["predict", str(lab), "--model", str(run_dir), "--format", "csv", "--adapt", "always"]
    )
    header, first = csv.stdout.splitlines()[:2]
    assert header.split(",")[-2:] == ["adapted", "error"] and first.split(",")[-2] == "true"


def test_whole_smears_are_cut_to_their_cell_as_predict_does(features_run, tmp_path, monkeypatch):
    """A 4:3 smear goes through predict's crop rule (``takes_crop``), a square crop does not."""
    from wbc.workflows import predict

    run_dir, _ = features_run
    lab = make_class_folders(tmp_path / "lab", {"NEUTROPHIL": 3}, size=(48, 64), seed=9)
    shutil.copy(next((tmp_path / "lab").rglob("*.jpg")), lab / "extra.jpg")
    Image.new("RGB", (40, 40), (230, 215, 120)).save(lab / "square.png")
    decisions = []
    real = predict.takes_crop

    def spy(rgb, spec, input_kind="auto"):
        decisions.append((rgb.shape[:2], real(rgb, spec, input_kind)))
        return decisions[-1][1]

    monkeypatch.setattr(predict, "takes_crop", spy)
    result = invoke(
        "adapt", run_dir, "--unlabelled", lab, "--out", tmp_path / "a", "--priors", "never"
    )
    assert result.exit_code == 0, result.output
    assert sorted(decisions) == [((40, 40), False)] + [((48, 64), True)] * 4
    assert "warning: adapting on 5 cells, fewer than 20" in result.output
    info = json.loads((tmp_path / "a" / "run.json").read_text())["adaptation"]
    assert info["images"] == 5 and info["cells"] == 5


# --------------------------------------------------------------------------- ensembles


def ensemble_run(run_dir, features_dir):
    """An ensemble run of the trained features run and an untrained CNN, laid out as wbc train
    lays one out (members/1-features, members/2-cnn, ensemble.json), without training again."""
    shutil.copytree(features_dir, run_dir / "members" / "1-features")
    cnn_run(run_dir / "members" / "2-cnn")
    config = load_config(
        overrides=[
            "model.ensemble=[features, cnn]",
            f"model.cnn.image_size={SIDE}",
            "model.cnn.widths=[4, 8]",
            "crop.mode=none",
            "color.normalize=none",
        ]
    )
    dump_config(config, run_dir / "config.yaml")
    classes = (features_dir / "classes.json").read_text()  # the members must agree
    for folder in (run_dir, run_dir / "members" / "2-cnn"):
        (folder / "classes.json").write_text(classes)
    members = [
        {"family": "features", "seed": 42, "model": "members/1-features/model.skops"},
        {"family": "cnn", "seed": 43, "model": "members/2-cnn/model.keras"},
    ]
    (run_dir / "ensemble.json").write_text(json.dumps({"members": members}))
    return run_dir, members


def test_an_ensemble_adapts_each_member_and_leaves_the_source_alone(features_run, tmp_path):
    from wbc.models.base import resize_batch
    from wbc.models.runs import load_run
    from wbc.workflows.predict import Predictor

    source, members = ensemble_run(tmp_path / "ensemble", features_run[0])
    before = {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()}
    lab = lab_images(tmp_path / "lab")
    result = invoke("adapt", source, "--unlabelled", lab, "--out", tmp_path / "adapted")
    assert result.exit_code == 0, result.output
    assert "member 1 standardisation: class-balanced re-standardisation" in result.output
    assert "member 2 batchnorm: AdaBN" in result.output
    # the source run is byte for byte as it was
    assert {p: p.read_bytes() for p in sorted(source.rglob("*")) if p.is_file()} == before

    adapted = tmp_path / "adapted"
    assert json.loads((adapted / "ensemble.json").read_text())["members"] == members
    features_before, features_after = (
        load_run(run / members[0]["model"]).model.pipeline[0] for run in (source, adapted)
    )
    assert not np.allclose(features_before.mean_, features_after.mean_)
    cnn_before, cnn_after = (batchnorm(run / "members" / "2-cnn") for run in (source, adapted))
    assert not np.allclose(cnn_before["stem_norm"][0], cnn_after["stem_norm"][0])

    info = json.loads((adapted / "run.json").read_text())["adaptation"]
    assert [(p.get("member"), p["part"]) for p in info["parts"]] == [
        (1, "standardisation"),
        (2, "batchnorm"),
        (None, "priors"),
    ]
    assert "member 2 batchnorm: AdaBN" in (adapted / "MODEL_CARD.md").read_text()
    # the adapted ensemble predicts the mean of its adapted members, each at its own size
    run = load_run(adapted)
    cells = np.stack(
        [np.asarray(Image.open(p).resize(run.model.image_size)) for p in sorted(lab.iterdir())]
    )
    parts = [load_run(adapted / m["model"]) for m in members]
    expected = np.mean(
        [Predictor.from_run(m)(resize_batch(cells, m.model.image_size)) for m in parts], axis=0
    )
    np.testing.assert_allclose(Predictor.from_run(run)(cells), expected, atol=1e-6)
