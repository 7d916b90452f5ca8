"""The files of a run folder, each with one reader and one writer: ``classes.json``,
``history.csv``, ``metrics.json``, ``config.yaml`` and ``run.json``.

Every writer is atomic (``wbc.core.manifest``); ``metrics.json`` is written last by ``wbc train``,
so a run that has one is finished (``finished_run``).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config, config_from_dict, dump_config, read_yaml
from wbc.core.errors import DataError, ModelError
from wbc.core.manifest import write_atomic, write_json

Echo = Callable[[str], None]
CLASSES_NAME = "classes.json"
HISTORY_NAME = "history.csv"
METRICS_NAME = "metrics.json"
CONFIG_NAME = "config.yaml"
RUN_INFO_NAME = "run.json"


# --------------------------------------------------------------------------- classes.json


def read_classes(path: Path) -> list[str]:
    """The class order of a run: ``classes.json`` (a JSON list of names)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing; a run folder needs {CLASSES_NAME} next to the model "
            "(written by `wbc train`)"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: cannot read class names ({reason})") from None
    if isinstance(data, dict):  # also accept {"classes": [...]}
        data = data.get("classes")
    if (
        not isinstance(data, list)
        or not data
        or not all(isinstance(name, str) and name for name in data)
        or len(set(data)) != len(data)
    ):
        raise ModelError(f"{path}: expected a JSON list of distinct class names")
    return list(data)


def write_classes(classes: Sequence[str], path: Path) -> None:
    write_json(path, list(classes))


# --------------------------------------------------------------------------- history.csv


HISTORY_COLUMNS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy", "lr", "seconds")


def _number(text: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def read_history(path: Path) -> list[dict[str, float]]:
    """The rows of a run's ``history.csv`` as dicts of floats (``epoch`` as int)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            rows = []
            for raw in reader:
                if not raw.get("epoch"):
                    continue
                row = {key: _number(value) for key, value in raw.items() if key}
                row["epoch"] = int(row["epoch"])
                rows.append(row)
    except FileNotFoundError:
        raise DataError(f"{path}: history.csv not found") from None
    except (OSError, UnicodeDecodeError, csv.Error, ValueError) as exc:
        raise DataError(f"{path}: cannot read the training history ({exc})") from None
    return rows


def read_history_rows(path: Path) -> list[dict[str, float]]:
    """``read_history``, or no rows when there is no file yet."""
    return read_history(path) if Path(path).is_file() else []


def write_history_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``history.csv`` whole (atomically): a resume rewrites it from the backup."""
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in HISTORY_COLUMNS])
    write_atomic(path, buffer.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"


def append_history(path: Path, row: dict[str, Any]) -> None:
    """One row at the end of ``history.csv``, flushed to disk. A kill mid-row is mended on
    resume: the file is rewritten from the backup's committed rows."""
    new = not Path(path).is_file() or Path(path).stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(HISTORY_COLUMNS)
        writer.writerow([_cell(row.get(c)) for c in HISTORY_COLUMNS])
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------- metrics.json


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    write_json(path, metrics)


def finished_run(run_dir: Path, what: str, echo: Optional[Echo] = None) -> bool:
    """True when ``run_dir`` holds a finished run (a readable ``metrics.json``, written last).
    An unreadable one is removed, with a line saying that ``what`` is trained again."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return False
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError, UnicodeDecodeError):
        if echo is not None:
            echo(f"warning: {path}: unreadable; training {what} again")
        path.unlink(missing_ok=True)
        return False


# --------------------------------------------------------------------------- config.yaml, run.json


def write_run_config(config: Config, run_dir: Path) -> None:
    dump_config(config, Path(run_dir) / CONFIG_NAME)


def read_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / CONFIG_NAME
    if not path.is_file():
        if (Path(run_dir) / RUN_INFO_NAME).is_file():  # run.json comes first: killed between
            raise DataError(
                f"{run_dir}: not a run folder yet (killed before it wrote config.yaml; nothing "
                f"was trained); start it again with the same command: wbc train --run-dir {run_dir}"
            )
        raise DataError(f"{run_dir}: not a run folder (no config.yaml); cannot resume it")
    return config_from_dict(read_yaml(path), str(path))


def recorded_data_dir(run_dir: Path) -> Optional[Path]:
    """The data folder a run was trained from (``run.json``), if it still exists."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
        path = Path(info["data_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_dir() else None


def read_run_info(run_dir: Path) -> dict[str, Any]:
    """``run.json``, or {} when the run has none (made by hand, or an older wbc)."""
    try:
        return json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def write_run_info(
    run_dir: Path,
    data_dir: Path,
    strategy: str,
    resuming: bool,
    extra: dict[str, Any] | None = None,
) -> None:
    from wbc import __version__

    path = Path(run_dir) / "run.json"
    info: dict[str, Any] = {}
    if resuming and path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
    info.setdefault("started", datetime.now().isoformat(timespec="seconds"))
    info.update(data_dir=str(Path(data_dir).resolve()), strategy=strategy, wbc=__version__)
    if extra and not resuming:
        info.update(extra)
    if resuming:
        info["resumed"] = info.get("resumed", 0) + 1
    write_json(path, info)
