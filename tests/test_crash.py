"""Crash consistency, deterministically: what a kill can leave behind (a torn or garbage backup
generation, a half-written history.csv, a torn model file, a writer's temporary file) and what a
rerun does with it: fall back to the generation before, restart, or retrain, in one line.

The random kill-anywhere harness (``make crashtest``, scripts/kill_anywhere.py) kills real runs;
these tests pin each fallback down.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from wbc.core.config import load_config
from wbc.core.errors import DataError, ModelError
from wbc.core.manifest import atomic_path, sweep_temps, temp_sibling, write_atomic
from wbc.models import checkpoint
from wbc.models.checkpoint import backup_epoch
from wbc.workflows.train import train

from conftest import CLASSES, STUDY_CONFIG, make_class_folders

TINY = ["train.image_size=[40,48]", "train.patience=null", "train.batch_size=8"]
EPOCHS = 3


# --------------------------------------------------------------------------- atomic writes


def test_a_failed_writer_leaves_neither_file_nor_temporary(tmp_path):
    target = tmp_path / "model.keras"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.keras"]


def test_a_full_disk_is_one_line_naming_the_file(tmp_path, monkeypatch):
    def full(*_args, **_kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(DataError) as err:
        write_atomic(tmp_path / "metrics.json", "{}")
    assert str(err.value) == f"{tmp_path / 'metrics.json'}: no space left on device"
    assert list(tmp_path.iterdir()) == []


def dead_pid() -> str:
    """The pid of a process that has ended (a writer killed mid-write, as far as wbc can tell)."""
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return finished.stdout.strip()


def test_debris_of_a_dead_writer_is_swept_and_a_live_one_is_kept(tmp_path):
    stale = tmp_path / f".tmp-{dead_pid()}-metrics.json"
    stale.write_text("{")
    live = tmp_path / f".tmp-{os.getppid()}-metrics.json"  # a writer still at work
    live.write_text("{")
    write_atomic(tmp_path / "metrics.json", "{}")  # sweeps the same name's dead debris
    assert not stale.exists() and live.exists()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {}
    assert sweep_temps(tmp_path) == []
    assert temp_sibling(tmp_path / "a.keras").name == f".tmp-{os.getpid()}-a.keras"


# --------------------------------------------------------------------------- the backup


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("crash-data")
    make_class_folders(root / "processed/small/train", {c: 6 for c in CLASSES}, seed=3)
    make_class_folders(root / "processed/small/test", {c: 2 for c in CLASSES}, seed=4)
    return root


@pytest.fixture(scope="module")
def finished_run(tiny_data, tmp_path_factory) -> Path:
    """A 3-epoch study run; each test works on its own copy."""
    run_dir = tmp_path_factory.mktemp("crash-run") / "run"
    train(
        load_config(STUDY_CONFIG, TINY),
        data_dir=tiny_data,
        subset="small",
        epochs=EPOCHS,
        run_dir=run_dir,
        echo=lambda _m: None,
    )
    return run_dir


@pytest.fixture
def run_copy(finished_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    (copy / "metrics.json").unlink()  # as if killed before the end
    return copy


def _epochs(run_dir: Path) -> list[int]:
    from wbc.core.runfolder import read_history

    return [r["epoch"] for r in read_history(run_dir / "history.csv")]


def _resume(run_dir: Path, epochs: int = EPOCHS + 1) -> list[str]:
    lines: list[str] = []
    train(load_config(STUDY_CONFIG), resume_dir=run_dir, epochs=epochs, echo=lines.append)
    return lines


def test_two_whole_generations_are_kept(finished_run):
    records = sorted(p.name for p in (finished_run / "backup").iterdir())
    assert records == [
        "epoch-0002.json",
        "epoch-0002.weights.h5",
        "epoch-0003.json",
        "epoch-0003.weights.h5",
    ]
    generation = checkpoint.latest(finished_run)
    assert generation.epochs == EPOCHS and len(generation.rows) == EPOCHS
    assert _epochs(finished_run) == list(range(EPOCHS))


@pytest.mark.parametrize("damage", ["truncated", "garbage", "record"])
def test_a_bad_newest_generation_falls_back_to_the_one_before(run_copy, damage):
    weights = run_copy / "backup" / "epoch-0003.weights.h5"
    if damage == "truncated":
        weights.write_bytes(weights.read_bytes()[:1000])
    elif damage == "garbage":
        weights.write_bytes(os.urandom(weights.stat().st_size))
    else:
        (run_copy / "backup" / "epoch-0003.json").write_text('{"epochs": 3, "sha')
    assert backup_epoch(run_copy) == 2
    lines = _resume(run_copy)
    assert any("falling back to the generation before it" in line for line in lines)
    assert any("after epoch 2 of 4" in line for line in lines)
    assert _epochs(run_copy) == [0, 1, 2, 3]  # epoch 3 (index 2) retrained once, not twice
    assert json.loads((run_copy / "metrics.json").read_text())["epochs_run"] == 4


def test_no_whole_generation_restarts_at_epoch_one(run_copy):
    for path in (run_copy / "backup").glob("*.weights.h5"):
        path.write_bytes(b"\x89HDF\r\n")
    lines = _resume(run_copy, epochs=2)
    assert any("no whole backup generation; restarting at epoch 1" in line for line in lines)
    assert _epochs(run_copy) == [0, 1]


def test_a_half_written_history_is_rewritten_from_the_backup(run_copy):
    history = run_copy / "history.csv"
    text = history.read_text()
    history.write_text(text + "3,1.2,0.5")  # a kill in the middle of the next row
    _resume(run_copy)
    assert _epochs(run_copy) == [0, 1, 2, 3]


def test_a_row_committed_but_not_yet_in_history_is_restored(run_copy):
    # A kill after the backup's commit but before history.csv got its row.
    history = run_copy / "history.csv"
    history.write_text("".join(history.read_text().splitlines(keepends=True)[:-1]))
    assert _epochs(run_copy) == [0, 1]
    lines = _resume(run_copy)
    assert any("after epoch 3 of 4" in line for line in lines)
    assert _epochs(run_copy) == [0, 1, 2, 3]


@pytest.mark.parametrize("name", ["last.keras", "model.keras"])
def test_a_torn_model_file_is_mended_from_the_backup(run_copy, name):
    from wbc.models.keras_family import load_model_file

    path = run_copy / name
    path.write_bytes(path.read_bytes()[:500])
    with pytest.raises(ModelError, match=f"{name}: "):
        load_model_file(path)
    best = min(range(EPOCHS), key=lambda e: _val_loss(run_copy, e))
    lines = _resume(run_copy, epochs=EPOCHS)  # nothing left to train: mend, then evaluate
    assert any("all 3 epochs already done" in line for line in lines)
    if name == "last.keras" or best == EPOCHS - 1:
        load_model_file(path)  # mended from the last generation
    assert (run_copy / "metrics.json").is_file()


def _val_loss(run_dir: Path, epoch: int) -> float:
    from wbc.core.runfolder import read_history

    return read_history(run_dir / "history.csv")[epoch]["val_loss"]


def test_a_kill_leaves_no_temporary_file_after_the_rerun(run_copy):
    dead = dead_pid()
    debris = [
        run_copy / f".tmp-{dead}-last.keras",
        run_copy / "backup" / f".tmp-{dead}-epoch-0004.weights.h5",
        run_copy / f".tmp-{dead}-MODEL_CARD.md",
    ]
    for path in debris:
        path.write_bytes(b"half")
    _resume(run_copy)
    left = [p for p in run_copy.rglob("*") if p.name.startswith(".tmp-")]
    assert left == []


# --------------------------------------------------------------------------- cv and tune


def test_an_unreadable_fold_result_retrains_that_fold(tmp_path):
    from wbc.core.runfolder import finished_run

    (tmp_path / "metrics.json").write_text('{"accuracy": 0.9')
    lines: list[str] = []
    assert finished_run(tmp_path, "fold 2", lines.append) is False
    assert lines == [f"warning: {tmp_path / 'metrics.json'}: unreadable; training fold 2 again"]
    assert not (tmp_path / "metrics.json").exists()
    (tmp_path / "metrics.json").write_text("{}")
    assert finished_run(tmp_path, "fold 2") is True


def test_a_kill_before_config_yaml_leaves_a_folder_the_same_command_trains(tiny_data, tmp_path):
    # run.json is written before config.yaml: a folder with run.json alone is no run yet.
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text(json.dumps({"data_dir": str(tiny_data)}))
    train(
        load_config(STUDY_CONFIG, TINY),
        data_dir=tiny_data,
        subset="small",
        epochs=1,
        run_dir=run_dir,
        echo=lambda _m: None,
    )
    assert _epochs(run_dir) == [0]


def test_resuming_a_run_killed_before_config_yaml_says_to_start_it_again(tmp_path):
    from click.testing import CliRunner

    from wbc.cli import cli

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "run.json").write_text("{}")
    result = CliRunner().invoke(cli, ["train", "--resume", str(run_dir)])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert f"start it again with the same command: wbc train --run-dir {run_dir}" in result.output
