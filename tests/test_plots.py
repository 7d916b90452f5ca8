"""wbc.core.plots: the study's caption line, curves.png, confusion_matrix.png and `wbc plot`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.errors import DataError
from wbc.core.plots import caption, plot_confusion, plot_history
from wbc.core.runfolder import read_history

PNG = b"\x89PNG\r\n\x1a\n"

HISTORY = """epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds
1,1.2,0.40,1.10,0.45,0.001,3.1
2,0.6,0.80,0.2149,0.90,0.001,2.0
3,0.149,0.951,0.24,0.93,0.001,2.0
"""


def _run(tmp_path: Path, text: str = HISTORY) -> Path:
    run = tmp_path / "20240101-120000-small"
    run.mkdir()
    (run / "history.csv").write_text(text)
    return run


def test_caption_from_last_epoch_and_lowest_val_loss(tmp_path):
    rows = read_history(_run(tmp_path) / "history.csv")
    assert caption(rows) == (
        "acc=0.95 (val_acc=0.93) | loss=0.15 (val_loss=0.24) | lowest val_loss=0.21"
    )


def test_caption_of_the_study_example():
    rows = [{"epoch": 1, "loss": 0.15, "accuracy": 0.95, "val_loss": 0.20, "val_accuracy": 0.93}]
    assert caption(rows) == (
        "acc=0.95 (val_acc=0.93) | loss=0.15 (val_loss=0.20) | lowest val_loss=0.20"
    )


def test_read_history_types_and_blanks(tmp_path):
    run = _run(
        tmp_path, "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n1,1.0,0.5,,0.5,,1\n"
    )
    (row,) = read_history(run / "history.csv")
    assert row["epoch"] == 1 and isinstance(row["epoch"], int)
    assert math.isnan(row["val_loss"]) and math.isnan(row["lr"])
    assert "lowest val_loss=nan" in caption([row])


def test_plot_history_writes_a_png(tmp_path):
    run = _run(tmp_path)
    out = plot_history(run / "history.csv", tmp_path / "curves.png")
    assert out.read_bytes().startswith(PNG)
    assert out.stat().st_size > 10_000


def test_plot_history_errors(tmp_path):
    with pytest.raises(DataError, match="history.csv not found"):
        plot_history(tmp_path / "history.csv", tmp_path / "x.png")
    run = _run(tmp_path, "epoch,loss,accuracy,val_loss,val_accuracy,lr,seconds\n")
    with pytest.raises(DataError, match="no epochs"):
        plot_history(run / "history.csv", tmp_path / "x.png")


def test_plot_confusion_writes_a_png(tmp_path):
    out = plot_confusion(
        [[5, 1, 0, 0], [0, 6, 0, 0], [2, 0, 4, 0], [0, 0, 0, 0]],
        ["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE"],
        tmp_path / "cm.png",
    )
    assert out.read_bytes().startswith(PNG)


def test_cli_plot_redraws_curves_and_confusion(tmp_path):
    run = _run(tmp_path)
    (run / "metrics.json").write_text(
        json.dumps({"confusion_matrix": [[3, 1], [0, 4]], "classes": ["A", "B"]})
    )
    result = CliRunner().invoke(cli, ["plot", str(run)])
    assert result.exit_code == 0, result.output
    assert "acc=0.95 (val_acc=0.93)" in result.stdout
    assert (run / "curves.png").read_bytes().startswith(PNG)
    assert (run / "confusion_matrix.png").read_bytes().startswith(PNG)


def test_cli_plot_output_option(tmp_path):
    run = _run(tmp_path)
    result = CliRunner().invoke(cli, ["plot", str(run), "--output", str(tmp_path / "c.png")])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "c.png").is_file() and not (run / "curves.png").exists()


def test_cli_plot_errors_are_one_line(tmp_path):
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "missing")])
    assert result.exit_code == 1 and "folder not found" in result.output
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(cli, ["plot", str(tmp_path / "empty")])
    assert result.exit_code == 1
    assert "history.csv not found" in result.output and "Traceback" not in result.output
