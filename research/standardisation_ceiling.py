"""How far re-standardisation can take the features family on a lab: a diagnosis, not a method.

Produced docs/RESULTS.md's "How far re-standardisation can go on tecom" table (issue 23).

Why: ``wbc adapt`` moves the features family's measurements to the lab's own class-balanced
mean and standard deviation, weighting each cell by its *predicted* class. If those weights were
perfect, how well would the run do? This script weights each cell by its **true** class (every
class equal, as the training scaler saw them) and scores the run with that scaler. The labels
are read to weight and to score; nothing here chooses a setting. If the ceiling is close to what
``wbc adapt`` reaches, better unlabelled weights cannot help: the measurements move differently
in each class, which a per-feature shift and scale cannot undo.

A second figure says whether the measurements still tell the classes apart on that lab at all:
the run's own recipe (``make_pipeline``) fitted on the lab's labelled measurements, scored by
5-fold stratified cross-validation (seeded by the run's seed). A third asks whether the classes
form clusters that a method without labels could find: k-means (k = the classes, and twice that)
on the lab's standardised measurements, each cluster given its commonest true class. That purity
is the best any labelling of those clusters could score.

Usage: python research/standardisation_ceiling.py FOLDER RUN [RUN ...] [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score
from sklearn.model_selection import StratifiedKFold, cross_val_predict

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import folder_and_runs, folder_labels  # noqa: E402

from wbc.models.base import resize_batch  # noqa: E402
from wbc.models.features import make_pipeline  # noqa: E402
from wbc.models.nucleus import batch_features  # noqa: E402
from wbc.models.runs import load_run, resolve_model_path  # noqa: E402
from wbc.workflows.adapt import load_cells  # noqa: E402


def ceiling(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple]:
    run = load_run(resolve_model_path(run_dir))
    cells, _ = load_cells(run, folder, input_kind=input_kind)
    truth = folder_labels(folder, list(run.classes))
    model, pipeline = run.model, run.model.pipeline
    measured = batch_features(resize_batch(cells, model.image_size), model.colour, model.nucleus)
    measured = measured.astype(np.float64)
    weights = 1.0 / np.bincount(truth, minlength=len(run.classes))[truth]
    weights /= weights.sum()
    mean = weights @ measured
    scale = np.sqrt(weights @ (measured - mean) ** 2)
    scale = np.where(scale > 1e-12, scale, pipeline[0].scale_)  # as the adapted scaler does
    guesses = {"true-class-balanced scaler": pipeline[-1].predict_proba((measured - mean) / scale)}
    folds = StratifiedKFold(5, shuffle=True, random_state=run.config.seed)
    recipe = make_pipeline(run.config.model.features, run.config.seed)
    guesses["fitted on the lab's labels, 5-fold CV"] = cross_val_predict(
        recipe, measured, truth, cv=folds, method="predict_proba"
    )
    standardised = (measured - measured.mean(axis=0)) / np.maximum(measured.std(axis=0), 1e-12)
    for k in (len(run.classes), 2 * len(run.classes)):
        clusters = KMeans(k, n_init=10, random_state=run.config.seed).fit_predict(standardised)
        # each cluster answers its commonest true class: one-hot rows, scored like the others
        commonest = [
            np.bincount(truth[clusters == c], minlength=len(run.classes)).argmax() for c in range(k)
        ]
        guesses[f"k-means, {k} clusters, each its commonest class"] = np.eye(len(run.classes))[
            np.array(commonest)[clusters]
        ]
    return {
        name: (
            accuracy_score(truth, posterior.argmax(axis=1)),
            f1_score(truth, posterior.argmax(axis=1), average="macro"),
            confusion_matrix(truth, posterior.argmax(axis=1), labels=range(len(run.classes))),
        )
        for name, posterior in guesses.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = folder_and_runs(__doc__.splitlines()[0]).parse_args(argv)
    for run_dir in args.runs:
        for name, (accuracy, macro_f1, matrix) in ceiling(run_dir, args.folder, args.input).items():
            print(f"{run_dir.name}, {name}: {accuracy:.3f} / {macro_f1:.3f}")
            print("  confusion (rows true, columns predicted):", matrix.tolist())
    return 0


if __name__ == "__main__":
    sys.exit(main())
