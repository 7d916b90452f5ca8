"""When not to trust a prediction: how far an input's stain lies from the training images'.

Why the stain: a model trained on one lab's smears misreads another lab's cells mostly because
their colours differ (``docs/RESULTS.md``), and colour can be measured before any model runs.
Each input (the crop the model sees) is summarised by its Reinhard statistics, the mean and
standard deviation in CIELAB of its stained pixels after white balance (``wbc.imaging.color``): six
numbers. ``wbc train`` fits their mean and covariance over a seeded sample of the training
images and writes ``domain.json`` into the run; the threshold is the ``QUANTILE`` quantile of
the training images' own Mahalanobis distances, so about 1% of cells like the training ones are
flagged. Nothing here is fitted to another lab's data.

A prediction row then carries ``stain_distance`` and ``out_of_domain`` (distance above the
threshold), beside ``confidence`` (the top probability). When many cells of one batch are
flagged, the folder is likely another lab's, and ``adaptation_advice`` says to adapt the run to
it from its unlabelled cells (``wbc adapt``).

A second check needs no reference: an image whose background the camera clipped
(``wbc.imaging.color.saturated_channels``) has lost that channel's true level, which white
balance cannot recover; ``saturation_warning`` says so when at least ``ADVISE_SHARE`` of a
batch's images are clipped.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from wbc.core.errors import ModelError

DOMAIN_NAME = "domain.json"
QUANTILE = 0.99  # of the training images' distances: the out-of-domain threshold
SAMPLE = 800  # training images measured at most (a seeded draw)
RIDGE = 1e-3  # added to the covariance's diagonal, relative to its mean variance
STAIN_SIDE = 32  # pixels: the input is shrunk to this square before its stain is measured
# Adaptation is advised when at least this share of at least ADVISE_CELLS cells is flagged:
# ten times the flag rate of cells like the training ones (1 - QUANTILE). Fixed a priori.
ADVISE_SHARE = 0.10
ADVISE_CELLS = 20


def stain_vector(rgb: np.ndarray) -> np.ndarray:
    """The six stain statistics of one image: LAB mean and std of its stained pixels, measured
    on the image shrunk to ``STAIN_SIDE`` pixels (area-averaged: the means hold, and it costs
    ~0.3 ms instead of 2-4 ms on every predicted cell)."""
    from wbc.imaging.color import reinhard_stats
    from wbc.imaging.preprocess import resize

    small = resize(np.asarray(rgb, np.uint8), (STAIN_SIDE, STAIN_SIDE))
    mean, std = reinhard_stats(small)
    return np.concatenate([mean, std]).astype(np.float64)


@dataclass(frozen=True)
class DomainReference:
    mean: np.ndarray  # (6,)
    inverse: np.ndarray  # (6, 6) inverse of the (ridged) covariance
    threshold: float  # Mahalanobis distance above which an input is out of domain
    images: int

    def distance(self, vectors: np.ndarray) -> np.ndarray:
        """Mahalanobis distances of stain vectors (N, 6) from the training images."""
        delta = np.atleast_2d(vectors) - self.mean
        return np.sqrt(np.maximum(np.einsum("ni,ij,nj->n", delta, self.inverse, delta), 0.0))

    def outside(self, distances) -> np.ndarray:
        """Which distances lie beyond the threshold: the out-of-domain flag, bool array."""
        return np.asarray(distances, dtype=np.float64) > self.threshold

    def distances(self, images: Sequence[np.ndarray]) -> np.ndarray:
        if not len(images):
            return np.zeros(0)
        return self.distance(np.stack([stain_vector(image) for image in images]))

    def to_json(self) -> dict:
        return {
            "features": "LAB mean (3) and std (3) of the stained pixels, white-balanced",
            "mean": self.mean.tolist(),
            "inverse_covariance": self.inverse.tolist(),
            "threshold": self.threshold,
            "quantile": QUANTILE,
            "images": self.images,
        }


def fit_reference(vectors: np.ndarray) -> DomainReference:
    """Mean, ridged inverse covariance and the ``QUANTILE`` distance of training vectors."""
    vectors = np.asarray(vectors, dtype=np.float64)
    mean = vectors.mean(axis=0)
    covariance = np.cov(vectors, rowvar=False) if len(vectors) > 1 else np.eye(vectors.shape[1])
    covariance = np.atleast_2d(covariance)
    covariance += np.eye(len(mean)) * RIDGE * max(float(np.trace(covariance)) / len(mean), 1e-6)
    inverse = np.linalg.inv(covariance)
    reference = DomainReference(mean, inverse, 0.0, len(vectors))
    threshold = float(np.quantile(reference.distance(vectors), QUANTILE))
    return DomainReference(mean, inverse, threshold, len(vectors))


def training_reference(
    files: Sequence[Path], load: Callable[[Path], np.ndarray], seed: int
) -> DomainReference:
    """The reference of a seeded sample of at most ``SAMPLE`` training files."""
    from wbc.core.seeding import rng_for

    files = list(files)
    if len(files) > SAMPLE:
        picked = rng_for(seed, "domain").choice(len(files), SAMPLE, replace=False)
        files = [files[i] for i in sorted(picked)]
    vectors = []
    for path in files:
        try:
            vectors.append(stain_vector(load(path)))
        except Exception:  # noqa: BLE001 - an unreadable file is reported by training itself
            continue
    if not vectors:
        raise ModelError("no readable training image to measure the stain of")
    return fit_reference(np.stack(vectors))


def write_reference(reference: DomainReference, run_dir: Path) -> Path:
    from wbc.core.manifest import write_json

    path = Path(run_dir) / DOMAIN_NAME
    write_json(path, reference.to_json())
    return path


def read_reference(run_dir: Path) -> Optional[DomainReference]:
    """The run's ``domain.json``; None for a run without one (made by an older wbc)."""
    path = Path(run_dir) / DOMAIN_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return DomainReference(
            np.asarray(data["mean"], np.float64),
            np.asarray(data["inverse_covariance"], np.float64),
            float(data["threshold"]),
            int(data["images"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: not a valid domain reference") from None


def few_cells_warning(cells: int) -> Optional[str]:
    """One line when a lab's statistics would come from fewer than ``ADVISE_CELLS`` cells, the
    least the advice ever judges; None otherwise. Adapting still goes ahead: it was asked for."""
    if cells >= ADVISE_CELLS:
        return None
    return (
        f"warning: adapting on {cells} cell{'' if cells == 1 else 's'}, fewer than "
        f"{ADVISE_CELLS}: the mean and spread of so few cells mostly reflect which cells they "
        "are, not the lab's stain"
    )


def adaptation_advice(flagged: int, total: int, run_dir, folder=None) -> Optional[str]:
    """One line advising ``wbc adapt`` when ``flagged`` of ``total`` cells are out of domain
    (at least ``ADVISE_SHARE`` of at least ``ADVISE_CELLS``); None otherwise. ``folder``: the
    folder the cells came from (None: a placeholder in the command)."""
    if total < ADVISE_CELLS or flagged < ADVISE_SHARE * total:
        return None
    run_dir = Path(run_dir)
    where = folder if folder is not None else "FOLDER"
    return (
        f"adaptation advised: {flagged} of {total} cells ({flagged / total:.0%}) have a stain "
        f"unlike the training images; wbc adapt {run_dir} --unlabelled {where} "
        f"--out {run_dir.parent / (run_dir.name + '-adapted')}"
    )


def saturation_summary(per_image: Sequence[Sequence[str]]) -> dict[str, int]:
    """How many of the images judged have a saturated background, in all and per channel, from
    each image's ``wbc.imaging.color.saturated_channels``."""
    from wbc.imaging.color import CHANNELS

    summary = {"images": sum(1 for channels in per_image if channels), "of": len(per_image)}
    summary.update({name: sum(name in channels for channels in per_image) for name in CHANNELS})
    return summary


def saturation_warning(summary: Optional[dict[str, int]]) -> Optional[str]:
    """One line when at least ``ADVISE_SHARE`` of the images judged (``saturation_summary``) have
    a saturated background; None otherwise. The same share as the adaptation advice, fixed
    before it was measured. The answers do move: overexposing the training lab's held-out
    crops until red and green clip cost the default 2 and 6 of 28 cells (docs/RESULTS.md, "A
    saturated background")."""
    if not summary or not summary["images"] or summary["images"] < ADVISE_SHARE * summary["of"]:
        return None
    from wbc.imaging.color import CHANNELS

    where = ", ".join(f"{name} in {summary[name]}" for name in CHANNELS if summary[name])
    return (
        f"warning: {summary['images']} of {summary['of']} images have a saturated background "
        f"({where}): the camera clipped the light there, so white balance cannot recover those "
        "channels and the answers can change; for new images, lower the exposure or the lamp "
        "until the background is below 255"
    )
