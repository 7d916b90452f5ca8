"""Stain augmentation of the training copies: HED jitter, RandStainNA, stain strength, scale jitter
(issue 23).

The augment stage makes every training copy; these steps run on each copy after its geometric
transform, so they reach every family (the features SVM trains on the same copies as the Keras
families) and never the held-out originals. Each copy draws from its own generator, seeded by
(seed, class, copy) apart from the geometric draw's, so switching a step on leaves the others'
draws (and the copies made with every step off) unchanged.

* ``hed_jitter`` (Tellez et al. 2019): deconvolve into haematoxylin, eosin and DAB with
  skimage's ``hed_from_rgb`` (``unclipped_hed``), scale each stain's concentration by
  U(1-s, 1+s) and shift it by U(-b, b) (skimage's units: optical density / ln(1e6); a crop's
  haematoxylin averages about 0.03 and peaks near 0.1), recompose with ``hed2rgb``. Published
  strengths are in scikit-image <= 0.17's units, in which the same shift changes the colour
  about 3.3 times less: Tellez's light and strong shifts (0.05, 0.2) are about 0.015 and 0.06
  here (``research/hed_units.py``); their scales (0.05, 0.2) are ratios and carry over.
* ``randstainna`` (Shen et al. 2022): fit a normal distribution to each LAB channel's per-image
  mean and standard deviation over the lab's originals (``lab_distribution``), draw a virtual
  template from it per copy, and Reinhard-map the copy to that template.
* ``stain_strength``: every pixel's optical density (against white, per channel) times one
  factor, log-uniform in [1/(1+s), 1+s]. By Beer-Lambert a dye's concentration or staining time
  scales every density alike, and white balance (the default's only colour step) divides by the
  background, which a per-channel power leaves in place: ``(I/B)**f`` after balance, so the
  absolute colour measurements see the spread another lab's stain strength puts on them.
* scale jitter: one zoom factor U(1-z, 1+z) for both axes (the geometric engines' ``zx``/``zy``),
  since another lab's microscope and crop frame the cell at another size.

LAB is OpenCV's float conversion (L 0..100), as in ``wbc.imaging.color``'s Reinhard; this module
sits below ``wbc.imaging`` (the augment stage may not import it), hence its own few lines.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import cv2
import numpy as np
from skimage.color import hed2rgb, hed_from_rgb

_MIN_STD = 1.0  # LAB std floor: a flat crop is not blown up by the template's contrast


class LabDistribution(NamedTuple):
    """Per LAB channel: mean and std over images of the per-image mean, and of the per-image
    std. Four (3,) tuples of floats (plain, so that it travels to worker processes as is)."""

    mean_of_mean: tuple[float, ...]
    std_of_mean: tuple[float, ...]
    mean_of_std: tuple[float, ...]
    std_of_std: tuple[float, ...]


def stain_enabled(color: Any) -> bool:
    """Whether a ``ColorConfig`` asks for any stain step of the training copies."""
    return any(stain_params(color).values())


def stain_params(color: Any) -> dict[str, Any]:
    """The stain settings that decide the copies, for the augment stage's manifest. A newer
    setting is named only when on, so that the copies made before it existed stay current."""
    params = {
        "hed_jitter": color.hed_jitter,
        "hed_shift": color.hed_shift,
        "randstainna": color.randstainna,
        "scale_jitter": color.scale_jitter,
    }
    if color.stain_strength:
        params["stain_strength"] = color.stain_strength
    return params


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def _from_lab(lab: np.ndarray) -> np.ndarray:
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def lab_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The LAB mean and std (3,) of every pixel of ``rgb`` (RandStainNA: the whole patch)."""
    lab = _to_lab(rgb).reshape(-1, 3).astype(np.float64)
    return lab.mean(axis=0), lab.std(axis=0)


def lab_distribution(images: list[np.ndarray]) -> LabDistribution:
    """RandStainNA's stain space of a set of images: normal fits of the per-image LAB stats."""
    if not images:
        raise ValueError("no images to fit a stain distribution to")
    stats = [lab_stats(image) for image in images]
    means = np.array([s[0] for s in stats])
    stds = np.array([s[1] for s in stats])

    def floats(values: np.ndarray) -> tuple[float, ...]:
        return tuple(float(v) for v in values)

    return LabDistribution(
        floats(means.mean(axis=0)),
        floats(means.std(axis=0)),
        floats(stds.mean(axis=0)),
        floats(stds.std(axis=0)),
    )


def randstainna(
    rgb: np.ndarray, distribution: LabDistribution, rng: np.random.Generator
) -> np.ndarray:
    """``rgb`` (uint8) Reinhard-mapped to a template drawn from ``distribution``."""
    mean = rng.normal(distribution.mean_of_mean, distribution.std_of_mean)
    std = np.maximum(rng.normal(distribution.mean_of_std, distribution.std_of_std), _MIN_STD)
    own_mean, own_std = lab_stats(rgb)
    lab = _to_lab(rgb)
    lab = (lab - own_mean.astype(np.float32)) * (std / np.maximum(own_std, _MIN_STD)).astype(
        np.float32
    ) + mean.astype(np.float32)
    return _from_lab(lab)


def hed_jitter(rgb: np.ndarray, scale: float, shift: float, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` (uint8) with each stain concentration times U(1-scale, 1+scale) plus
    U(-shift, shift). Both 0: the image as it is."""
    if not scale and not shift:
        return rgb
    alpha = rng.uniform(1 - scale, 1 + scale, 3) if scale else np.ones(3)
    beta = rng.uniform(-shift, shift, 3) if shift else np.zeros(3)
    stains = unclipped_hed(rgb) * alpha + beta
    out = hed2rgb(stains)  # clips to [0, 1]: a negative concentration is brighter than white
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


def unclipped_hed(rgb: np.ndarray) -> np.ndarray:
    """``skimage.color.rgb2hed`` without its clip at 0, so that ``hed2rgb`` gives ``rgb`` back.

    rgb2hed sets negative concentrations (pixels off the three stain vectors: most of a smear's
    background and red cells) to 0, and the round trip then moves crops by 5-7 grey levels on
    average (up to 60): an unasked-for colour change on every copy.
    """
    values = np.maximum(np.asarray(rgb, np.float64) / 255.0, 1e-6)
    return (np.log(values) / np.log(1e-6)) @ hed_from_rgb


def stain_strength(rgb: np.ndarray, strength: float, rng: np.random.Generator) -> np.ndarray:
    """``rgb`` (uint8) with every optical density times one factor, log-uniform in
    [1/(1+strength), 1+strength]: ``255 * (rgb/255)**factor``, one table for all channels.
    0: the image as it is (and nothing drawn)."""
    if not strength:
        return rgb
    factor = float(np.exp(rng.uniform(-np.log1p(strength), np.log1p(strength))))
    table = 255.0 * (np.arange(256) / 255.0) ** factor
    return cv2.LUT(np.ascontiguousarray(rgb, np.uint8), np.clip(table + 0.5, 0, 255).astype(np.uint8))


def scale_factor(scale_jitter: float, rng: np.random.Generator) -> float:
    """The zoom of one copy: U(1-z, 1+z), 1 when off."""
    return float(rng.uniform(1 - scale_jitter, 1 + scale_jitter)) if scale_jitter else 1.0


def stain_copy(
    rgb: np.ndarray,
    color: Any,
    rng: np.random.Generator,
    distribution: LabDistribution | None = None,
) -> np.ndarray:
    """The colour steps of one training copy: RandStainNA's template, HED jitter, then the stain's
    strength (last, so that switching it on leaves the earlier steps' draws as they were)."""
    out = rgb
    if color.randstainna:
        if distribution is None:
            raise ValueError("color.randstainna needs the training images' LAB distribution")
        out = randstainna(out, distribution, rng)
    out = hed_jitter(out, color.hed_jitter, color.hed_shift, rng)
    return stain_strength(out, color.stain_strength, rng)
