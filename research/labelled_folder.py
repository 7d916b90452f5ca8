"""What the research scripts that score a run on a lab's labelled folder share.

A lab's class folder names are read here **only to score**: ``folder_labels`` gives each image's
class in the order ``wbc.workflows.adapt.load_cells`` reads the images (content digests), and
``accuracy_and_f1`` scores named answers against them. ``adapted_features_lab`` reads a features
run and the folder's cells once and adapts a copy of the run as ``wbc adapt --priors never`` does.
``folder_and_runs`` is the command line those scripts take (a folder, run folders, ``--input``),
``print_stages`` their output line, and ``score_runs`` the ``main`` of most of them;
``score_folders`` is the ``main`` of those that score each run on many folders in one process,
and ``as_is_and_adapted`` their answers before and after ``wbc adapt --priors never``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.models.adaptation import class_balanced_scaler  # noqa: E402
from wbc.models.base import resize_batch  # noqa: E402
from wbc.models.nucleus import batch_features  # noqa: E402
from wbc.models.runs import load_run, resolve_model_path  # noqa: E402
from wbc.workflows.adapt import folder_digest, load_cells  # noqa: E402
from wbc.workflows.predict import require_images  # noqa: E402


def folder_labels(folder: Path, classes: list[str]) -> np.ndarray:
    """Class index of each image in ``load_cells``' order (content digests), from its folder."""
    files = require_images([folder])
    _, each = folder_digest(files)
    ordered = [path for _, path in sorted(zip(each, files), key=lambda pair: pair[0])]
    return np.array(
        [classes.index(p.parent.name) if p.parent.name in classes else -1 for p in ordered]
    )


def labelled_cells(run_dir: Path, folder: Path, input_kind: str = "auto"):
    """The run as loaded, the folder's cells read as ``wbc adapt`` reads them, and each cell's
    class index from its folder name (to score only)."""
    run = load_run(resolve_model_path(run_dir))
    cells, _ = load_cells(run, folder, input_kind=input_kind)
    return run, cells, folder_labels(folder, list(run.classes))


@dataclass
class AdaptedLab:
    run: Any  # the features run as trained (its pipeline untouched)
    truth: np.ndarray  # each cell's class index, from its folder name
    before: np.ndarray  # the run's answers (class indices) before adaptation
    measured: np.ndarray  # the cells' measurements, as the run measures them (float64)
    adapted: Any  # a copy of the run's pipeline, its scaler re-estimated on the cells


def adapted_features_lab(run_dir: Path, folder: Path, input_kind: str = "auto") -> AdaptedLab:
    """The folder's cells read as ``wbc adapt`` reads them, measured once, and a copy of the
    run's pipeline re-standardised on them as ``FeatureClassifier.adapt_to`` does (the
    class-balanced scaler: ``wbc adapt --priors never``)."""
    run, cells, truth = labelled_cells(run_dir, folder, input_kind)
    model = run.model
    measured = batch_features(resize_batch(cells, model.image_size), model.colour, model.nucleus)
    measured = measured.astype(np.float64)
    adapted = copy.deepcopy(model.pipeline)
    class_balanced_scaler(adapted, measured)
    return AdaptedLab(
        run=run,
        truth=truth,
        before=model.engine()(cells).argmax(axis=1),
        measured=measured,
        adapted=adapted,
    )


def accuracy_and_f1(truth: np.ndarray, answers: dict) -> dict[str, tuple[float, float]]:
    """Accuracy and macro-F1 of each named array of answers (class indices or labels)."""
    return {
        stage: (accuracy_score(truth, guess), f1_score(truth, guess, average="macro"))
        for stage, guess in answers.items()
    }


def folder_and_runs(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("folder", type=Path, help="a lab's images in class folders")
    parser.add_argument("runs", type=Path, nargs="+", help="features run folders")
    parser.add_argument("--input", choices=("auto", "crop"), default="auto")
    return parser


def print_stages(name: str, scores: dict[str, tuple[float, float]]) -> None:
    print(f"{name}: " + "; ".join(f"{k} {a:.3f} / {f:.3f}" for k, (a, f) in scores.items()))


def as_is_and_adapted(run, run_dir: Path, cells: np.ndarray) -> dict[str, np.ndarray]:
    """``run``'s answers on ``cells`` as is, and after adapting a fresh copy of it (read again
    from ``run_dir``) on those same cells as ``wbc adapt --priors never`` does (``adapt_to``,
    class-balanced)."""
    adapted = load_run(resolve_model_path(run_dir))
    adapted.model.adapt_to(cells, echo=lambda _m: None, balanced=True)
    return {
        "as is": run.model.engine(cache=False)(cells).argmax(axis=1),
        "adapted": adapted.model.engine(cache=False)(cells).argmax(axis=1),
    }


def score_folders(description: str, scores: Callable, argv: list[str] | None = None) -> int:
    """The ``main`` of a probe whose ``scores(run_dir, folder, input_kind)`` scores one run on one
    folder: a line per run and folder, then each stage's mean over the folders."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--folders", type=Path, nargs="+", required=True)
    parser.add_argument("--input", choices=("auto", "crop"), default="auto")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        table = {folder: scores(run_dir, folder, args.input) for folder in args.folders}
        for folder, row in table.items():
            print_stages(f"{run_dir.name} {folder.name}", row)
        for stage in next(iter(table.values())):
            mean = np.mean([row[stage][0] for row in table.values()])
            f1 = np.mean([row[stage][1] for row in table.values()])
            print(f"{run_dir.name} mean over {len(table)} folders, {stage}: {mean:.3f} / {f1:.3f}")
        sys.stdout.flush()
    return 0


def score_runs(description: str, stages: Callable, argv: list[str] | None = None) -> int:
    """The ``main`` of a probe whose ``stages(run_dir, folder, input_kind)`` scores one run on
    the folder: one output line per run."""
    args = folder_and_runs(description).parse_args(argv)
    for run_dir in args.runs:
        print_stages(f"{args.folder.name} {run_dir.name}", stages(run_dir, args.folder, args.input))
    return 0
