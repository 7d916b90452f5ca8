"""Joint Distribution Adaptation after ``wbc adapt``'s re-standardisation: a features probe.

Produced docs/RESULTS.md's "Joint distribution adaptation" rows (issue 23, seventh pass).

Why: ``research/standardisation_ceiling.py`` shows that moving each measurement on its own
cannot pass about 0.70 on tecom, even with the true classes, because the training lab's
boundary lands in another place on each class. JDA (Long et al. 2013) is the classic
class-conditional adaptation that needs no labels of the lab: it finds a projection of the
measurements in which each class's mean (the lab's by pseudo-labels) and the whole mean are
the same at home and on the lab, refits the classifier there, and repeats with the new
pseudo-labels. A linear (primal) JDA drops the few directions along which the classes moved
and keeps those of most spread, each scaled to unit spread: the kept measurements come out
whitened, which is likely what broke it here (docs/RESULTS.md).

Settings fixed before any score, with the rule (the sixth pass's):
- source: the run's stored training measurements through the run's scaler; the lab: its cells
  through the scaler ``wbc adapt --priors never`` re-estimates; every row L2-normalised, as
  JDA's published code does;
- M = C e0 e0' + sum_c e_c e_c', the marginal e0 class-balanced (source 1/(C n_c) by its labels,
  the lab by ``class_balanced_weights`` of the current posterior), so the lab's class mix does
  not move it; e_c: source 1/n_c on class c, the lab -1/m_c on its cells pseudo-labelled c;
  M divided by its Frobenius norm;
- the K smallest generalised eigenvectors of (X'MX + LAMBDA I) a = phi X'HX a; ROUNDS rounds of
  project, L2-normalise, refit the run's recipe (``make_pipeline``, the run's seed) on the
  projected source, predict the lab; the first pseudo-labels are the adapted posterior's;
- the rule: JDA enters ``wbc adapt`` only if its mean accuracy over the 11 shifted folders beats
  the default adaptation's on seeds 42 and 7, and it loses at most one cell on the same lab's 28
  originals. It did not (docs/RESULTS.md).

The folder's labels (its class folder names) are read **only to score**.

Usage: python research/jda.py FOLDER RUN [RUN ...] [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from scipy.linalg import eigh

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    adapted_features_lab,
    score_runs,
)

from wbc.models.adaptation import class_balanced_weights  # noqa: E402
from wbc.models.features import (  # noqa: E402
    fit_pipeline,
    make_pipeline,
    read_training_features,
)

K = 50
LAMBDA = 0.1
ROUNDS = 10


def unit_rows(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


def mmd_directions(
    labels: np.ndarray,
    pseudo: np.ndarray,
    lab_weights: np.ndarray,
    classes: int,
) -> np.ndarray:
    """The columns e of M = sum e e' (n_source + n_lab rows each): the class-balanced marginal
    (times sqrt(C), so that its outer product carries JDA's factor C) and one per class."""
    counts = np.bincount(labels, minlength=classes)
    marginal = np.concatenate([1.0 / (classes * counts[labels]), -lab_weights])
    columns = [np.sqrt(classes) * marginal]
    for c in range(classes):
        in_lab = pseudo == c
        source_part = np.where(labels == c, 1.0 / counts[c], 0.0)
        lab_part = np.where(in_lab, -1.0 / max(in_lab.sum(), 1), 0.0)
        if in_lab.any():
            columns.append(np.concatenate([source_part, lab_part]))
    return np.stack(columns, axis=1)


def jda_projection(
    source: np.ndarray, labels: np.ndarray, lab: np.ndarray, posterior: np.ndarray
) -> np.ndarray:
    """The d x K projection of one JDA round, without forming any n x n matrix: X'MX is
    (X'E)(X'E)' / ||E'E||_F, and X'HX the centred scatter."""
    classes = posterior.shape[1]
    directions = mmd_directions(
        labels,
        posterior.argmax(axis=1),
        class_balanced_weights(posterior),
        classes,
    )
    pooled = np.concatenate([source, lab])
    moved = pooled.T @ directions
    frobenius = np.linalg.norm(directions.T @ directions)
    mmd = moved @ moved.T / frobenius + LAMBDA * np.eye(pooled.shape[1])
    centred = pooled - pooled.mean(axis=0)
    scatter = centred.T @ centred
    # eigh solves a x = phi b x for a symmetric b that must be positive definite; a tiny ridge
    # keeps the scatter so when a measurement is constant.
    _, vectors = eigh(mmd, scatter + 1e-9 * np.eye(len(scatter)))
    return vectors[:, :K]


def stages(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    lab_cells = adapted_features_lab(run_dir, folder, input_kind)
    run, measured = lab_cells.run, lab_cells.measured
    settings = run.config.model.features
    posterior = lab_cells.adapted.predict_proba(measured)
    predictions = {"before": lab_cells.before, "adapted": posterior.argmax(axis=1)}

    train_raw, labels = read_training_features(run_dir, settings.colour)
    source = unit_rows(run.model.pipeline[0].transform(train_raw.astype(np.float64)))
    lab = unit_rows(lab_cells.adapted[0].transform(measured))
    for _ in range(ROUNDS):
        projection = jda_projection(source, labels, lab, posterior)
        pipeline = make_pipeline(settings, run.config.seed)
        fit_pipeline(pipeline, unit_rows(source @ projection), labels)
        posterior = pipeline.predict_proba(unit_rows(lab @ projection))
    predictions["jda"] = posterior.argmax(axis=1)
    return accuracy_and_f1(lab_cells.truth, predictions)


def main(argv: list[str] | None = None) -> int:
    return score_runs(__doc__.splitlines()[0], stages, argv)


if __name__ == "__main__":
    sys.exit(main())
