"""``--executor ray`` on a real local Ray instance (2 CPUs, no mock): the same folds, cells and
numbers as the local executor, a killed worker survived, an unreachable cluster in one line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
import ray

from wbc.core.config import load_config
from wbc.core.errors import DataError

from conftest import STUDY_CONFIG, make_raw_folder

pytestmark = pytest.mark.slow

COUNTS = {"NEUTROPHIL": 8, "EOSINOPHIL": 6, "LYMPHOCYTE": 6, "MONOCYTE": 6}
DATA_SETTINGS = ["rename.find_duplicates=false", "augment.per_class=10", "augment.workers=1"]
FEATURES = load_config(None, [*DATA_SETTINGS, "model.features.max_train=40"])


@pytest.fixture(scope="module")
def cluster():
    from wbc.workflows.executors import RayOptions, connect

    connect(RayOptions(local_cpus=2), echo=print)
    yield RayOptions(cpus_per_trial=1)
    ray.shutdown()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    from wbc.data.pipeline import prepare

    root = tmp_path_factory.mktemp("raydata")
    raw = make_raw_folder(root / "raw", COUNTS, size=(96, 128))
    prepare(FEATURES, data_dir=root / "data", raw=raw, echo=lambda _m: None)
    return root / "data"


@pytest.fixture(scope="module")
def features_run(data_dir, tmp_path_factory) -> Path:
    """One default-recipe run, shared by the predict and count tests."""
    from wbc.workflows.train import train

    return train(
        FEATURES,
        data_dir=data_dir,
        subset="small",
        run_dir=tmp_path_factory.mktemp("ray-run") / "run",
        echo=lambda _m: None,
    )


def _folds(report: dict) -> list[tuple]:
    return [
        (
            f["fold"],
            f["n_train"],
            f["n_test"],
            f["accuracy"],
            f["macro_f1"],
            tuple(sorted(f["per_class_f1"].items())),
        )
        for f in report["folds"]
    ]


def test_cv_on_ray_gives_the_local_folds_and_numbers(cluster, data_dir, tmp_path):
    from wbc.workflows.cv import cross_validate

    local = cross_validate(
        FEATURES, data_dir=data_dir, folds=2, out=tmp_path / "local", echo=lambda _m: None
    )
    lines: list[str] = []
    remote = cross_validate(
        FEATURES,
        data_dir=data_dir,
        folds=2,
        out=tmp_path / "ray",
        echo=lines.append,
        executor="ray",
        ray_options=cluster,
    )
    assert _folds(remote) == _folds(local)  # to the last digit
    assert json.loads((tmp_path / "ray" / "folds.json").read_text()) == json.loads(
        (tmp_path / "local" / "folds.json").read_text()
    )
    assert sum("trained on" in line and "(ray)" in line for line in lines) == 2
    # A rerun through Ray submits nothing: both folds are done.
    again: list[str] = []
    cross_validate(
        FEATURES,
        data_dir=data_dir,
        folds=2,
        out=tmp_path / "ray",
        echo=again.append,
        executor="ray",
        ray_options=cluster,
    )
    assert not any("submitted" in line for line in again)
    assert sum("done before, skipped" in line for line in again) == 2


def test_tune_on_ray_ranks_the_same_cells_as_local(cluster, data_dir, tmp_path):
    from wbc.workflows.tune import tune

    grid = tmp_path / "grid.yaml"
    grid.write_text("model.features.svm_c: [1.0, 10.0]\n")
    local = tune(
        FEATURES,
        grid,
        data_dir=data_dir,
        subset="small",
        out=tmp_path / "local",
        echo=lambda _m: None,
    )
    remote = tune(
        FEATURES,
        grid,
        data_dir=data_dir,
        subset="small",
        out=tmp_path / "ray",
        echo=lambda _m: None,
        executor="ray",
        ray_options=cluster,
    )
    assert remote["trained"] == 2 and remote["skipped"] == 0
    strip = [{k: v for k, v in row.items() if k != "seconds"} for row in local["rows"]]
    assert [{k: v for k, v in row.items() if k != "seconds"} for row in remote["rows"]] == strip


def _task_pids() -> list[int]:
    found = subprocess.run(["pgrep", "-f", "ray::_train_task"], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split()]


def test_a_killed_worker_is_retried_and_resumes_its_fold(cluster, data_dir, tmp_path):
    """kill -9 the worker process training a fold after its first epoch: Ray starts the task
    again and it resumes from the run folder's backup, so the fold finishes with every epoch
    once."""
    from wbc.workflows.cv import cross_validate

    config = load_config(
        STUDY_CONFIG,
        [
            *DATA_SETTINGS,
            "crop.mode=detect",
            "augment.engine=opencv",
            "train.image_size=[40, 48]",
            "train.patience=null",
            "train.batch_size=8",
        ],
    )
    out = tmp_path / "killed"
    killed: list[int] = []

    def kill_after_first_epoch():
        history = out / "fold-1" / "history.csv"
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            if history.is_file() and len(history.read_text().splitlines()) >= 2:
                pids = _task_pids()
                if pids:
                    os.kill(pids[0], signal.SIGKILL)
                    killed.append(pids[0])
                    return
            time.sleep(0.05)

    watcher = threading.Thread(target=kill_after_first_epoch, daemon=True)
    watcher.start()
    report = cross_validate(
        config,
        data_dir=data_dir,
        folds=2,
        epochs=6,
        out=out,
        echo=lambda _m: None,
        executor="ray",
        ray_options=cluster.__class__(cpus_per_trial=2),
    )
    watcher.join(timeout=5)
    assert killed, "no worker was killed: the fold finished too fast"
    epochs = [
        int(line.split(",")[0])
        for line in (out / "fold-1" / "history.csv").read_text().splitlines()[1:]
    ]
    assert epochs == list(range(6))
    assert report["complete"] is True and len(report["folds"]) == 2


def test_an_unreachable_cluster_is_a_one_line_error(tmp_path, data_dir):
    from wbc.workflows.cv import cross_validate
    from wbc.workflows.executors import RayOptions

    started = time.monotonic()
    with pytest.raises(DataError, match=r"Ray cluster at 127.0.0.1:9: cannot connect") as err:
        cross_validate(
            FEATURES,
            data_dir=data_dir,
            folds=2,
            out=tmp_path / "x",
            echo=lambda _m: None,
            executor="ray",
            ray_options=RayOptions(address="127.0.0.1:9"),
        )
    assert "\n" not in str(err.value) and time.monotonic() - started < 30


def test_predict_on_ray_gives_the_local_rows_in_order(cluster, data_dir, features_run, tmp_path):
    from click.testing import CliRunner

    from wbc.cli import cli

    run = features_run
    images = sorted((data_dir / "interim" / "renamed").glob("*.jpg"))
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    args = [
        "predict",
        *map(str, images[:12]),
        str(bad),
        *map(str, images[12:]),
        "--model",
        str(run),
        "--format",
        "json",
    ]
    local = CliRunner().invoke(cli, args)
    remote = CliRunner().invoke(cli, [*args, "--executor", "ray"])
    assert local.exit_code == remote.exit_code == 1  # the broken file: its own error row
    rows = json.loads(remote.stdout)["predictions"]
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert rows[12]["error"] and [r["file"] for r in rows] == [
        *map(str, images[:12]),
        str(bad),
        *map(str, images[12:]),
    ]


def test_count_on_ray_gives_the_local_differential(cluster, data_dir, features_run, tmp_path):
    from click.testing import CliRunner

    from wbc.cli import cli

    run = features_run
    folder = data_dir / "interim" / "renamed"
    args = ["count", str(folder), "--model", str(run), "--format", "json"]
    local = CliRunner().invoke(cli, args)
    remote = CliRunner().invoke(cli, [*args, "--executor", "ray"])
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert json.loads(remote.stdout) == json.loads(local.stdout)
    assert json.loads(local.stdout)["cells"] > 0
    # adapted on the sample: the cells are read again here, whoever classified them first
    adapted_args = [*args, "--adapt", "always"]
    local_adapted = CliRunner().invoke(cli, adapted_args)
    remote_adapted = CliRunner().invoke(cli, [*adapted_args, "--executor", "ray"])
    assert local_adapted.exit_code == remote_adapted.exit_code == 0, remote_adapted.output
    assert json.loads(remote_adapted.stdout) == json.loads(local_adapted.stdout)
    record = json.loads(local_adapted.stdout)["adapted"]
    assert record["mode"] == "always" and record["cells"] == json.loads(local.stdout)["cells"]
