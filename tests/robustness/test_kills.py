"""SIGKILL at a random moment, then rerun: the result must equal an uninterrupted run's.

Stages build in a temporary folder and rename it into place, and training keeps a Keras backup,
so a kill can only cost time. Kill moments are drawn from a seeded generator over the measured
length of an uninterrupted run, so they land in different stages.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import STUDY_CONFIG, make_class_folders, make_raw_folder
from tests.robustness.helpers import manifest_digests

KILL_SEEDS = (0, 1, 2, 3)
SETTINGS = [
    "--set",
    "augment.per_class=24",
    "--set",
    "augment.engine=opencv",
    "--set",
    "subsets.small=12",
    "--set",
    "subsets.medium=16",
    "--set",
    "subsets.full=24",
    "--set",
    "rename.find_duplicates=false",
]
ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}


def wbc(*args) -> list[str]:
    return [sys.executable, "-m", "wbc", *map(str, args)]


def run_to_end(command: list[str]) -> float:
    started = time.monotonic()
    result = subprocess.run(command, env=ENV, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    return time.monotonic() - started


def kill_after(command: list[str], seconds: float) -> bool:
    """Start ``command`` in its own process group and SIGKILL the group; True if it was killed."""
    process = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        process.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        return True


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = tmp_path_factory.mktemp("kills")
    raw = make_raw_folder(
        root / "dataset-master", {"NEUTROPHIL": 8, "EOSINOPHIL": 6, "LYMPHOCYTE": 5, "MONOCYTE": 5}
    )
    seconds = run_to_end(wbc("prepare", "--raw", raw, "--data-dir", root / "ref", *SETTINGS))
    return raw, root, seconds, manifest_digests(root / "ref")


@pytest.mark.parametrize("seed", KILL_SEEDS)
def test_prepare_killed_at_random_then_rerun_matches(reference, seed):
    raw, root, seconds, expected = reference
    data = root / f"killed-{seed}"
    moment = float(np.random.default_rng(seed).uniform(0.2, seconds))
    command = wbc("prepare", "--raw", raw, "--data-dir", data, *SETTINGS)
    kill_after(command, moment)
    run_to_end(command)
    assert manifest_digests(data) == expected
    leftovers = [p for p in data.rglob(".*") if p.name.endswith((".tmp", ".old"))]
    assert not leftovers


def history_epochs(run_dir: Path) -> list[int]:
    path = run_dir / "history.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return [int(row["epoch"]) for row in csv.DictReader(handle)]


def test_training_killed_mid_run_resumes_at_the_next_epoch(tmp_path):
    data = tmp_path / "data"
    for side, n in (("train", 10), ("test", 3)):
        make_class_folders(
            data / "processed/small" / side,
            {"NEUTROPHIL": n, "EOSINOPHIL": n, "LYMPHOCYTE": n, "MONOCYTE": n},
            seed=len(side),
        )
    run_dir = tmp_path / "run"
    command = wbc(
        "train",
        "--config",
        STUDY_CONFIG,
        "--data-dir",
        data,
        "--subset",
        "small",
        "--epochs",
        6,
        "--run-dir",
        run_dir,
        "--set",
        "train.image_size=[48, 64]",
        "--set",
        "train.patience=null",
    )
    process = subprocess.Popen(
        command,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 240
    while (
        len(history_epochs(run_dir)) < 2 and process.poll() is None and time.monotonic() < deadline
    ):
        time.sleep(0.05)
    assert process.poll() is None, "training ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    done_before = history_epochs(run_dir)
    assert len(done_before) >= 2
    run_to_end(wbc("train", "--config", STUDY_CONFIG, "--resume", run_dir))
    epochs = history_epochs(run_dir)
    assert epochs == list(range(6)), epochs
    assert (run_dir / "model.keras").is_file() and (run_dir / "metrics.json").is_file()
