"""Runs of any families averaged on a labelled folder: each run's score, then their mean's.

Produced docs/RESULTS.md's "Two families averaged after adaptation" row (issue 23).

Why: ``model.ensemble`` trains its members together and ``wbc adapt`` does not adapt an
ensemble, so the question "would the adapted features and cnn runs do better together?" is
answered here, on runs already adapted one by one: equal weights, every run predicting the same
files exactly as ``wbc evaluate`` does (its stain mapping, crop rule and prior correction).

Usage: python research/average_runs.py FOLDER RUN RUN [RUN ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from sklearn.metrics import accuracy_score, f1_score

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.imaging.feeds import list_class_files  # noqa: E402
from wbc.models.runs import load_run, resolve_model_path  # noqa: E402
from wbc.workflows.evaluate import predict_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="labelled images in class folders")
    parser.add_argument("runs", type=Path, nargs="+", help="run folders with the same classes")
    args = parser.parse_args(argv)
    if len(args.runs) < 2:
        parser.error("give two runs or more")
    probabilities, truth, classes = [], None, None
    for run_dir in args.runs:
        run = load_run(resolve_model_path(run_dir))
        if classes is not None and list(run.classes) != classes:
            parser.error(f"{run_dir}: classes {list(run.classes)}, not {classes}")
        classes = list(run.classes)
        _, files, labels = list_class_files(args.folder, classes)
        probs, kept, _, _ = predict_files(run, files)
        if len(kept) != len(files):
            parser.error(f"{run_dir}: {len(files) - len(kept)} images could not be predicted")
        probabilities.append(probs)
        truth = labels
    rows = [(run_dir.name, probs) for run_dir, probs in zip(args.runs, probabilities)]
    rows.append(("mean", np.mean(probabilities, axis=0)))
    for name, probs in rows:
        guess = probs.argmax(axis=1)
        print(
            f"{name}: accuracy {accuracy_score(truth, guess):.3f}, "
            f"macro-F1 {f1_score(truth, guess, average='macro'):.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
