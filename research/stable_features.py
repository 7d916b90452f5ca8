"""Keep only the measurements whose distribution the lab shares, then refit: a features probe.

Produced docs/RESULTS.md's "Measurements the lab shares" rows (issue 23).

Why: ``research/standardisation_ceiling.py`` shows that re-standardising every measurement
cannot go past about 0.70 on tecom, even with the true classes, while the same measurements
separate tecom's classes at 0.94 when fitted on its labels. Some measurements must move
differently in each class. A measurement whose whole distribution (not only its mean and
spread) is the same on the lab as at home, once re-standardised, is one the lab shares; a
classifier refitted on those alone might carry over (feature-subset domain adaptation,
Satpal and Sarawagi 2007). No label of the lab is needed to choose them.

Settings fixed before any score:
- after ``wbc adapt``'s class-balanced scaler, each measurement's 1-D Wasserstein distance
  between the training crops (standardised by the run's scaler, each class weighted equally by
  its labels) and the lab's cells (standardised by the adapted scaler, weighted by
  ``class_balanced_weights`` of the adapted posterior);
- keep the ``KEEP`` fraction of measurements with the smallest distance (two levels measured);
- refit the run's own recipe (``make_pipeline``, the run's seed) on the run's stored training
  measurements of those columns, re-standardise it on the lab as ``wbc adapt`` does, predict.

The folder's labels (its class folder names) are read **only to score**.

Usage: python research/stable_features.py FOLDER RUN [RUN ...] [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.stats import wasserstein_distance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    adapted_features_lab,
    score_runs,
)

from wbc.models.adaptation import class_balanced_scaler, class_balanced_weights  # noqa: E402
from wbc.models.features import (  # noqa: E402
    feature_names,
    fit_pipeline,
    make_pipeline,
    read_training_features,
)

KEEP = (0.5, 0.75)


def distances(source, source_weights, lab, lab_weights) -> np.ndarray:
    return np.array(
        [
            wasserstein_distance(source[:, j], lab[:, j], source_weights, lab_weights)
            for j in range(source.shape[1])
        ]
    )


def stages(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    lab_cells = adapted_features_lab(run_dir, folder, input_kind)
    run, truth, measured = lab_cells.run, lab_cells.truth, lab_cells.measured
    settings = run.config.model.features
    source_scaler = run.model.pipeline[0]
    predictions = {"before": lab_cells.before}
    posterior = lab_cells.adapted.predict_proba(measured)
    predictions["adapted"] = posterior.argmax(axis=1)

    train_raw, train_labels = read_training_features(run_dir, settings.colour)
    train_raw = train_raw.astype(np.float64)
    train = source_scaler.transform(train_raw)
    counts = np.bincount(train_labels)
    far = distances(
        train,
        1.0 / counts[train_labels],
        lab_cells.adapted[0].transform(measured),
        class_balanced_weights(posterior),
    )
    names = feature_names(settings.colour)
    order = np.argsort(far, kind="stable")
    for keep in KEEP:
        kept = np.sort(order[: max(2, int(round(keep * len(order))))])
        pipeline = make_pipeline(settings, run.config.seed)
        fit_pipeline(pipeline, train_raw[:, kept], train_labels)
        class_balanced_scaler(pipeline, measured[:, kept])
        predictions[f"kept {keep:.0%}"] = pipeline.predict_proba(measured[:, kept]).argmax(axis=1)
    print(
        "  most moved: "
        + ", ".join(f"{names[j]} {far[j]:.2f}" for j in order[::-1][:8])
        + "; least: "
        + ", ".join(f"{names[j]} {far[j]:.2f}" for j in order[:5])
    )
    return accuracy_and_f1(truth, predictions)


def main(argv: list[str] | None = None) -> int:
    return score_runs(__doc__.splitlines()[0], stages, argv)


if __name__ == "__main__":
    sys.exit(main())
