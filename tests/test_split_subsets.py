from pathlib import Path

import pytest

from wbc.core.config import load_config
from wbc.core.manifest import run_stage
from wbc.data.stages.naming import copy_name, original_name, parse_name
from wbc.data.stages.split import n_test_sources, split
from wbc.data.stages.subsets import subsets

SOURCES = {"NEUTROPHIL": 40, "EOSINOPHIL": 20, "LYMPHOCYTE": 10, "MONOCYTE": 5}
COPIES = 9  # per source


def fake_augmented(root: Path) -> Path:
    """An augment-stage folder: originals and copies with distinct bytes, and a manifest."""

    def build(tmp):
        image_id = 0
        for cls, n in SOURCES.items():
            (tmp / cls).mkdir()
            for _ in range(n):
                (tmp / cls / original_name(cls, image_id)).write_text(f"{cls}{image_id}")
                for k in range(COPIES):
                    (tmp / cls / copy_name(cls, image_id, k)).write_text(f"{cls}{image_id}a{k}")
                image_id += 1
        return {}

    run_stage("augment", root, {}, {}, build)
    return root


def side_ids(root: Path, side: str) -> set[int]:
    return {parse_name(p.name).source_id for p in (root / side).rglob("*.jpg")}


def test_grouped_split_keeps_every_source_on_one_side(tmp_path):
    src = fake_augmented(tmp_path / "augmented")
    manifest = split(src, tmp_path / "split", load_config())
    assert side_ids(tmp_path / "split", "train").isdisjoint(side_ids(tmp_path / "split", "test"))
    assert manifest.summary["sources_on_both_sides"] == 0
    test_files = list((tmp_path / "split" / "test").rglob("*.jpg"))
    assert test_files and all(parse_name(p.name).copy is None for p in test_files)
    counts = manifest.summary["counts"]
    assert counts["NEUTROPHIL"]["test"] == 4 and counts["MONOCYTE"]["test"] == 1
    assert counts["NEUTROPHIL"]["train"] == 36 * (COPIES + 1)
    recorded = manifest.summary["source_ids"]["MONOCYTE"]
    assert len(recorded["train"]) == 4 and len(recorded["test"]) == 1


def test_grouped_split_keeps_duplicate_groups_together(tmp_path):
    src = fake_augmented(tmp_path / "augmented")
    groups = tmp_path / "groups.csv"
    # Sources 0..5 of NEUTROPHIL form one group of six: too big for a 4-image test side alone.
    groups.write_text("id,group\n" + "".join(f"{i},0\n" for i in range(6)))
    for seed in range(8):
        config = load_config(overrides=[f"seed={seed}"])
        manifest = split(src, tmp_path / f"s{seed}", config, groups_csv=groups)
        train = side_ids(tmp_path / f"s{seed}", "train")
        test = side_ids(tmp_path / f"s{seed}", "test")
        assert set(range(6)) <= train or set(range(6)) <= test
        assert manifest.summary["sources_on_both_sides"] == 0


def test_report_protocol_is_the_studys_leaky_split(tmp_path):
    src = fake_augmented(tmp_path / "augmented")
    manifest = split(src, tmp_path / "split", load_config(overrides=["split.protocol=report"]))
    counts = manifest.summary["counts"]
    assert counts["NEUTROPHIL"] == {"train": 360, "test": 40}
    assert manifest.summary["sources_on_both_sides"] > 0


def test_split_is_deterministic_and_skips_rerun(tmp_path):
    src = fake_augmented(tmp_path / "augmented")
    first = split(src, tmp_path / "a", load_config())
    second = split(src, tmp_path / "b", load_config())
    assert first.outputs == second.outputs
    assert split(src, tmp_path / "a", load_config()).skipped
    third = split(src, tmp_path / "c", load_config(overrides=["seed=7"]))
    assert third.outputs != first.outputs


def test_split_without_augment_output_names_the_stage(tmp_path):
    from wbc.core.errors import DataError

    with pytest.raises(DataError, match="wbc prepare --stage augment"):
        split(tmp_path / "missing", tmp_path / "split", load_config())


@pytest.mark.parametrize("n, expected", [(0, 0), (1, 0), (2, 1), (5, 1), (16, 2), (166, 17)])
def test_n_test_sources(n, expected):
    assert n_test_sources(n, 0.1) == expected


def test_subsets_are_nested_and_report_shortfalls(tmp_path):
    src = fake_augmented(tmp_path / "augmented")
    split(src, tmp_path / "split", load_config())
    config = load_config(overrides=["subsets.small=20", "subsets.medium=60", "subsets.full=100"])
    manifests = subsets(tmp_path / "split", tmp_path / "processed", config)
    small = manifests["small"].summary["counts"]
    assert small["NEUTROPHIL"] == {"train": 18, "test": 2}
    full = manifests["full"].summary["counts"]
    assert full["MONOCYTE"]["test"] == 1  # only one monocyte source on the grouped test side
    assert any("test/MONOCYTE: 1 of 10" in s for s in manifests["full"].summary["shortfalls"])
    for side in ("train", "test"):
        names = {
            name: {p.name for p in (tmp_path / "processed" / name / side).rglob("*.jpg")}
            for name in ("small", "medium", "full")
        }
        assert names["small"] <= names["medium"] <= names["full"]
    again = subsets(tmp_path / "split", tmp_path / "processed", config)
    assert all(m.skipped for m in again.values())
