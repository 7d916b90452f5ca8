"""The out-of-domain flag: stain statistics of the training images, a threshold set on them,
and the flag in predict, count and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.imaging.domain import (
    ADVISE_SHARE,
    QUANTILE,
    fit_reference,
    read_reference,
    saturation_summary,
    saturation_warning,
)

from conftest import CLASSES, make_class_folders


def test_threshold_is_the_training_quantile_and_the_mean_is_at_zero():
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(500, 6)) * [5, 1, 1, 2, 0.5, 0.5] + [60, 10, -5, 15, 4, 4]
    reference = fit_reference(vectors)
    distances = reference.distance(vectors)
    assert np.mean(distances > reference.threshold) == pytest.approx(1 - QUANTILE, abs=0.005)
    assert reference.distance(vectors.mean(axis=0))[0] == pytest.approx(0.0, abs=1e-9)
    # scaled per dimension: a step of one std along any axis is about distance 1
    step = vectors.mean(axis=0) + np.array([0, 0, 0, 0, 0.5, 0])
    assert reference.distance(step)[0] == pytest.approx(1.0, rel=0.1)


def tinted(path, out):
    """The crop under another stain: bluer-yellow, darker, less contrast."""
    pixels = np.asarray(Image.open(path)).astype(np.float32)
    pixels = pixels * np.array([1.0, 0.95, 0.55]) * 0.8 + np.array([40, 35, 0])
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out)
    return out


def test_train_writes_the_reference_and_predict_flags_another_stain(tmp_path):
    from wbc.workflows.train import train

    data = tmp_path / "crops"
    make_class_folders(data / "train", {c: 8 for c in CLASSES}, size=(64, 64), seed=1)
    make_class_folders(data / "test", {c: 3 for c in CLASSES}, size=(64, 64), seed=2)
    # The crops are drawn, not cut by the crop stage: crop.mode none, so that predict does not
    # re-cut the small drawn cells (wbc.data.cells.reframe_box) and sees what training saw.
    run_dir = train(
        load_config(overrides=["model.family=features", "crop.mode=none"]),
        run_dir=tmp_path / "run",
        folders=(data / "train", data / "test"),
        echo=lambda _m: None,
    )
    reference = read_reference(run_dir)
    assert reference is not None and reference.images == 32 and reference.threshold > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["out_of_domain"]["flagged"] <= 2  # the same synthetic stain as training

    same = sorted((data / "test").rglob("*.jpg"))
    other = tmp_path / "other"
    other.mkdir()
    strange = [tinted(p, other / f"tinted-{i}.png") for i, p in enumerate(same)]
    result = CliRunner().invoke(
        cli, ["predict", *map(str, same + strange), "--model", str(run_dir), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    rows = {r["file"]: r for r in document["predictions"]}
    assert all(r["confidence"] == r["probability"] for r in rows.values())
    flagged_same = sum(rows[str(p)]["out_of_domain"] for p in same)
    flagged_other = sum(rows[str(p)]["out_of_domain"] for p in strange)
    assert flagged_other == len(strange) and flagged_same <= 1
    assert document["out_of_domain"] == flagged_same + flagged_other
    assert min(rows[str(p)]["stain_distance"] for p in strange) > reference.threshold

    csv_out = CliRunner().invoke(
        cli, ["predict", str(strange[0]), "--model", str(run_dir), "--format", "csv"]
    )
    header, row = csv_out.stdout.splitlines()[:2]
    columns = dict(zip(header.split(","), row.split(",")))
    assert columns["out_of_domain"] == "true" and columns["saturated_background"] == ""

    counted = CliRunner().invoke(cli, ["count", str(other), "--model", str(run_dir)])
    assert counted.exit_code == 0, counted.output
    assert f"{len(strange)} of {len(strange)} cells are out of domain" in counted.output


def test_saturation_warning_counts_images_and_channels_and_needs_a_tenth_of_them():
    per_image = [("red", "green")] * 3 + [("red",)] + [()] * 16
    summary = saturation_summary(per_image)
    assert summary == {"images": 4, "of": 20, "red": 4, "green": 3, "blue": 0}
    warning = saturation_warning(summary)
    assert warning.startswith("warning: 4 of 20 images have a saturated background")
    assert "(red in 4, green in 3)" in warning and "lower the exposure" in warning
    # below the advice's share (one image in 20 is 5%): a stray bright image is not a lab's camera
    assert ADVISE_SHARE > 1 / 20
    assert saturation_warning(saturation_summary([("blue",)] + [()] * 19)) is None
    assert saturation_warning(saturation_summary([()] * 20)) is None
    assert saturation_warning(saturation_summary([])) is None and saturation_warning(None) is None
