"""End to end on another lab's own class folders ($WBC_LAB: tecom-crops; required when CI is set)
and a five-class run of the real dataset-master ($WBC_RAW) with basophil kept.

No file is renamed by hand: ``wbc prepare --raw`` reads the folders as they are.
"""

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbc.cli import cli

from conftest import tree_hash

pytestmark = pytest.mark.realdata
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def expected_lab_counts(root: Path) -> Counter:
    """Images per class folder, with files of the same bytes counted once (an independent
    count: wbc skips a second copy of the same file)."""
    seen, counts = set(), Counter()
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in SUFFIXES:
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
                if digest not in seen:
                    seen.add(digest)
                    counts[folder.name.upper()] += 1
    return counts


# Every crop is read, renamed and cut; only the augmented copies and the subset are capped
# (the commands, not the default's accuracy, are under test).
SMALL = ["--set", "augment.per_class=60", "--set", "subsets.small=60"]


def test_a_labs_class_folders_prepare_train_evaluate_predict_and_export(real_lab, tmp_path):
    before = tree_hash(real_lab)
    data, run = tmp_path / "lab", tmp_path / "run"
    runner = CliRunner()
    result = runner.invoke(
        cli, ["prepare", "--raw", str(real_lab), "--data-dir", str(data), *SMALL]
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("layout: class-folders")
    summary = json.loads((data / "interim/renamed/manifest.json").read_text())["summary"]
    expected = expected_lab_counts(real_lab)
    # same-field duplicates with two labels are dropped too: never more than the folders hold
    assert summary["classes"] == sorted(expected)
    assert all(0 < summary["counts"][c] <= expected[c] for c in expected)

    result = runner.invoke(
        cli,
        ["train", "--data-dir", str(data), "--subset", "small", "--run-dir", str(run), *SMALL],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "classes.json").read_text()) == sorted(expected)
    assert json.loads((run / "run.json").read_text())["data"]["layout"] == "class-folders"

    test_side = data / "processed/small/test"
    result = runner.invoke(
        cli, ["evaluate", "--model", str(run), "--data", str(test_side), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["n_images"] == len(list(test_side.rglob("*.jpg")))

    some = sorted((real_lab / "MONOCYTE").iterdir())[:3]
    result = runner.invoke(
        cli, ["predict", *map(str, some), "--model", str(run), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["predictions"]
    assert [Path(r["file"]).name for r in rows] == [p.name for p in some]
    assert all(r["class"] in expected for r in rows)
    # tecom's camera clips its yellow background in red (298 of 299 crops): the check sees it
    assert all("red" in r["saturated_background"] for r in rows)
    assert "saturated background" in result.stderr

    result = runner.invoke(
        cli, ["export", str(run), "--format", "onnx", "--output", str(tmp_path / "m.onnx")]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "m.onnx").is_file()
    assert tree_hash(real_lab) == before


def test_five_classes_from_dataset_master_with_basophil_kept(real_raw, tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    five = "rename.classes=[NEUTROPHIL, EOSINOPHIL, LYMPHOCYTE, MONOCYTE, BASOPHIL]"
    sets = [five, "augment.per_class=30", "subsets.small=30"]
    options = sum((["--set", s] for s in sets), [])
    runner = CliRunner()
    result = runner.invoke(
        cli, ["prepare", "--raw", str(real_raw), "--data-dir", str(data), *options]
    )
    assert result.exit_code == 0, result.output
    counts = json.loads((data / "interim/renamed/manifest.json").read_text())["summary"]["counts"]
    assert list(counts) == ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "BASOPHIL"]
    assert counts["BASOPHIL"] >= 2
    result = runner.invoke(
        cli,
        ["train", "--data-dir", str(data), "--subset", "small", "--run-dir", str(run), *options],
    )
    assert result.exit_code == 0, result.output
    classes = json.loads((run / "classes.json").read_text())
    assert sorted(classes) == sorted(counts)
    assert "BASOPHIL" in json.loads((run / "metrics.json").read_text())["per_class"]
