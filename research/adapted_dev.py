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

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    as_is_and_adapted,
    labelled_cells,
    score_folders,
)


def scores(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    run, cells, truth = labelled_cells(run_dir, folder, input_kind)
    return accuracy_and_f1(truth, as_is_and_adapted(run, run_dir, cells))


def main(argv: list[str] | None = None) -> int:
    return score_folders(__doc__.splitlines()[0], scores, argv)


if __name__ == "__main__":
    sys.exit(main())
