"""A Keras run's crash-safe backup: the one record of which epochs are finished.

Why not Keras' ``BackupAndRestore``: it rewrites ``latest.weights.h5`` in place and copies the
previous generation with a plain copy, so a kill during the first epoch's save leaves a torn
HDF5 file and no previous generation (``Unable to synchronously open file``), and a kill
between its weights and its metadata pairs one epoch's weights with another's epoch number.

Here every finished epoch commits one generation in ``RUN/backup/``:

1. ``epoch-NNNN.weights.h5``: the model and optimizer state, written to a temporary name,
   fsynced and renamed;
2. ``epoch-NNNN.json``: the commit record, written the same way last: the epoch count, the
   SHA-256 of the weights file, and every ``history.csv`` row so far.

A generation counts only when its record parses and its weights match the digest, so a kill at
any instant leaves the newest finished generation or the one before it. The two newest
generations are kept. ``history.csv``, ``model.keras`` and ``last.keras`` are derived from the
committed generation and are repaired from it when a run resumes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from wbc.core.manifest import atomic_path, remove_tree, sha256_file, sweep_temps, write_json

BACKUP_DIR = "backup"
FORMAT = 1
KEEP = 2
_RECORD = re.compile(r"^epoch-(\d{4,})\.json$")


@dataclass
class Generation:
    """One committed backup: ``epochs`` finished epochs, their weights and history rows."""

    epochs: int
    weights: Path
    rows: list[dict[str, Any]] = field(default_factory=list)


def _weights_name(epochs: int) -> str:
    return f"epoch-{epochs:04d}.weights.h5"


def _record_name(epochs: int) -> str:
    return f"epoch-{epochs:04d}.json"


def _candidates(folder: Path) -> list[tuple[int, Path]]:
    found = []
    for path in folder.glob("epoch-*.json"):
        match = _RECORD.match(path.name)
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found, reverse=True)


def _read_generation(record: Path, epochs: int) -> Generation:
    """The generation ``record`` commits; ``ValueError`` naming what is wrong with it."""
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{record}: unreadable ({type(exc).__name__})") from None
    if not isinstance(data, dict) or data.get("epochs") != epochs or "sha256" not in data:
        raise ValueError(f"{record}: not a wbc backup record")
    weights = record.with_name(_weights_name(epochs))
    if not weights.is_file():
        raise ValueError(f"{weights}: missing")
    if sha256_file(weights) != data["sha256"]:
        raise ValueError(f"{weights}: torn or changed (its SHA-256 differs from {record.name})")
    rows = data.get("rows")
    if not isinstance(rows, list) or len(rows) != epochs:
        raise ValueError(f"{record}: its history rows do not match {epochs} epochs")
    return Generation(epochs, weights, rows)


def latest(run_dir: Path, echo: Optional[Callable[[str], None]] = None) -> Optional[Generation]:
    """The newest generation that is whole, or None. Each one skipped is reported to ``echo``
    with what the resume does instead."""
    folder = Path(run_dir) / BACKUP_DIR
    if not folder.is_dir():
        return None
    for epochs, record in _candidates(folder):
        try:
            return _read_generation(record, epochs)
        except ValueError as exc:
            if echo is not None:
                echo(f"warning: {exc}; falling back to the generation before it")
    return None


def restore(model, run_dir: Path, echo: Callable[[str], None]) -> Optional[Generation]:
    """Load the newest loadable generation into ``model`` (weights and optimizer state)."""
    folder = Path(run_dir) / BACKUP_DIR
    if not folder.is_dir():
        return None
    if model.optimizer is not None and not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)
    for epochs, record in _candidates(folder):
        try:
            generation = _read_generation(record, epochs)
            model.load_weights(generation.weights)
        except ValueError as exc:
            echo(f"warning: {exc}; falling back to the generation before it")
            continue
        except Exception as exc:  # noqa: BLE001 - h5py and Keras raise many types on a bad file
            reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
            echo(
                f"warning: {record.with_name(_weights_name(epochs))}: cannot be loaded "
                f"({type(exc).__name__}: {reason}); falling back to the generation before it"
            )
            continue
        return generation
    if _candidates(folder):
        echo(f"warning: {folder}: no whole backup generation; restarting at epoch 1")
    return None


def commit(model, run_dir: Path, rows: list[dict[str, Any]]) -> Generation:
    """Commit the model's state after ``len(rows)`` finished epochs; prune older generations."""
    folder = Path(run_dir) / BACKUP_DIR
    epochs = len(rows)
    weights = folder / _weights_name(epochs)
    with atomic_path(weights) as tmp:
        model.save_weights(str(tmp))
    write_json(
        folder / _record_name(epochs),
        {"format": FORMAT, "epochs": epochs, "sha256": sha256_file(weights), "rows": rows},
    )
    for older, record in _candidates(folder)[KEEP:]:
        for path in (record.with_name(_weights_name(older)), record):
            remove_tree(path)
    return Generation(epochs, weights, list(rows))


def discard_after(run_dir: Path, epochs: int) -> None:
    """Remove generations newer than ``epochs`` (ones that could not be loaded), and debris."""
    folder = Path(run_dir) / BACKUP_DIR
    if not folder.is_dir():
        return
    sweep_temps(folder)
    for newer, record in _candidates(folder):
        if newer > epochs:
            remove_tree(record.with_name(_weights_name(newer)))
            remove_tree(record)


def backup_epoch(run_dir: Path) -> int:
    """How many epochs the run's ``backup/`` holds as finished (0 when there is none)."""
    generation = latest(run_dir)
    return generation.epochs if generation else 0


def has_progress(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a run with at least one finished epoch (never overwritten)."""
    run_dir = Path(run_dir)
    from wbc.core.runfolder import read_history_rows
    from wbc.models.registry import model_files

    return (
        backup_epoch(run_dir) > 0
        or any((run_dir / f).exists() for f in model_files())
        or bool(read_history_rows(run_dir / "history.csv"))
    )
