"""The lab's own clusters vote on the adapted answers: a features probe.

Produced docs/RESULTS.md's "The lab's clusters vote" rows (issue 23, seventh pass).

Why: the sixth pass's diagnosis (``research/standardisation_ceiling.py``) found that k-means on
tecom's re-standardised measurements, each cluster named by its commonest *true* class,
scores 0.72-0.86. That diagnosis read tecom's labels. This method reads none: each cluster is
named by the adapted classifier's own answers inside it, so a cell the classifier gets wrong
takes its cluster's majority, which may be right.

Settings fixed before any score, with the rule:
- after ``wbc adapt``'s class-balanced scaler, the lab's standardised measurements are
  clustered by k-means (K = 2 x classes, at most cells // 3; ``N_INIT`` restarts; the run's
  seed); each cell's answer is the class of largest summed adapted posterior over its cluster;
- the rule: it passes only if its mean accuracy over the 11 shifted folders beats the default
  adaptation's on seeds 42 and 7, and it loses at most one cell on the same lab's 28
  originals. Its answers depend on the batch, so it would be an option of ``wbc count``, not a
  change to the adapted model.

The folder's labels (its class folder names) are read **only to score**.

Usage: python research/cluster_vote.py FOLDER RUN [RUN ...] [--input auto|crop]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from sklearn.cluster import KMeans

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import accuracy_and_f1, adapted_features_lab, score_runs  # noqa: E402

CLUSTERS_PER_CLASS = 2
N_INIT = 20


def cluster_vote(standardised: np.ndarray, posterior: np.ndarray, seed: int) -> np.ndarray:
    """Each cell's answer: the class of largest summed posterior over its k-means cluster."""
    clusters = min(CLUSTERS_PER_CLASS * posterior.shape[1], max(1, len(posterior) // 3))
    assignment = KMeans(clusters, n_init=N_INIT, random_state=seed).fit_predict(standardised)
    votes = np.zeros((clusters, posterior.shape[1]))
    np.add.at(votes, assignment, posterior)
    return votes.argmax(axis=1)[assignment]


def stages(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    lab_cells = adapted_features_lab(run_dir, folder, input_kind)
    measured, adapted = lab_cells.measured, lab_cells.adapted
    posterior = adapted.predict_proba(measured)
    predictions = {
        "before": lab_cells.before,
        "adapted": posterior.argmax(axis=1),
        "cluster vote": cluster_vote(
            adapted[0].transform(measured), posterior, lab_cells.run.config.seed
        ),
    }
    return accuracy_and_f1(lab_cells.truth, predictions)


def main(argv: list[str] | None = None) -> int:
    return score_runs(__doc__.splitlines()[0], stages, argv)


if __name__ == "__main__":
    sys.exit(main())
