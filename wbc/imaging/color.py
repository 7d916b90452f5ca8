"""Colour robustness: training colour jitter, stain-independent inputs, stain normalisation.

A model trained on one lab's smears learns that lab's stain as much as the cells' shapes; on
another lab's images (another stain, camera or background, e.g. the yellow-background
``tecom-crops``) it fails. Three remedies, all driven by the ``color:`` config section:

* **jitter** (``color.brightness``, ``contrast``, ``saturation``, ``hue``; 0 = off): random,
  seeded, per-image colour changes of the TRAINING batches only (``add_jitter``, a
  ``tf.data`` map after batching, so every epoch sees fresh colours). Never at evaluate or
  predict time.
* **input** (``color.input``): ``rgb`` (as before), ``gray`` (luminance) or ``hematoxylin``
  (the nuclear-stain channel of Ruifrok-Johnston colour deconvolution, ``rgb2hed``). Both are
  replicated to 3 channels so the model is unchanged. Applied everywhere (train, evaluate,
  predict) through ``wbc.imaging.preprocess``.
* **normalize** (``color.normalize``): ``reinhard`` (LAB mean/std matching) or ``macenko``
  (SVD stain-vector estimation) maps every image's colours to a ``StainReference`` computed from
  the training images when training starts; it is written to the run folder
  (``stain_reference.json``) and read back with the model, so train, evaluate and predict agree.
  ``balance`` only divides each image by its own background colour (below) and maps nothing:
  Reinhard's statistics are those of an image's stained pixels, and in a crop filled by its
  cell (another lab's crops, with few red cells) those are the cell's own, so the map itself
  depends on the cell's class. ``wbc adapt`` then moves the measurements to the lab's cells,
  class-balanced (docs/RESULTS.md, "White balance only").

Stain augmentation (``color.hed_jitter``, ``hed_shift``, ``randstainna``, ``stain_strength``,
``scale_jitter``) is not here: it changes the augment stage's training copies
(``wbc/data/stain.py``), which every family trains on, and that stage sits below this module.

Backgrounds: a smear's background is pale grey, another lab's may be yellow. Before stain
normalisation and deconvolution each image is divided by its own background colour (the median
of its brightest 10 % of pixels, gain at most 2x per channel; ``background``), so the
background becomes white, i.e. zero optical density, and never counts as stain. Statistics are
taken over stained (foreground) pixels only, so they do not depend on how much background a
frame holds (a smear vs a single-cell crop).

Order of the colour steps on a resized uint8 image: normalize -> input. Jitter then acts on the
model's scaled training batch. Everything here except the jitter is numpy/OpenCV, with
scikit-image's colour deconvolution (``separate_stains`` with Ruifrok-Johnston's ``hed_from_rgb``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np
from skimage.color import hed_from_rgb, rgb_from_hed, separate_stains

from wbc.core.errors import ModelError
from wbc.data.cells import channel_sum

INPUTS = ("rgb", "gray", "hematoxylin")
NORMALIZERS = ("none", "reinhard", "macenko", "balance")
MAPPED = ("reinhard", "macenko")  # the normalisations that map to a training set's stain reference
REFERENCE_NAME = "stain_reference.json"
REFERENCE_IMAGES = 100  # training images sampled (seeded) to compute the stain reference

# Ruifrok & Johnston (2001) stain OD vectors (rows H, E, DAB) and their inverse: scikit-image's.
RGB_FROM_HED = rgb_from_hed
HED_FROM_RGB = hed_from_rgb
# separate_stains divides ln(rgb) by ln(1e-6) (its floor): its units are OD / ln(1e6)
_LOG_ADJUST = math.log(1e-6)

BETA = 0.15  # OD threshold: a pixel is stained when its OD passes this (Macenko: in all channels)
ALPHA = 1.0  # Macenko: percentiles (alpha, 100 - alpha) of the stain angles
MIN_PIXELS = 50  # fewer stained pixels than this: too little to estimate an image's stain
_BACKGROUND_TOP = 90  # percentile of brightness above which pixels estimate the background
_MIN_BACKGROUND = 128.0  # background channel floor: at most a 2x gain per channel
SATURATED = 254  # a background channel this bright was clipped by the camera: its level is lost
CHANNELS = ("red", "green", "blue")
_SATURATION_PIXELS = 16384  # about this many pixels (a strided sample) judge the saturation
# ``balance`` in words, for a consumer of an exported model (wbc export's metadata).
BALANCE_HOW = (
    f"divide each channel by the image's background colour (the median of its brightest "
    f"{100 - _BACKGROUND_TOP}% of pixels, each channel at least {_MIN_BACKGROUND:g})"
)
_MIN_STD = 1.0  # Reinhard: LAB std floor (uniform images are not blown up)
_MAX_STAIN_COSINE = 0.995  # Macenko: two stain directions closer than ~6 degrees are one stain


# --------------------------------------------------------------------------- background, OD


def background(rgb: np.ndarray) -> np.ndarray:
    """The image's background (illuminant) colour, float (3,): median of its brightest pixels.

    Near-white for the Kaggle smears, yellow for tecom-crops. Clipped to [128, 255] per channel.
    """
    pixels = np.asarray(rgb).reshape(-1, 3).astype(np.float32)
    brightness = channel_sum(pixels)
    top = pixels[brightness >= np.percentile(brightness, _BACKGROUND_TOP)]
    return np.clip(np.median(top, axis=0), _MIN_BACKGROUND, 255.0)


def saturated_channels(rgb: np.ndarray) -> tuple[str, ...]:
    """The channels (of ``CHANNELS``) in which the image's background is clipped: its
    ``background`` at ``SATURATED`` or more. The camera's exposure saturated them, so white
    balance cannot know their true level, and pale regions lose their colour in them.

    Judged on every n-th row and column, about ``_SATURATION_PIXELS`` pixels (0.5 ms for a
    640x480 smear instead of 6): within one grey level of the whole image's background, and the
    same verdict, on every image of dataset-master and tecom-crops.
    """
    array = np.asarray(rgb)
    step = max(1, int(math.sqrt(array.shape[0] * array.shape[1] / _SATURATION_PIXELS)))
    level = background(array[::step, ::step])
    return tuple(name for name, value in zip(CHANNELS, level) if value >= SATURATED)


def white_balance(rgb: np.ndarray, bg: Optional[np.ndarray] = None) -> np.ndarray:
    """``rgb`` divided by its background colour: the background becomes white. uint8."""
    bg = background(rgb) if bg is None else np.asarray(bg, np.float32)
    out = np.asarray(rgb, np.float32) * (255.0 / bg)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def optical_density(rgb: np.ndarray) -> np.ndarray:
    """Beer-Lambert optical density ``-ln(I / 255)`` per channel, float32 >= 0 (white = 0).

    Not ``skimage.color.separate_stains``: that one floors intensity at 1e-6 (OD up to 13.8 for
    a black pixel) and divides by ln(1e6); Macenko's BETA threshold and percentiles are in plain
    natural-log OD with a floor of one grey level (OD at most ln 255 = 5.5).
    """
    array = np.asarray(rgb)
    if array.dtype == np.uint8 and array.ndim == 3 and array.shape[-1] == 3:
        return cv2.LUT(np.ascontiguousarray(array), _OD_TABLE)  # the same values, a third the cost
    return _od(array)


def _od(rgb: np.ndarray) -> np.ndarray:
    intensity = np.maximum(np.asarray(rgb, np.float32), 1.0) / 255.0
    return np.maximum(-np.log(intensity), 0.0)


# Every 8-bit level's optical density: cv2.LUT applies it to each channel.
_OD_TABLE = _od(np.arange(256, dtype=np.uint8))


def foreground(rgb: np.ndarray) -> np.ndarray:
    """Stained pixels of a white-balanced image: OD above ``BETA`` in some channel. (H, W) bool."""
    return optical_density(rgb).max(axis=-1) > BETA


# --------------------------------------------------------------------------- colour deconvolution


def rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """Haematoxylin-Eosin-DAB stain concentrations: ``skimage.color.rgb2hed``.

    ``rgb``: uint8 (0..255) or float (0..1), (..., 3). Returns float64 (..., 3) >= 0 in
    skimage's units: optical density divided by ln(1e6) (pure haematoxylin of OD ``c`` gives
    ``H = c / 13.8``).
    """
    rgb = np.asarray(rgb)
    # skimage scales any integer type by its own maximum (an int64 image would be ~0) and keeps
    # float32 as float32: every non-uint8 input is taken as 0..1 float64, as before.
    values = rgb if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    return separate_stains(values, HED_FROM_RGB)


def to_gray(rgb: np.ndarray) -> np.ndarray:
    """Luminance (OpenCV's BT.601 weights) replicated to 3 channels, uint8 (H, W, 3)."""
    gray = cv2.cvtColor(np.ascontiguousarray(rgb, dtype=np.uint8), cv2.COLOR_RGB2GRAY)
    return np.repeat(gray[..., None], 3, axis=2)


def to_hematoxylin(rgb: np.ndarray) -> np.ndarray:
    """The haematoxylin (nuclear stain) channel as a brightfield-like image, uint8 (H, W, 3).

    The image is white-balanced against its own background first (a yellow background is not
    stain), deconvolved with ``rgb2hed``, and the haematoxylin optical density ``c`` drawn as
    ``255 * exp(-c)`` (white background, dark nuclei), replicated to 3 channels.
    """
    # Not skimage's hed2rgb of (H, 0, 0): that draws the stain in its own colour (OD c times
    # (0.65, 0.70, 0.29) per channel), a tinted image, where the models see one grey level.
    density = rgb2hed(white_balance(rgb))[..., 0] * -_LOG_ADJUST
    gray = np.clip(255.0 * np.exp(-density) + 0.5, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


# --------------------------------------------------------------------------- stain reference


@dataclass(frozen=True)
class StainReference:
    """What ``color.normalize`` maps every image to; computed from the training images.

    ``reinhard``: ``mean`` and ``std`` of the stained pixels in CIE LAB (L 0..100). ``macenko``:
    ``stains`` (haematoxylin then eosin unit OD vectors, RGB order) and ``max_concentration``
    (99th percentile of each stain's concentration). Medians over the sampled ``images``.
    """

    method: str
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    stains: tuple[tuple[float, ...], ...] = ()
    max_concentration: tuple[float, ...] = ()
    images: int = 0

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"method": self.method}
        if self.method == "reinhard":
            data.update(mean=list(self.mean), std=list(self.std))
        else:
            data.update(
                stains=[list(v) for v in self.stains],
                max_concentration=list(self.max_concentration),
            )
        data["images"] = self.images
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = REFERENCE_NAME) -> StainReference:
        """Parse and check; ``ValueError`` with a short reason when anything is off."""
        if not isinstance(data, dict) or data.get("method") not in MAPPED:
            raise ValueError(f"{where}: 'method' must be one of {', '.join(MAPPED)}")

        def numbers(key: str, shape: tuple[int, ...]) -> np.ndarray:
            try:
                array = np.asarray(data[key], dtype=np.float64)
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{where}: '{key}' missing or not numbers") from None
            if array.shape != shape or not np.all(np.isfinite(array)):
                raise ValueError(f"{where}: '{key}' must be {list(shape)} finite numbers")
            return array

        images = data.get("images", 0)
        images = images if isinstance(images, int) and not isinstance(images, bool) else 0
        if data["method"] == "reinhard":
            mean, std = numbers("mean", (3,)), numbers("std", (3,))
            if np.any(std <= 0):
                raise ValueError(f"{where}: 'std' must be positive")
            return cls(
                "reinhard", mean=tuple(map(float, mean)), std=tuple(map(float, std)), images=images
            )
        stains, peak = numbers("stains", (2, 3)), numbers("max_concentration", (2,))
        if np.any(peak <= 0) or np.any(np.linalg.norm(stains, axis=1) < 1e-6):
            raise ValueError(f"{where}: 'stains' must be non-zero, 'max_concentration' positive")
        stains = stains / np.linalg.norm(stains, axis=1, keepdims=True)
        return cls(
            "macenko",
            stains=tuple(tuple(map(float, v)) for v in stains),
            max_concentration=tuple(map(float, peak)),
            images=images,
        )


def write_reference(reference: StainReference, run_dir: Path | str) -> Path:
    from wbc.core.manifest import write_json

    path = Path(run_dir) / REFERENCE_NAME
    write_json(path, reference.to_dict())
    return path


def read_reference(run_dir: Path | str, method: Optional[str] = None) -> StainReference:
    """The run folder's ``stain_reference.json``; a one-line ``ModelError`` when unusable."""
    path = Path(run_dir) / REFERENCE_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing; a run with color.normalize needs the stain reference "
            "written by `wbc train`"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: cannot read the stain reference ({reason})") from None
    try:
        reference = StainReference.from_dict(data, str(path))
    except ValueError as exc:
        raise ModelError(str(exc)) from None
    if method is not None and reference.method != method:
        raise ModelError(
            f"{path}: holds a {reference.method} reference but config.yaml has "
            f"color.normalize {method}"
        )
    return reference


# --------------------------------------------------------------------------- Reinhard


def _to_lab(rgb: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.asarray(rgb, np.float32) / 255.0, cv2.COLOR_RGB2LAB)


def lab_stats(rgb: np.ndarray, mask: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std (3,) in LAB of ``rgb``'s pixels under ``mask`` (all when too few)."""
    lab = _to_lab(rgb).reshape(-1, 3).astype(np.float64)
    if mask is not None and int(np.count_nonzero(mask)) >= MIN_PIXELS:
        lab = lab[np.asarray(mask).reshape(-1)]
    return lab.mean(axis=0), lab.std(axis=0)


def reinhard_stats(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An image's Reinhard statistics: LAB mean/std of its stained pixels, after white balance."""
    balanced = white_balance(rgb)
    return lab_stats(balanced, foreground(balanced))


def reinhard(
    rgb: np.ndarray,
    reference: StainReference,
    source: Optional[tuple[np.ndarray, np.ndarray]] = None,
) -> np.ndarray:
    """Reinhard et al. (2001): shift and scale each LAB channel to the reference's mean/std.

    ``source``: the LAB mean and std to map from, the same for every image of a lab (a lab's
    statistics), instead of this image's own."""
    balanced = white_balance(rgb)
    mean, std = lab_stats(balanced, foreground(balanced)) if source is None else source
    lab = _to_lab(balanced)
    ref_mean = np.asarray(reference.mean, np.float32)
    ref_std = np.asarray(reference.std, np.float32)
    lab = (lab - mean.astype(np.float32)) * (
        ref_std / np.maximum(std, _MIN_STD).astype(np.float32)
    ) + ref_mean
    out = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_LAB2RGB)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- Macenko


# scikit-image (0.26) has no Macenko estimation or normalisation: these stay numpy.


def macenko_stains(od: np.ndarray) -> Optional[np.ndarray]:
    """Macenko et al. (2009): the two stain OD unit vectors (2, 3), haematoxylin first.

    ``od``: optical densities (..., 3). Pixels with OD >= ``BETA`` in every channel are
    projected on the plane of the two main eigenvectors of their covariance; the stain vectors
    are the directions at the ``ALPHA`` and ``100 - ALPHA`` percentiles of the angle in that
    plane. The one absorbing more red is haematoxylin. None when too few pixels are stained, or
    when the two directions (nearly) coincide: one stain only, which cannot be unmixed.
    """
    od = np.asarray(od, np.float64).reshape(-1, 3)
    od = od[np.all(od >= BETA, axis=1)]
    if len(od) < MIN_PIXELS:
        return None
    _, vectors = np.linalg.eigh(np.cov(od.T))
    first, second = vectors[:, 2], vectors[:, 1]
    if first.sum() < 0:  # ODs are positive: orient so projections on it are too (no wrap-around)
        first = -first
    angles = np.arctan2(od @ second, od @ first)
    low, high = np.percentile(angles, [ALPHA, 100 - ALPHA])
    v1 = first * np.cos(low) + second * np.sin(low)
    v2 = first * np.cos(high) + second * np.sin(high)
    stains = np.stack([v1, v2] if v1[0] >= v2[0] else [v2, v1])
    stains /= np.linalg.norm(stains, axis=1, keepdims=True)
    return None if float(stains[0] @ stains[1]) > _MAX_STAIN_COSINE else stains


def concentrations(od: np.ndarray, stains: np.ndarray) -> np.ndarray:
    """Least-squares stain concentrations (2, N) of OD pixels (..., 3) for ``stains`` (2, 3)."""
    od = np.asarray(od, np.float64).reshape(-1, 3)
    return np.linalg.pinv(np.asarray(stains, np.float64).T) @ od.T  # = lstsq, 30x faster


def macenko_stats(rgb: np.ndarray) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """An image's ``(stains (2, 3), max_concentration (2,))`` after white balance, or None."""
    od = optical_density(white_balance(rgb))
    stains = macenko_stains(od)
    if stains is None:
        return None
    return stains, np.percentile(concentrations(od, stains), 99, axis=1)


def macenko(rgb: np.ndarray, reference: StainReference) -> np.ndarray:
    """Re-stain ``rgb`` with the reference stains: its concentrations scaled to the reference's.

    Each of the image's two stain vectors is paired with the closer reference vector (the
    "more red = haematoxylin" rule holds within one lab's stain but not across stains: another
    lab's nuclear stain may absorb less red). An image with too few stained pixels to estimate
    its own stains is unmixed with the reference's stains instead (intensities still matched).
    """
    balanced = white_balance(rgb)
    od = optical_density(balanced)
    ref_stains = np.asarray(reference.stains, np.float64)
    ref_peak = np.asarray(reference.max_concentration, np.float64)
    stains = macenko_stains(od)
    if stains is None:
        stains = ref_stains
    elif np.sum(stains[::-1] * ref_stains) > np.sum(stains * ref_stains):
        stains = stains[::-1]  # another stain may absorb red differently: pair by direction
    amounts = concentrations(od, stains)
    peak = np.percentile(amounts, 99, axis=1)
    if np.any(peak <= 1e-6):
        return balanced
    amounts *= (ref_peak / peak)[:, None]
    out = 255.0 * np.exp(-(ref_stains.T @ amounts))
    return np.clip(out.T.reshape(balanced.shape) + 0.5, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- reference, apply


def reference_from_images(images: Sequence[np.ndarray], method: str) -> StainReference:
    """The medians of the per-image statistics of ``images`` (uint8 RGB) for ``method``.

    Images without enough stain for Macenko are left out; ``ValueError`` when none is usable.
    """
    if method == "reinhard":
        stats = [reinhard_stats(image) for image in images]
        if not stats:
            raise ValueError("no images to compute a stain reference from")
        mean = np.median([s[0] for s in stats], axis=0)
        std = np.maximum(np.median([s[1] for s in stats], axis=0), _MIN_STD)
        return StainReference(
            "reinhard", mean=tuple(map(float, mean)), std=tuple(map(float, std)), images=len(stats)
        )
    if method == "macenko":
        stats = [s for s in (macenko_stats(image) for image in images) if s is not None]
        if not stats:
            raise ValueError("no image holds enough stain to compute a Macenko reference")
        stains = np.median([s[0] for s in stats], axis=0)
        stains /= np.linalg.norm(stains, axis=1, keepdims=True)
        peak = np.median([s[1] for s in stats], axis=0)
        return StainReference(
            "macenko",
            stains=tuple(tuple(map(float, v)) for v in stains),
            max_concentration=tuple(map(float, peak)),
            images=len(stats),
        )
    raise ValueError(f"a stain reference is for {' or '.join(MAPPED)}, not {method!r}")


def apply_color(
    rgb: np.ndarray,
    color_input: str = "rgb",
    normalize: str = "none",
    reference: Optional[StainReference] = None,
) -> np.ndarray:
    """The colour steps on one uint8 (H, W, 3) model-size image: normalize, then input.

    ``rgb``/``none`` returns the image unchanged. Stain normalisation needs ``reference``.
    """
    if color_input not in INPUTS:
        raise ValueError(f"color.input must be one of {', '.join(INPUTS)}, not {color_input!r}")
    if normalize not in NORMALIZERS:
        raise ValueError(
            f"color.normalize must be one of {', '.join(NORMALIZERS)}, not {normalize!r}"
        )
    out = np.asarray(rgb)
    if normalize == "balance":
        out = white_balance(out)
    elif normalize != "none":
        if reference is None:
            raise ModelError(
                f"color.normalize is {normalize} but no stain reference was given "
                f"({REFERENCE_NAME} in the run folder)"
            )
        out = reinhard(out, reference) if normalize == "reinhard" else macenko(out, reference)
    if color_input == "gray":
        out = to_gray(out)
    elif color_input == "hematoxylin":
        out = to_hematoxylin(out)
    return out


def training_reference(
    method: str,
    files: Sequence[Path],
    load: Callable[[Path], np.ndarray],
    seed: int,
    echo: Callable[[str], None] = lambda _m: None,
) -> StainReference:
    """The stain reference of a training set: ``REFERENCE_IMAGES`` files drawn with ``seed``.

    ``load(path)`` gives the image as the model sees it before the colour steps (resized
    uint8); unreadable files are skipped.
    """
    from wbc.core.errors import BadImage, DataError

    files = list(files)
    rng = np.random.default_rng([seed, 9])
    count = min(REFERENCE_IMAGES, len(files))
    chosen = sorted(rng.choice(len(files), size=count, replace=False).tolist()) if count else []
    images = []
    for index in chosen:
        try:
            images.append(load(files[index]))
        except BadImage:
            continue
    try:
        reference = reference_from_images(images, method)
    except ValueError as exc:
        raise DataError(
            f"{Path(files[0]).parent.parent if files else 'training data'}: "
            f"cannot compute the {method} stain reference ({exc})"
        ) from None
    echo(f"stain reference ({method}) from {reference.images} training images")
    return reference


# --------------------------------------------------------------------------- jitter (tf.data)


def jitter_enabled(color) -> bool:
    """Whether a ``ColorConfig`` asks for any training colour jitter."""
    return color is not None and any(
        getattr(color, key) > 0 for key in ("brightness", "contrast", "saturation", "hue")
    )


def jitter_batch(images, seed, color):
    """Per-image random colour changes of a float batch (N, H, W, 3) in [0, 1]; TensorFlow.

    ``seed``: int tensor of shape (2,) (stateless: the same seed gives the same result). Each
    image draws its own brightness offset U(-b, b), contrast factor U(1-c, 1+c) around its
    per-channel mean, saturation factor U(1-s, 1+s) and hue shift U(-h, h) turns, in that
    order; the result is clipped to [0, 1].
    """
    import tensorflow as tf

    images = tf.convert_to_tensor(images, tf.float32)
    seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 4)
    shape = tf.stack([tf.shape(images)[0], 1, 1, 1])

    def draw(index: int, amount: float):
        return tf.random.stateless_uniform(shape, seeds[index], -amount, amount)

    if color.brightness > 0:
        images = images + draw(0, color.brightness)
    if color.contrast > 0:
        mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
        images = (images - mean) * (1.0 + draw(1, color.contrast)) + mean
    if color.saturation > 0 or color.hue > 0:
        hsv = tf.image.rgb_to_hsv(tf.clip_by_value(images, 0.0, 1.0))
        hue, saturation, value = tf.unstack(hsv, axis=-1)
        if color.saturation > 0:
            saturation = tf.clip_by_value(
                saturation * (1.0 + draw(2, color.saturation)[..., 0]), 0.0, 1.0
            )
        if color.hue > 0:
            hue = tf.math.floormod(hue + draw(3, color.hue)[..., 0], 1.0)
        images = tf.image.hsv_to_rgb(tf.stack([hue, saturation, value], axis=-1))
    return tf.clip_by_value(images, 0.0, 1.0)


def add_jitter(dataset, color, seed: int):
    """``dataset`` of batches ``(images in [0, 1], labels)`` with ``jitter_batch`` on the images.

    The per-batch seeds come from ``tf.data.Dataset.random(seed)`` re-randomised on every
    iteration: fresh colours every epoch, the same sequence for the same ``seed``.
    """
    import tensorflow as tf

    if not jitter_enabled(color):
        return dataset
    seeds = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True).batch(2)
    pairs = tf.data.Dataset.zip((dataset, seeds))
    return pairs.map(
        lambda batch, pair: (jitter_batch(batch[0], pair, color), *batch[1:]),
        num_parallel_calls=tf.data.AUTOTUNE,
    )


# --------------------------------------------------------------------------- runs
