"""End to end on the real dataset-master folder ($WBC_RAW; required when CI is set).

Small settings (40 images per class, one epoch) keep it to a few minutes on 2 cores while still
exercising every stage, the real labels.csv quirks and the real images.
"""

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.data.stages.naming import parse_name

from conftest import tree_hash

pytestmark = pytest.mark.realdata

CLASSES = ("NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE")
SMALL = [
    "--set",
    "augment.per_class=40",
    "--set",
    "subsets.small=40",
    "--set",
    "subsets.medium=40",
    "--set",
    "subsets.full=40",
]


def expected_counts(raw):
    """Single-class rows of the four classes with an image, computed independently of wbc."""
    labels = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
    counts = dict.fromkeys(CLASSES, 0)
    for image, category in zip(labels["Image"], labels["Category"]):
        parts = [c.strip() for c in category.split(",") if c.strip()]
        exists = (raw / "JPEGImages" / f"BloodImage_{int(image):05d}.jpg").is_file()
        if len(parts) == 1 and parts[0] in counts and exists:
            counts[parts[0]] += 1
    return counts


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, real_raw):
    raw = real_raw
    data = tmp_path_factory.mktemp("real") / "data"
    before = tree_hash(raw)
    result = CliRunner().invoke(
        cli, ["prepare", "--raw", str(raw), "--data-dir", str(data), *SMALL]
    )
    assert result.exit_code == 0, result.output
    return raw, data, before, result.output


def test_rename_counts_match_labels_csv(prepared):
    raw, data, _, _ = prepared
    manifest = json.loads((data / "interim/renamed/manifest.json").read_text())
    skipped = pd.read_csv(data / "interim/renamed/skipped.csv", dtype=str, keep_default_na=False)
    conflicts = skipped[skipped["reason"].str.contains("different label")]
    dropped = {c: 0 for c in CLASSES}
    for image_id in conflicts["id"]:
        label = pd.read_csv(raw / "labels.csv", dtype=str, keep_default_na=False)
        category = label.loc[label["Image"] == image_id, "Category"].iloc[0].strip()
        dropped[category] += 1
    expected = {c: n - dropped[c] for c, n in expected_counts(raw).items()}
    assert manifest["summary"]["counts"] == expected
    files = list((data / "interim/renamed").glob("*.jpg"))
    assert len(files) == sum(expected.values())


def test_grouped_split_has_no_source_on_both_sides(prepared):
    _, data, _, _ = prepared
    split = data / "processed/split"
    train = {parse_name(p.name).source_id for p in (split / "train").rglob("*.jpg")}
    test = {parse_name(p.name).source_id for p in (split / "test").rglob("*.jpg")}
    assert train and test and train.isdisjoint(test)
    groups = pd.read_csv(data / "interim/renamed/groups.csv")
    for _, members in groups.groupby("group"):
        ids = set(members["id"])
        assert ids <= train or ids <= test or not (ids & (train | test))


def test_every_class_is_augmented_to_the_target(prepared):
    _, data, _, _ = prepared
    renamed = json.loads((data / "interim/renamed/manifest.json").read_text())["summary"]["counts"]
    for cls in CLASSES:
        files = list((data / "interim/augmented" / cls).glob("*.jpg"))
        originals = [p for p in files if parse_name(p.name).copy is None]
        assert len(originals) == renamed[cls]
        assert len(files) == max(40, renamed[cls])  # originals are all kept, even above the target


def test_raw_folder_is_unchanged(prepared):
    raw, _, before, _ = prepared
    assert tree_hash(raw) == before


STUDY = str(Path(__file__).resolve().parents[1] / "configs" / "study.yaml")
RECIPES = {
    # the default recipe (features, white balance): one step, no epochs
    "default": ([], ("model.skops", "domain.json", "MODEL_CARD.md")),
    # the study's CNN, one epoch on the prepared crops
    "study": (
        ["--config", STUDY, "--epochs", "1"],
        ("model.keras", "last.keras", "history.csv", "curves.png", "MODEL_CARD.md"),
    ),
}


@pytest.mark.parametrize("recipe", list(RECIPES))
def test_train_on_the_small_subset_then_evaluate_and_predict(prepared, tmp_path, recipe):
    raw, data, _, _ = prepared
    run_dir = tmp_path / "run"
    extra, files = RECIPES[recipe]
    result = CliRunner().invoke(
        cli,
        ["train", *extra, "--data-dir", str(data), "--subset", "small", "--run-dir", str(run_dir)],
    )
    assert result.exit_code == 0, result.output
    for name in (*files, "config.yaml", "classes.json", "metrics.json", "confusion_matrix.png"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    test_images = len(list((data / "processed/small/test").rglob("*.jpg")))
    assert metrics["n_images"] == test_images
    evaluated = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "--model",
            str(run_dir),
            "--data",
            str(data / "processed/small/test"),
            "--format",
            "json",
        ],
    )
    assert evaluated.exit_code == 0, evaluated.output
    assert json.loads(evaluated.stdout)["n_images"] == test_images
    image = raw / "JPEGImages" / "BloodImage_00000.jpg"
    predicted = CliRunner().invoke(
        cli, ["predict", str(image), "--model", str(run_dir), "--format", "json"]
    )
    assert predicted.exit_code == 0, predicted.output
    rows = json.loads(predicted.stdout)
    rows = rows if isinstance(rows, list) else rows["predictions"]
    assert len(rows) == 1 and rows[0]["class"] in CLASSES
