"""wbc bench: every section runs (``tiny`` plan, generated images) and produces its figures.

The figures' values are not checked (they measure the machine), only that each section's rows
and keys are there and hold finite numbers, and that the report table renders them.
"""

from __future__ import annotations

import json
import math

import pytest

from benchmarks import bench
from wbc.core.config import load_config

from conftest import STUDY_CONFIG, make_raw_folder


def _numbers(value) -> list[float]:
    if isinstance(value, bool):
        return []
    if isinstance(value, (int, float)):
        return [value]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _numbers(v)]
    if isinstance(value, (list, tuple)):
        return [n for v in value for n in _numbers(v)]
    return []


def _finite(result: dict, *paths: str) -> None:
    """Each dotted ``path`` of ``result`` is a finite number; so is every number in it."""
    for path in paths:
        value = result
        for key in path.split("."):
            assert key in value, f"{path}: missing"
            value = value[key]
        assert isinstance(value, (int, float)) and not isinstance(value, bool), path
        assert math.isfinite(value), f"{path} = {value}"
    bad = [n for n in _numbers(result) if not math.isfinite(n)]
    assert not bad, bad


IN_PROCESS = (
    "matmul",
    "train",
    "checkpoint",
    "augment",
    "predict",
    "families",
    "memory",
    "duplicates",
    "scale",
)


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory) -> tuple[dict, dict]:
    """``wbc bench --tiny`` once for every section but cli (which runs through ``main`` below):
    the results as returned and as written to the JSON file."""
    json_path = tmp_path_factory.mktemp("bench") / "bench.json"
    results = bench.run(tiny=True, only=list(IN_PROCESS), json_path=json_path, echo=lambda _m: None)
    written = json.loads(json_path.read_text(encoding="utf-8"))
    assert list(written["sections"]) == list(IN_PROCESS)
    assert written["plan"]["name"] == "tiny"
    assert written["versions"]["tensorflow"]
    return results, written


def run_section(tiny_bench: tuple[dict, dict], section: str) -> tuple[dict, str]:
    """One section's results from the shared tiny run, and the report table."""
    results, written = tiny_bench
    result = written["sections"][section]
    _finite(result, "seconds")
    return result, bench.table(results)


def test_study_recipe_is_configs_study_yaml():
    """The train, predict and memory sections pin the study's CNN without configs/."""
    assert bench.study_config().to_dict() == load_config(STUDY_CONFIG).to_dict()


def test_source_images_from_a_raw_folder(tmp_path):
    raw = make_raw_folder(tmp_path / "dataset-master", {"NEUTROPHIL": 2, "MONOCYTE": 1})
    paths, label = bench.source_images(tmp_path / "work", raw, 8, lambda _m: None)
    assert len(paths) == 3 and all(p.is_file() for p in paths)
    assert "real JPEGs" in label


def test_cli_section_through_main(tmp_path, capsys):
    json_path = tmp_path / "bench.json"
    assert bench.main(["--tiny", "--only", "cli", "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "wbc bench (tiny)" in out and "wbc --help wall time" in out
    result = json.loads(json_path.read_text(encoding="utf-8"))["sections"]["cli"]
    _finite(result, "help_seconds", "python_startup_seconds")
    assert len(result["help_seconds_all"]) == bench.TINY.cli_repeats


def test_matmul_section(tiny_bench):
    result, text = run_section(tiny_bench, "matmul")
    _finite(
        result,
        "numpy_gflops",
        "tensorflow_gflops",
        "peak_gflops",
        "peak_gflops_per_cpu_s",
    )
    assert "matmul float32 256^2, numpy" in text


@pytest.mark.slow  # trains the study's model for a few steps on each feed
def test_train_section(tiny_bench):
    result, text = run_section(tiny_bench, "train")
    for feed in bench.FEEDS:
        _finite(
            result["feeds"][feed],
            "images_per_s",
            "images_per_cpu_s",
            "setup_s",
            "full_recipe_hours",
        )
        assert result["feeds"][feed]["label"] in text
    _finite(
        result,
        "project_vs_in_memory.of_medians",
        "project_vs_flow_from_directory.cpu",
        "flops.training_mflop",
        "derived.project_gflops",
    )
    assert result["parameters"] == 96_308  # the study's CNN, whatever the default family
    assert "project_vs_in_memory" in text


@pytest.mark.slow
def test_checkpoint_section(tiny_bench):
    result, text = run_section(tiny_bench, "checkpoint")
    _finite(result, "now_ms", "before_ms", "extra_ms", "epoch_seconds", "extra_share_full")
    assert result["now_ms"] > 0 and result["before_ms"] > 0 and result["repeats"] == 3
    assert "per-epoch writes, study model" in text and "extra share of an epoch" in text


def test_augment_section(tiny_bench):
    result, text = run_section(tiny_bench, "augment")
    for engine in ("imagedatagenerator", "opencv"):
        _finite(
            result["engines"][engine],
            "one_process_per_s",
            "one_process_per_cpu_s",
            "parallel_per_s",
            "parallel_per_cpu_s",
            "transform_only_per_s",
        )
    _finite(result, "parallel_idg_vs_one_process", "opencv_vs_idg", "pool_startup_s")
    assert "augment 640x480 OpenCV: stage pool" in text


@pytest.mark.slow  # trains a study-recipe run for one epoch
def test_predict_section(tiny_bench):
    result, text = run_section(tiny_bench, "predict")
    _finite(
        result,
        "single_image_ms_median",
        "single_image_tf_function_ms_median",
        "model_predict_ms_median",
        "predict_images_per_s",
        "decode_only_images_per_s",
        "ratio",
        "ratio_cpu_time",
    )
    assert result["images"] == bench.TINY.predict_images and result["failed"] == 0
    assert "predict: one image in process" in text and "ratio predict / decode-only" in text


@pytest.mark.slow  # fits the default recipe (features, stain normalised) on a few crops
def test_families_section(tiny_bench):
    result, text = run_section(tiny_bench, "families")
    assert list(result["recipes"]) == list(bench.TINY.family_recipes)
    for name, recipe in result["recipes"].items():
        _finite(recipe, "ms_per_cell")
        assert f"crops: {name} (" in text
    _finite(result, "slowest_ms_per_cell")
    assert "slowest_recipe_ms_per_cell" in text
    # the default recipe adapted without labels: a run wbc adapt wrote, and on the sample
    adapted = result["adapted"]
    assert bench.RECIPES[adapted["recipe"]] == [f"model.family={load_config().model.family}"]
    assert adapted["parts"][0] == "standardisation"
    _finite(adapted, "run_ms_per_cell", "on_sample_ms_per_cell")
    assert "adapted_default_ms_per_cell" in text and "adapted by wbc adapt" in text


@pytest.mark.slow  # wbc train (the study recipe) in a subprocess
def test_memory_section(tiny_bench):
    result, text = run_section(tiny_bench, "memory")
    _finite(result, "peak_rss_gib", "uint8_cache_gib", "wall_s")
    assert result["peak_rss_gib"] > 0 and not result["full_size"]
    assert "--config" in result["command"]
    assert "peak RSS, wbc train on" in text


def test_duplicates_section(tiny_bench):
    result, text = run_section(tiny_bench, "duplicates")
    assert result["sizes"] == list(bench.TINY.duplicate_sizes)
    for n in bench.TINY.duplicate_sizes:
        run = result["runs"][str(n)]
        _finite(run, "wall_s", "cpu_s", "rss_peak_mib", "rss_growth_mib", "ms_per_image")
        assert run["images"] == n and run["planted"] > 0
        assert run["planted_found"] == run["planted"] and run["wrong_pairs"] == 0
    _finite(result, "time_ratio", "cpu_ratio", "memory_ratio", "planted_found_share")
    assert "duplicates: ratio 160 / 40 crops" in text


@pytest.mark.slow  # wbc prepare and wbc train in subprocesses
def test_scale_section(tiny_bench):
    result, text = run_section(tiny_bench, "scale")
    assert result["crops"] == bench.TINY.scale_crops and not result["full_size"]
    _finite(result, "minutes", "cpu_minutes", "peak_rss_gib")
    assert result["kept"] > 0 and result["train_images"] > 0
    assert set(result["stage_seconds"]) == {"rename", "crop", "augment", "split"}
    assert "scale: wbc prepare + train (default) on 40 crops" in text


def test_crop_folders_are_seeded_class_folders(tmp_path):
    from benchmarks.crops import CLASSES, write_crop_folders

    first = write_crop_folders(tmp_path / "a", 12, seed=5, duplicates=0.3)
    again = write_crop_folders(tmp_path / "b", 12, seed=5, duplicates=0.3)
    assert sorted(p.parent.name for p in first.paths) == sorted(CLASSES * 3)
    assert all(p.parent.parent == tmp_path / "a" for p in first.paths)
    assert [p.name for p in first.paths] == [p.name for p in again.paths]
    assert all(a.read_bytes() == b.read_bytes() for a, b in zip(first.paths, again.paths))
    assert first.pairs and all(a.parent == b.parent for a, b, _ in first.pairs)  # same class


def test_the_cli_offers_every_section():
    from wbc.cli import cli

    only = next(p for p in cli.commands["bench"].params if p.name == "only")
    assert list(only.type.choices) == list(bench.SECTIONS)
