"""A lab's own data: class folders, train/val/test folders and a CSV, read by ``wbc prepare``.

Every bad item of issue 22 is built here for real (symlinks out of the root and in a loop, an
empty class folder, the same bytes under two classes, ...) and must become one line of
``skipped.csv`` while the good images go on; a layout that cannot be used is one error line.
"""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import DataError
from wbc.data.layouts import class_name, detect_layout, read_csv_layout
from wbc.data.stages.naming import parse_name
from wbc.data.stages.rename import rename

from conftest import make_raw_folder, tree_hash

FAST = ["rename.find_duplicates=false"]


def cell_image(index: int, rng: np.random.Generator, size: int = 40) -> np.ndarray:
    """A square 'crop' whose blob size and colour depend on its class ``index``."""
    image = np.full((size, size, 3), (226, 192, 205), np.uint8)
    image = np.clip(image + rng.normal(0, 5, image.shape), 0, 255).astype(np.uint8)
    radius = 5 + 2 * (index % 4) + rng.integers(0, 2)
    yy, xx = np.mgrid[:size, :size]
    cy, cx = size // 2 + rng.integers(-3, 4), size // 2 + rng.integers(-3, 4)
    mask = ((yy - cy) / radius) ** 2 + ((xx - cx) / (radius * (1 + index // 4))) ** 2 <= 1
    image[mask] = (90 + 12 * index, 40, 150 - 8 * index)
    return image


def write_classes(root: Path, counts: dict[str, int], seed: int = 0, ext: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    for index, (cls, n) in enumerate(counts.items()):
        (root / cls).mkdir(parents=True, exist_ok=True)
        for k in range(n):
            Image.fromarray(cell_image(index, rng)).save(root / cls / f"cell {k}{ext}")
    return root


def rows(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_class_names_are_normalised_or_refused():
    assert class_name("Band neutrophil") == "BAND_NEUTROPHIL"
    assert class_name("ig") == "IG"
    assert class_name("a/b") is None
    assert class_name("..") is None
    assert class_name("") is None


def test_layouts_are_detected(tmp_path):
    assert detect_layout(make_raw_folder(tmp_path / "dm", {"NEUTROPHIL": 1})) == "dataset-master"
    assert detect_layout(write_classes(tmp_path / "lab", {"A": 1, "B": 1})) == "class-folders"
    (tmp_path / "table").mkdir()
    (tmp_path / "table" / "cells.csv").write_text("file,label\n")
    assert detect_layout(tmp_path / "table") == "csv"
    assert detect_layout(tmp_path / "table" / "cells.csv") == "csv"


def test_class_folders_keep_names_and_list_every_bad_item(tmp_path):
    root = write_classes(tmp_path / "lab", {"basophil": 3, "Eosinophil": 3, "ig": 3})
    outside = tmp_path / "outside.png"
    Image.fromarray(cell_image(0, np.random.default_rng(1))).save(outside)
    (root / "basophil" / "escape.png").symlink_to(outside)
    (root / "basophil" / "loop").symlink_to(root / "basophil", target_is_directory=True)
    (root / "basophil" / "notes.txt").write_text("not an image")
    (root / "basophil" / ".DS_Store").write_bytes(b"\0")
    (root / "empty").mkdir()
    (root / "bad!name").mkdir()
    Image.fromarray(cell_image(1, np.random.default_rng(2))).save(root / "bad!name" / "x.png")
    # the same bytes under two classes, and twice under one
    (root / "ig" / "twin.png").write_bytes((root / "Eosinophil" / "cell 0.png").read_bytes())
    (root / "ig" / "again.png").write_bytes((root / "ig" / "cell 1.png").read_bytes())
    before = tree_hash(root)

    manifest = rename(root, tmp_path / "renamed", load_config(None, FAST))

    assert tree_hash(root) == before  # raw data is only read
    assert manifest.summary["layout"] == "class-folders"
    assert manifest.summary["classes"] == ["BASOPHIL", "EOSINOPHIL", "IG"]
    reasons = {row["file"]: row["reason"] for row in rows(tmp_path / "renamed" / "skipped.csv")}
    assert "outside" in reasons["basophil/escape.png"]
    assert reasons["basophil/loop"] == "symlinked folder, not followed"
    assert reasons["basophil/notes.txt"].startswith("not an image file")
    assert reasons["basophil/.DS_Store"] == "hidden file"
    assert reasons["empty"].startswith("empty class folder")
    assert "not a valid class name" in reasons["bad!name"]
    assert "EOSINOPHIL vs IG" in reasons["ig/twin.png"]
    assert "EOSINOPHIL vs IG" in reasons["Eosinophil/cell 0.png"]
    assert reasons["ig/cell 1.png"] == "same bytes as another file: ig/again.png"
    sources = rows(tmp_path / "renamed" / "sources.csv")
    names = sorted(p.name for p in (tmp_path / "renamed").glob("*.jpg"))
    assert len(names) == len(sources) == 3 + 2 + 3  # two twins out, one copy out
    assert {s["source"] for s in sources} >= {"basophil/cell 0.png", "ig/cell 2.png"}
    for source in sources:  # the sanitised file name carries the source file's name
        parsed = parse_name(source["name"])
        assert parsed.cls == source["class"] and parsed.stem == Path(source["source"]).stem.replace(
            " ", "_"
        )


def test_a_class_with_too_few_images_is_dropped_or_stops_when_asked_for(tmp_path):
    root = write_classes(tmp_path / "lab", {"A": 3, "B": 3, "RARE": 1})
    manifest = rename(root, tmp_path / "renamed", load_config(None, FAST))
    assert manifest.summary["classes"] == ["A", "B"]
    assert "RARE" in manifest.summary["dropped_classes"]
    asked = load_config(None, [*FAST, "rename.classes=[RARE, A]"])
    with pytest.raises(DataError, match="class RARE .*asked for.* 1 usable image"):
        rename(root, tmp_path / "renamed2", asked)
    missing = load_config(None, [*FAST, "rename.classes=[A, MONOCYTE]"])
    with pytest.raises(DataError, match="no images of class MONOCYTE"):
        rename(root, tmp_path / "renamed3", missing)
    ordered = rename(
        root, tmp_path / "renamed4", load_config(None, [*FAST, "rename.classes=[B, A]"])
    )
    assert ordered.summary["classes"] == ["B", "A"]


def test_given_split_is_kept(tmp_path):
    write_classes(tmp_path / "lab" / "train", {"A": 4, "B": 4}, seed=1)
    write_classes(tmp_path / "lab" / "val", {"A": 2, "B": 2}, seed=2)
    data = tmp_path / "data"
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            "--raw",
            str(tmp_path / "lab"),
            "--data-dir",
            str(data),
            "--set",
            "augment.per_class=6",
            *sum((["--set", s] for s in FAST), []),
        ],
    )
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0].startswith("layout: class-folders")
    assert "own train/val/test split is kept" in result.output
    sources = {s["name"]: s for s in rows(data / "interim" / "renamed" / "sources.csv")}
    for side, wanted in (("train", "train"), ("test", "val")):
        for path in (data / "processed" / "split" / side).rglob("*.jpg"):
            name = parse_name(path.name)
            if name.copy is None:
                original = f"{name.cls}.{name.source_id}-{name.stem}.jpg"
                assert sources[original]["source"].startswith(wanted + "/")
    assert len(list((data / "processed" / "split" / "test").rglob("*.jpg"))) == 4


def test_csv_layout_with_groups_and_bad_rows(tmp_path):
    root = write_classes(tmp_path / "lab" / "images", {"A": 6, "B": 6})
    (tmp_path / "secret.png").write_bytes((root / "A" / "cell 0.png").read_bytes())
    lines = ["File Name;Cell;Patient"]
    for cls in ("A", "B"):
        for k in range(6):
            lines.append(f"images/{cls}/cell {k}.png;{cls.lower()};p{k % 3}")
    lines += ["images/A/missing.png;a;p0", "../secret.png;a;p1", "images/A/cell 1.png;a/b;p1"]
    table = tmp_path / "lab" / "cells.csv"
    table.write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match="cells.csv: expected a file column"):
        read_csv_layout(table)
    config = load_config(
        None,
        [
            *FAST,
            "rename.file_column=File Name",
            "rename.label_column=cell",
            "rename.group_column=patient",
        ],
    )
    manifest = rename(table, tmp_path / "renamed", config)
    reasons = [row["reason"] for row in rows(tmp_path / "renamed" / "skipped.csv")]
    assert any(r.startswith("file not found: images/A/missing.png") for r in reasons)
    assert any(r.startswith("path outside the CSV's folder") for r in reasons)
    assert any("'a/b' is not a valid class name" in r for r in reasons)
    assert manifest.summary["groups_from"] == "CSV group column"
    groups = {int(r["id"]): r["group"] for r in rows(tmp_path / "renamed" / "groups.csv")}
    sources = rows(tmp_path / "renamed" / "sources.csv")
    patient = {int(s["id"]): s["group"] for s in sources}
    for a in groups:  # one group per patient, across both classes
        for b in groups:
            assert (groups[a] == groups[b]) == (patient[a] == patient[b])


def test_patients_never_straddle_the_split(tmp_path):
    write_classes(tmp_path / "lab", {"A": 1, "B": 1})
    for cls in ("A", "B"):
        for patient in range(6):
            folder = tmp_path / "lab" / cls / f"patient_{patient}"
            write_classes(folder.parent.parent / "tmp", {"X": 3}, seed=patient + 10 * (cls == "B"))
            folder.mkdir()
            for path in (folder.parent.parent / "tmp" / "X").iterdir():
                path.rename(folder / path.name)
            (folder.parent.parent / "tmp" / "X").rmdir()
            (folder.parent.parent / "tmp").rmdir()
    data = tmp_path / "data"
    sets = ["augment.per_class=20", "rename.group_by_subfolder=true", "split.test_fraction=0.3"]
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            "--raw",
            str(tmp_path / "lab"),
            "--data-dir",
            str(data),
            "--stage",
            "rename",
            *sum((["--set", s] for s in [*FAST, *sets]), []),
        ],
    )
    assert result.exit_code == 0, result.output
    for stage in ("crop", "augment", "split"):
        result = CliRunner().invoke(
            cli,
            [
                "prepare",
                "--data-dir",
                str(data),
                "--stage",
                stage,
                *sum((["--set", s] for s in [*FAST, *sets]), []),
            ],
        )
        assert result.exit_code == 0, result.output
    sources = {int(s["id"]): s["source"] for s in rows(data / "interim/renamed/sources.csv")}

    def patients(side):
        found = set()
        for path in (data / "processed" / "split" / side).rglob("*.jpg"):
            source = sources[parse_name(path.name).source_id]
            found.add(source.split("/")[1] if source.count("/") == 2 else source)
        return found

    train, test = patients("train"), patients("test")
    assert test and not (train & test)


def test_a_target_for_a_class_the_data_lacks_is_one_line(tmp_path):
    root = write_classes(tmp_path / "lab", {"A": 3, "B": 3})
    result = CliRunner().invoke(
        cli,
        [
            "prepare",
            "--raw",
            str(root),
            "--data-dir",
            str(tmp_path / "d"),
            "--set",
            "rename.find_duplicates=false",
            "--set",
            "augment.per_class_targets={NOPE: 5}",
        ],
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "augment.per_class_targets: no class NOPE" in result.output


def test_bad_layouts_are_one_line_errors(tmp_path):
    (tmp_path / "lab").mkdir()
    (tmp_path / "lab" / "cells.csv").write_text("a,b\nx.png,A\n")
    runner = CliRunner()
    result = runner.invoke(
        cli, ["prepare", "--raw", str(tmp_path / "lab"), "--data-dir", str(tmp_path / "d")]
    )
    assert result.exit_code == 1
    assert "cells.csv: expected a file column" in result.output
    assert "Traceback" not in result.output
    (tmp_path / "one").mkdir()
    write_classes(tmp_path / "one", {"ONLY": 3})
    result = runner.invoke(
        cli,
        [
            "prepare",
            "--raw",
            str(tmp_path / "one"),
            "--data-dir",
            str(tmp_path / "d2"),
            "--set",
            "rename.find_duplicates=false",
        ],
    )
    assert result.exit_code == 1
    assert "a classifier needs two or more" in result.output
    assert "Traceback" not in result.output


def test_a_folder_of_100000_files_is_listed_and_summarised(tmp_path):
    root = write_classes(tmp_path / "lab", {"A": 2, "B": 2})
    junk = root / "A"
    for k in range(100_000):
        (junk / f"export_{k}.xml").touch()
    manifest = rename(root, tmp_path / "renamed", load_config(None, FAST))
    assert manifest.summary["kept"] == 4
    assert manifest.summary["skipped_reasons"] == {"not an image file": 100_000}


def test_eight_classes_prepare_train_predict_and_count(tmp_path):
    names = [
        "BASOPHIL",
        "EOSINOPHIL",
        "ERYTHROBLAST",
        "IG",
        "LYMPHOCYTE",
        "MONOCYTE",
        "NEUTROPHIL",
        "PLATELET",
    ]
    root = write_classes(tmp_path / "pbc", dict.fromkeys(names, 5), ext=".jpg")
    data, run = tmp_path / "data", tmp_path / "run"
    sets = [
        *FAST,
        "augment.per_class=8",
        "subsets.small=8",
        "subsets.medium=8",
        "subsets.full=8",
        "split.test_fraction=0.2",
    ]
    options = sum((["--set", s] for s in sets), [])
    runner = CliRunner()
    result = runner.invoke(cli, ["prepare", "--raw", str(root), "--data-dir", str(data), *options])
    assert result.exit_code == 0, result.output
    # every image is a square crop: none is searched as a smear, each is kept or re-cut
    found = re.search(
        r"crop: 0 cut from boxes, 0 by the detector, 0 centre squares .*; "
        r"crops (\d+) kept whole, (\d+) re-cut around their cell",
        result.output,
    )
    assert found and int(found[1]) + int(found[2]) == 40, result.output
    result = runner.invoke(
        cli,
        ["train", "--data-dir", str(data), "--run-dir", str(run), "--subset", "small", *options],
    )
    assert result.exit_code == 0, result.output
    assert json.loads((run / "classes.json").read_text()) == names
    metrics = json.loads((run / "metrics.json").read_text())
    assert sorted(metrics["per_class"]) == sorted(names)
    info = json.loads((run / "run.json").read_text())
    assert info["data"]["layout"] == "class-folders" and info["data"]["classes"] == names
    card = (run / "MODEL_CARD.md").read_text()
    assert "class-folders layout" in card and "PLATELET" in card
    result = runner.invoke(
        cli, ["predict", str(root / "PLATELET"), "--model", str(run), "--format", "json"]
    )
    assert result.exit_code == 0, result.output
    document = json.loads(result.output)
    assert document["classes"] == names and document["failed"] == 0
    assert {row["class"] for row in document["predictions"]} <= set(names)
    assert all(len(row["probabilities"]) == 8 for row in document["predictions"])
    result = runner.invoke(cli, ["count", str(root / "IG"), "--model", str(run)])
    assert result.exit_code == 0, result.output
    assert "PLATELET" in result.output
