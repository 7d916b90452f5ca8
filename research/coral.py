"""Class-balanced CORAL, and SHOT's centroids, after ``wbc adapt``'s re-standardisation.

Produced docs/RESULTS.md's "Two more adaptations without labels" rows (issue 23).

Why: ``wbc adapt`` moves each of the features family's measurements to the lab's own
class-balanced mean and standard deviation, one feature at a time. A stain moves measurements
together (the colour measures of one region, the nucleus area with the N:C ratio), so their
correlations change too, and a per-feature scaler cannot undo that. CORAL (Sun et al. 2016)
aligns the whole covariance: the lab's standardised measurements are whitened with their own
covariance and re-coloured with the training side's, z @ C_lab^(-1/2) @ C_train^(1/2).

Settings fixed before any score:
- both covariances class-balanced: the training side weighs each class equally by its labels,
  the lab by ``class_balanced_weights`` of the current posterior (as the scaler does);
- both shrunk by Ledoit-Wolf (scikit-learn), so 28 cells of a dev folder give a usable matrix;
- ``ROUNDS`` predict -> reweight -> re-estimate rounds, from the adapted scaler's posterior.

The folder's labels (its class folder names) are read **only to score** each stage: before
adaptation, after the class-balanced scaler (``wbc adapt --priors never``), after CORAL, and
SHOT's centroid pseudo-labels (``centroid_labels``; settings fixed before its first score, after
CORAL's had been seen).

Usage: python research/coral.py FOLDER RUN [RUN ...] [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.covariance import ledoit_wolf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.models.adaptation import SCALER_ITERATIONS, class_balanced_weights  # noqa: E402
from wbc.models.features import read_training_features  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    adapted_features_lab,
    score_runs,
)

ROUNDS = SCALER_ITERATIONS


def weighted_covariance(z: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Ledoit-Wolf covariance of ``z`` under ``weights`` (summing to 1): each row scaled by
    sqrt(n w) about the weighted mean, so the plain estimator sees the weighted scatter."""
    weights = np.asarray(weights, np.float64) / np.sum(weights)
    centred = (z - weights @ z) * np.sqrt(len(z) * weights)[:, None]
    return ledoit_wolf(centred, assume_centered=True)[0]


def matrix_power(matrix: np.ndarray, power: float) -> np.ndarray:
    values, vectors = np.linalg.eigh(matrix)
    values = np.maximum(values, 1e-9)
    return (vectors * values**power) @ vectors.T


def centroid_labels(z: np.ndarray, posterior: np.ndarray) -> np.ndarray:
    """SHOT's pseudo-labels (Liang et al. 2020): class centroids of the lab's cells weighted by
    the adapted posterior, each cell given its nearest centroid by cosine distance; the centroids
    are then recomputed from those labels and the cells assigned once more."""

    def nearest(centroids: np.ndarray) -> np.ndarray:
        unit = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        ends = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-12)
        return (unit @ ends.T).argmax(axis=1)

    labels = nearest(posterior.T @ z / np.maximum(posterior.sum(axis=0), 1e-12)[:, None])
    one_hot = np.eye(posterior.shape[1])[labels]
    return nearest(one_hot.T @ z / np.maximum(one_hot.sum(axis=0), 1e-12)[:, None])


def stages(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    lab_cells = adapted_features_lab(run_dir, folder, input_kind)
    source, truth = lab_cells.run, lab_cells.truth
    settings = source.config.model.features
    predictions = {"before": lab_cells.before}
    lab = lab_cells.adapted[0].transform(lab_cells.measured)
    classifier = lab_cells.adapted[-1]
    columns = classifier.classes_
    posterior = classifier.predict_proba(lab)
    predictions["adapted"] = columns[posterior.argmax(axis=1)]
    adapted_posterior = posterior

    train_raw, train_labels = read_training_features(run_dir, settings.colour)
    train = source.model.pipeline[0].transform(train_raw.astype(float))
    counts = {label: np.sum(train_labels == label) for label in np.unique(train_labels)}
    train_weights = np.array([1.0 / counts[label] for label in train_labels])
    recolour = matrix_power(weighted_covariance(train, train_weights), 0.5)
    train_mean = train_weights @ train / train_weights.sum()
    for _ in range(ROUNDS):
        weights = class_balanced_weights(posterior)
        whiten = matrix_power(weighted_covariance(lab, weights), -0.5)
        aligned = (lab - weights @ lab) @ whiten @ recolour + train_mean
        posterior = classifier.predict_proba(aligned)
    predictions["coral"] = columns[posterior.argmax(axis=1)]
    predictions["centroids"] = columns[centroid_labels(lab, adapted_posterior)]
    return accuracy_and_f1(truth, predictions)


def main(argv: list[str] | None = None) -> int:
    return score_runs(__doc__.splitlines()[0], stages, argv)


if __name__ == "__main__":
    sys.exit(main())
