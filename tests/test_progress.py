"""One progress library (tqdm, ``wbc.core.progress``): bars on stderr on a terminal only, so the
JSON and CSV on stdout stay clean."""

from __future__ import annotations

import json

from click.testing import CliRunner

from wbc.cli import cli

from conftest import CLASSES, make_class_folders, make_run


def test_predict_bar_goes_to_stderr_and_stdout_stays_json(tmp_path):
    model = make_run(tmp_path / "run", image_size=(48, 64))
    images = make_class_folders(tmp_path / "images", {c: 2 for c in CLASSES}, size=(48, 64))
    args = ["predict", str(images), "--model", str(model), "--format", "json"]
    shown = CliRunner(env={"WBC_PROGRESS": "1"}).invoke(cli, args)
    assert shown.exit_code == 0, shown.output
    assert len(json.loads(shown.stdout)["predictions"]) == 8
    assert "predicting" in shown.stderr and "/8 [" in shown.stderr  # tqdm: done/total
    hidden = CliRunner(env={"WBC_PROGRESS": "0"}).invoke(cli, args)
    assert hidden.exit_code == 0 and "predicting" not in hidden.stderr
    assert json.loads(hidden.stdout) == json.loads(shown.stdout)


def test_prepare_stages_share_the_bar(tmp_path, tiny_raw):
    result = CliRunner(env={"WBC_PROGRESS": "1"}).invoke(
        cli,
        [
            "prepare",
            "--raw",
            str(tiny_raw),
            "--data-dir",
            str(tmp_path / "data"),
            "--set",
            "augment.per_class=14",
            "--set",
            "augment.workers=1",
        ],
    )
    assert result.exit_code == 0, result.output
    for label in ("duplicates: reading", "crop (detect)", "augment"):
        assert label in result.stderr, label
