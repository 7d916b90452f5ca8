"""wbc tune: grid expansion and key validation, sorted and resumable results, --cv scoring.

Training is replaced by a stub that writes a run's metrics.json and history.csv with known
numbers, so the ranking is checkable and the file needs no TensorFlow. How tune reads a REAL run
folder is checked in tests/test_cv.py, on the fold that really trains there.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import ConfigError
from wbc.workflows.tune import cell_config, cell_id, expand_grid, read_grid, sort_rows, tune

from conftest import CLASSES, make_class_folders

BASE = ["train.image_size=[40,48]", "train.patience=null", "train.batch_size=8"]


def _grid(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "grid.yaml"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tune")
    make_class_folders(root / "processed/small/train", {c: 6 for c in CLASSES}, seed=1)
    make_class_folders(root / "processed/small/test", {c: 2 for c in CLASSES}, seed=2)
    return root


def _stub_train(calls: list):
    """Stands in for wbc.workflows.train.train: val accuracy rises with dense_units, falls with
    lr."""

    def fake(config, data_dir=None, run_dir=None, resume_dir=None, echo=print, **kwargs):
        from wbc.core.runfolder import write_history_rows

        calls.append(Path(run_dir))
        score = config.model.dense_units / 100 - config.train.learning_rate
        rows = [
            {
                "epoch": e,
                "loss": 1.0,
                "accuracy": 0.5,
                "val_loss": 1.0 - score + e / 10,
                "val_accuracy": score - e / 100,
                "lr": config.train.learning_rate,
                "seconds": 0.1,
            }
            for e in range(config.train.epochs)
        ]
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        write_history_rows(run_dir / "history.csv", rows)
        (run_dir / "metrics.json").write_text(
            json.dumps(
                {
                    "macro_f1": score,
                    "epochs_run": config.train.epochs,
                    "wall_seconds": 1.5,
                    "collapsed": False,
                }
            )
        )
        return run_dir

    return fake


GRID = "model.dense_units: [16, 64]\ntrain.learning_rate: [0.01, 0.001]\n"


# --------------------------------------------------------------------------- the grid (pure)


def test_grid_expands_to_the_cross_product_in_file_order(tmp_path):
    grid = read_grid(
        _grid(
            tmp_path,
            "model.filters: [[8, 8], [4, 8, 8]]\n"
            "train.optimizer: [adam, rmsprop, nadam]\n"
            "model.dropout: none\n",
        )
    )
    assert grid == {
        "model.filters": [[8, 8], [4, 8, 8]],
        "train.optimizer": ["adam", "rmsprop", "nadam"],
        "model.dropout": ["none"],
    }
    cells = expand_grid(grid)
    assert len(cells) == 6
    assert cells[0] == {"model.filters": [8, 8], "train.optimizer": "adam", "model.dropout": "none"}
    assert cells[1]["train.optimizer"] == "rmsprop"  # the last key varies fastest
    assert len({json.dumps(c, sort_keys=True) for c in cells}) == 6
    config = cell_config(load_config(), cells[-1], "cell")
    assert config.model.filters == (4, 8, 8) and config.train.optimizer == "nadam"


def test_shipped_grid_is_valid():
    root = Path(__file__).resolve().parents[1]
    grid = read_grid(root / "configs" / "grid.yaml")
    cells = expand_grid(grid)
    assert len(cells) == 64
    for cell in cells[:3]:
        cell_config(load_config(), cell, "cell")


@pytest.mark.parametrize(
    "text, message",
    [
        (
            "model.dens_units: [1, 2]\n",
            r"unknown config key 'model.dens_units' \(did you mean 'dense_units'\?\)",
        ),
        (
            "modle.dense_units: [1, 2]\n",
            r"unknown config key 'modle.dense_units' \(did you mean 'model'\?\)",
        ),
        ("model: [1, 2]\n", r"'model' is a section"),
        ("model:\n  dense_units: [1, 2]\n", r"use dotted keys"),
        ("model.dense_units.x: [1]\n", r"'model.dense_units' is a value, not a section"),
        ("augment.per_class: [10, 20]\n", r"augment.\* only with --cv"),
        ("split.test_fraction: [0.1, 0.2]\n", r"fixed by `wbc prepare`"),
        ("model.dense_units: []\n", r"empty list"),
        ("", r"empty grid"),
    ],
)
def test_bad_grid_keys_are_clear_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message) as info:
        read_grid(_grid(tmp_path, text))
    assert "grid.yaml" in str(info.value)


def test_augment_keys_are_tunable_under_cv(tmp_path):
    grid = read_grid(
        _grid(
            tmp_path,
            "augment.per_class_targets.MONOCYTE: [10, 20]\ntrain.class_weight: [none, balanced]\n",
        ),
        cv=True,
    )
    cells = expand_grid(grid)
    config = cell_config(load_config(), cells[3], "cell")
    assert config.augment.per_class_targets == {"MONOCYTE": 20}
    assert config.train.class_weight == "balanced"


def test_bad_cell_values_name_the_cell(tmp_path):
    grid = read_grid(_grid(tmp_path, "model.filters: [8, 16]\n"))
    with pytest.raises(
        ConfigError, match=r"cell 1.*model.filters: expected a list.*list value is written"
    ):
        tune(
            load_config(),
            tmp_path / "grid.yaml",
            data_dir=tmp_path,
            out=tmp_path / "out",
            echo=lambda _: None,
        )
    assert grid
    _grid(tmp_path, "train.optimizer: [adam, sgd]\n")
    with pytest.raises(ConfigError, match=r"cell 2 \(train.optimizer=sgd\).*not one of"):
        tune(
            load_config(),
            tmp_path / "grid.yaml",
            data_dir=tmp_path,
            out=tmp_path / "out",
            echo=lambda _: None,
        )


def test_cell_id_changes_with_any_setting():
    base = load_config(None, BASE)
    extra = {"mode": "single"}
    assert cell_id(base, extra) == cell_id(load_config(None, BASE), extra)
    assert cell_id(base, extra) != cell_id(load_config(None, [*BASE, "train.epochs=3"]), extra)
    assert cell_id(base, extra) != cell_id(base, {"mode": "cv", "k": 3})


def test_sort_rows_direction_follows_the_column():
    rows = [
        {"index": 0, "val_acc_final": 0.5, "val_loss_min": 0.9},
        {"index": 1, "val_acc_final": 0.8, "val_loss_min": 1.2},
        {"index": 2, "val_acc_final": None, "val_loss_min": 0.1},
    ]
    assert [r["index"] for r in sort_rows(rows, "val_acc_final")] == [1, 0, 2]
    assert [r["index"] for r in sort_rows(rows, "val_loss_min")] == [2, 0, 1]


# --------------------------------------------------------------------------- running a grid


def test_results_are_sorted_and_a_rerun_trains_nothing(data_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    grid = _grid(tmp_path, GRID)
    out = tmp_path / "out"
    result = tune(
        load_config(None, BASE),
        grid,
        data_dir=data_dir,
        subset="small",
        epochs=2,
        out=out,
        echo=lambda _: None,
    )
    assert len(calls) == 4 and result["trained"] == 4 and result["skipped"] == 0
    order = [
        (r["settings"]["model.dense_units"], r["settings"]["train.learning_rate"])
        for r in result["rows"]
    ]
    assert order == [(64, 0.001), (64, 0.01), (16, 0.001), (16, 0.01)]
    with open(out / "results.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["rank"] for row in table] == ["1", "2", "3", "4"]
    assert table[0]["model.dense_units"] == "64" and table[0]["train.learning_rate"] == "0.001"
    assert float(table[0]["val_acc_final"]) == pytest.approx(0.64 - 0.001 - 0.01)
    assert float(table[0]["val_acc_best"]) == pytest.approx(0.64 - 0.001)
    assert float(table[0]["val_loss_min"]) == pytest.approx(1 - 0.639)
    assert table[0]["epochs"] == "2" and table[0]["seconds"] == "1.5"
    assert set(table[0]) >= {"test_macro_f1", "cell"}
    markdown = (out / "results.md").read_text()
    assert "4 of 4 cells done" in markdown and "| model.dense_units |" in markdown
    cell = json.loads((out / table[0]["cell"] / "cell.json").read_text())
    assert cell["settings"] == {"model.dense_units": 64, "train.learning_rate": 0.001}
    config = load_config(None, BASE)

    # Second run: nothing trains (the stub would record it), the table is the same.
    again = tune(
        config, grid, data_dir=data_dir, subset="small", epochs=2, out=out, echo=lambda _: None
    )
    assert len(calls) == 4 and again["trained"] == 0 and again["skipped"] == 4
    assert again["table"] == result["table"]
    # Through the CLI too; a new value adds only its own cells.
    _grid(tmp_path, GRID.replace("[16, 64]", "[16, 64, 32]"))
    args = [
        "tune",
        "--grid",
        str(grid),
        "--data-dir",
        str(data_dir),
        "--subset",
        "small",
        "--epochs",
        "2",
        "--out",
        str(out),
    ]
    for item in BASE:
        args += ["--set", item]
    run = CliRunner().invoke(cli, args)
    assert run.exit_code == 0, run.output
    assert len(calls) == 6 and "done before, skipped" in run.output
    assert "2 cell(s) trained, 4 done before" in run.output
    assert run.output.index("64") < run.output.index("  32  ")  # best first on stdout


def test_other_epochs_make_new_cells(data_dir, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("wbc.workflows.train.train", _stub_train(calls))
    grid = _grid(tmp_path, "model.dense_units: [16]\n")
    for epochs in (1, 2, 1):
        tune(
            load_config(None, BASE),
            grid,
            data_dir=data_dir,
            subset="small",
            epochs=epochs,
            out=tmp_path / "out",
            echo=lambda _: None,
        )
    assert len(calls) == 2 and calls[0] != calls[1]


def test_cv_scores_each_cell_by_cross_validation(data_dir, tmp_path, monkeypatch):
    seen: list = []

    def fake_cv(
        config,
        data_dir=None,
        folds=5,
        out=None,
        per_class=None,
        cache_dir=None,
        echo=print,
        **kwargs,
    ):
        seen.append(
            {
                "folds": folds,
                "per_class": per_class,
                "cache_dir": cache_dir,
                "weight": config.train.class_weight,
            }
        )
        f1 = 0.7 if config.train.class_weight == "balanced" else 0.6
        report = {
            "complete": True,
            "k": folds,
            "mean": {"macro_f1": f1, "accuracy": 0.8},
            "std": {"macro_f1": 0.05, "accuracy": 0.02},
            "folds": [
                {
                    "val_acc_final": 0.8,
                    "val_acc_best": 0.85,
                    "val_loss_min": 0.5,
                    "epochs_run": 3,
                    "wall_seconds": 10,
                    "collapsed": False,
                }
            ]
            * folds,
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "cv.json").write_text(json.dumps(report))
        return report

    monkeypatch.setattr("wbc.workflows.cv.cross_validate", fake_cv)
    grid = _grid(
        tmp_path, "train.class_weight: [none, balanced]\naugment.per_class_targets.MONOCYTE: [30]\n"
    )
    result = tune(
        load_config(None, BASE),
        grid,
        data_dir=data_dir,
        epochs=3,
        cv=3,
        per_class=40,
        out=tmp_path / "out",
        echo=lambda _: None,
    )
    assert [s["folds"] for s in seen] == [3, 3] and seen[0]["per_class"] == 40
    assert seen[0]["cache_dir"] == tmp_path / "out"  # augmented sets shared between cells
    rows = result["rows"]
    assert [r["settings"]["train.class_weight"] for r in rows] == ["balanced", "none"]
    assert rows[0]["cv_macro_f1"] == 0.7 and rows[0]["cv_macro_f1_std"] == 0.05
    assert rows[0]["seconds"] == 30 and rows[0]["epochs"] == 3
    header = (tmp_path / "out" / "results.csv").read_text().splitlines()[0]
    assert "cv_macro_f1,cv_macro_f1_std,cv_accuracy" in header
    again = tune(
        load_config(None, BASE),
        grid,
        data_dir=data_dir,
        epochs=3,
        cv=3,
        per_class=40,
        out=tmp_path / "out",
        echo=lambda _: None,
    )
    assert len(seen) == 2 and again["skipped"] == 2


def test_cli_tune_help_and_usage_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["tune", "--help"])
    assert result.exit_code == 0 and "Example: wbc tune" in result.output
    result = runner.invoke(
        cli,
        [
            "tune",
            "--grid",
            str(_grid(tmp_path, "model.dens_units: [1]\n")),
            "--data-dir",
            str(tmp_path),
        ],
    )
    assert result.exit_code == 1 and "did you mean 'dense_units'" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["tune", "--per-class", "5"])
    assert result.exit_code == 2 and "--per-class needs --cv" in result.output
    result = runner.invoke(cli, ["tune", "--grid", str(_grid(tmp_path, GRID)), "--sort", "val_acc"])
    assert result.exit_code == 1 and "did you mean" in result.output
