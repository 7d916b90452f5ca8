"""Each run as is and after ``wbc adapt``, on many labelled folders, in one process.

Produced docs/RESULTS.md's "The cnn with strong HED jitter, trained longer" rows (issue 23).

Why: the shifted-crops dev set is 11 folders (``research/shifted_crops.py``), and scoring a
Keras run on each with ``wbc adapt`` then ``wbc compare`` pays a TensorFlow start per command.
This does what those two commands do, for every folder and run, in one process: the folder's
cells read as ``wbc adapt`` reads them (``load_cells``), the run's answers as is, then the run
adapted on those same cells as ``wbc adapt --priors never`` adapts it (``adapt_to``: AdaBN for
the Keras families, the scaler for the features family, both class-balanced) and its answers.
The class folder names are read **only to score**. It prints each folder's accuracy / macro-F1,
and the mean accuracy over the folders given.

Usage: python research/adapted_dev.py RUN [RUN ...] --folders F [F ...] [--input auto|crop]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import accuracy_and_f1, folder_labels, print_stages  # noqa: E402

from wbc.models.runs import load_run, resolve_model_path  # noqa: E402
from wbc.workflows.adapt import load_cells  # noqa: E402


def scores(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    run = load_run(resolve_model_path(run_dir))
    cells, _ = load_cells(run, folder, input_kind=input_kind)
    truth = folder_labels(folder, list(run.classes))
    answers = {"as is": run.model.engine(cache=False)(cells).argmax(axis=1)}
    adapted = load_run(resolve_model_path(run_dir))
    adapted.model.adapt_to(cells, echo=lambda _m: None, balanced=True)
    answers["adapted"] = adapted.model.engine(cache=False)(cells).argmax(axis=1)
    return accuracy_and_f1(truth, answers)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+", help="run folders")
    parser.add_argument("--folders", type=Path, nargs="+", required=True)
    parser.add_argument("--input", choices=("auto", "crop"), default="auto")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        table = {}
        for folder in args.folders:
            table[folder] = scores(run_dir, folder, args.input)
            print_stages(f"{run_dir.name} {folder.name}", table[folder])
        for stage in ("as is", "adapted"):
            mean = np.mean([row[stage][0] for row in table.values()])
            f1 = np.mean([row[stage][1] for row in table.values()])
            print(f"{run_dir.name} mean over {len(table)} folders, {stage}: {mean:.3f} / {f1:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
