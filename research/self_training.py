"""Class-balanced self-training after ``wbc adapt``'s re-standardisation: measured, not shipped.

Produced docs/RESULTS.md's "EM priors off by default, and what else was tried" rows (issue 23).

Why: the features family's unlabelled adaptation only moves the scaler. Self-training (CBST,
Zou et al. 2018) also moves the boundaries: each round takes the most confident ``FRACTIONS``
of the lab's cells *per predicted class* (so a rare class keeps its share of pseudo-labels),
refits the classifier on the run's own training features (in the source scaler's units) plus
those cells (in the adapted scaler's units), with the lab's cells weighted to equal totals as
``--init`` weighs a lab's labelled cells (``--weighting equal``) or one each (``one``), and
predicts again. The settings were fixed before any score.

The folder's labels (its class folder names) are read **only to score** each stage: before
adaptation, after the class-balanced scaler (``wbc adapt --priors never``), and after each round.

Usage: python research/self_training.py FOLDER RUN [RUN ...] [--weighting equal|one]
       [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    adapted_features_lab,
    folder_and_runs,
    print_stages,
)

from wbc.models.features import make_pipeline, read_training_features  # noqa: E402

FRACTIONS = (0.2, 0.35, 0.5)  # share of each predicted class taken as pseudo-labels, per round


def confident_per_class(posterior: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``fraction`` most confident cells of each predicted class."""
    predicted, confidence = posterior.argmax(axis=1), posterior.max(axis=1)
    chosen: list[int] = []
    for label in np.unique(predicted):
        members = np.flatnonzero(predicted == label)
        keep = max(1, int(round(fraction * len(members))))
        chosen += members[np.argsort(-confidence[members], kind="stable")[:keep]].tolist()
    return np.array(sorted(chosen))


def stages(
    run_dir: Path, folder: Path, weighting: str, input_kind: str = "auto"
) -> dict[str, tuple[float, float]]:
    lab_cells = adapted_features_lab(run_dir, folder, input_kind)
    source, truth = lab_cells.run, lab_cells.truth
    settings = source.config.model.features
    predictions = {"before": lab_cells.before}
    pipeline = lab_cells.adapted
    lab = pipeline[0].transform(lab_cells.measured)
    train_raw, train_labels = read_training_features(run_dir, settings.colour)
    train = source.model.pipeline[0].transform(train_raw.astype(float))
    posterior = pipeline[-1].predict_proba(lab)
    columns = pipeline[-1].classes_
    predictions["adapted"] = columns[posterior.argmax(axis=1)]
    for round_, fraction in enumerate(FRACTIONS, 1):
        chosen = confident_per_class(posterior, fraction)
        weight = len(train) / len(chosen) if weighting == "equal" else 1.0
        classifier = make_pipeline(settings, source.config.seed)[-1]
        classifier.fit(
            np.concatenate([train, lab[chosen]]),
            np.concatenate([train_labels, columns[posterior[chosen].argmax(axis=1)]]),
            sample_weight=np.concatenate([np.ones(len(train)), np.full(len(chosen), weight)]),
        )
        posterior, columns = classifier.predict_proba(lab), classifier.classes_
        predictions[f"round {round_}"] = columns[posterior.argmax(axis=1)]
    return accuracy_and_f1(truth, predictions)


def main(argv: list[str] | None = None) -> int:
    parser = folder_and_runs(__doc__.splitlines()[0])
    parser.add_argument("--weighting", choices=("equal", "one"), default="equal")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        scores = stages(run_dir, args.folder, args.weighting, args.input)
        print_stages(f"{run_dir.name} ({args.weighting})", scores)
    return 0


if __name__ == "__main__":
    sys.exit(main())
