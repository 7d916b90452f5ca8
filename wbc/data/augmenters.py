"""The two augmentation engines: the study's Keras ImageDataGenerator, and an OpenCV twin of it.

The study augmented with ``ImageDataGenerator``, so that engine is the default and the reference.
It warps each channel with ``scipy.ndimage`` in float, which costs about a tenth of a second per
640x480 image: minutes for a full dataset. The OpenCV engine draws the same parameters from the
same distributions and builds the very matrix Keras builds, then warps once with
``cv2.warpAffine``, so its images match Keras's to within a grey level or two, many times faster.

Matching Keras means matching its quirks too (Keras 3 ``apply_affine_transform``): its matrix works
in (x, y) = (column, row) coordinates but is centred at (height/2 - 0.5, width/2 - 0.5), so on a
non-square image rotation, shear and zoom pivot about a point off the true centre (for 640x480 it is
80 px left of and 80 px below it), and the shift drawn from ``height_shift_range`` (in units of the
height) moves the image sideways while ``width_shift_range`` moves it up and down. Shear is in
degrees. Both engines take one parameter dict (Keras's keys), so either can apply the other's draw.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol

import cv2
import numpy as np

from wbc.core.config import AugmentConfig

ENGINES = ("imagedatagenerator", "opencv")


class Augmenter(Protocol):
    def random_params(self, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
        """The transform for one copy of an image of ``shape`` (H, W[, C]), fixed by ``seed``."""

    def apply(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        """The (H, W, 3) uint8 ``image`` transformed by ``params``, same shape and dtype."""


def make_augmenter(config: AugmentConfig) -> Augmenter:
    if config.engine == "opencv":
        return OpenCVAugmenter(config)
    if config.engine == "imagedatagenerator":
        return KerasAugmenter(config)
    raise ValueError(f"unknown augment engine {config.engine!r} (expected one of {ENGINES})")


class KerasAugmenter:
    """The study's engine: ``ImageDataGenerator.get_random_transform`` + ``apply_transform``."""

    def __init__(self, config: AugmentConfig):
        from wbc.core.tfsetup import import_tensorflow

        # Lazy (slow to import, and only this engine needs it) and quiet: in a spawned worker
        # a plain import would print TensorFlow's start-up chatter once per worker.
        tf = import_tensorflow()

        self.generator = tf.keras.preprocessing.image.ImageDataGenerator(
            rotation_range=config.rotation_range,
            width_shift_range=config.width_shift_range,
            height_shift_range=config.height_shift_range,
            shear_range=config.shear_range,
            zoom_range=config.zoom_range,
            horizontal_flip=config.horizontal_flip,
            vertical_flip=config.vertical_flip,
            fill_mode=config.fill_mode,
            data_format="channels_last",
        )

    def random_params(self, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
        # get_random_transform reseeds numpy's global generator; put its state back afterwards.
        state = np.random.get_state()
        try:
            return self.generator.get_random_transform(tuple(shape), seed=seed % 2**32)
        finally:
            np.random.set_state(state)

    def apply(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        with warnings.catch_warnings():  # Keras calls scipy.ndimage.interpolation (deprecated)
            warnings.simplefilter("ignore", DeprecationWarning)
            out = self.generator.apply_transform(image.astype(np.float32), params)
        return np.clip(np.rint(out), 0, 255).astype(np.uint8)


class OpenCVAugmenter:
    """Keras's transform as one OpenCV warp (bilinear, the same fill mode)."""

    def __init__(self, config: AugmentConfig):
        self.config = config
        # scipy's "nearest" and "reflect" are OpenCV's replicate and reflect borders; "constant"
        # and "wrap" differ at the edge, so apply() treats them by hand (see there).
        self.border = {
            "nearest": cv2.BORDER_REPLICATE,
            "constant": cv2.BORDER_REPLICATE,
            "reflect": cv2.BORDER_REFLECT,
            "wrap": cv2.BORDER_REPLICATE,
        }[config.fill_mode]

    def random_params(self, shape: tuple[int, ...], seed: int) -> dict[str, Any]:
        """Drawn like ``ImageDataGenerator.get_random_transform`` (same ranges and units)."""
        cfg = self.config
        rng = np.random.default_rng(seed)
        height, width = shape[0], shape[1]
        low, high = 1 - cfg.zoom_range, 1 + cfg.zoom_range
        zx, zy = (1.0, 1.0) if low == high == 1 else rng.uniform(low, high, 2)
        return {
            "theta": rng.uniform(-cfg.rotation_range, cfg.rotation_range)
            if cfg.rotation_range
            else 0.0,
            "tx": _shift(rng, cfg.height_shift_range, height),  # Keras: tx goes with the height
            "ty": _shift(rng, cfg.width_shift_range, width),
            "shear": rng.uniform(-cfg.shear_range, cfg.shear_range) if cfg.shear_range else 0.0,
            "zx": float(zx),
            "zy": float(zy),
            "flip_horizontal": bool(rng.random() < 0.5) and cfg.horizontal_flip,
            "flip_vertical": bool(rng.random() < 0.5) and cfg.vertical_flip,
        }

    def apply(self, image: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        height, width = image.shape[:2]
        matrix = keras_inverse_matrix(params, height, width)[:2]
        if self.config.fill_mode == "wrap":
            # scipy's "wrap" repeats with period size - 1 (first and last pixel overlap), where
            # OpenCV's repeats with period size: wrap the source coordinates the scipy way.
            src_x, src_y = source_coordinates(matrix, height, width)
            src_x = _wrap(src_x, width)
            src_y = _wrap(src_y, height)
            return cv2.remap(image, src_x, src_y, cv2.INTER_LINEAR, borderMode=self.border)
        out = cv2.warpAffine(
            image,
            matrix,
            (width, height),
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=self.border,
        )
        if self.config.fill_mode == "constant":
            # scipy's "constant" gives 0 to every sample from outside the image, with no blend
            # into the edge pixels as OpenCV's constant border makes.
            src_x, src_y = source_coordinates(matrix, height, width)
            out[(src_x < 0) | (src_x > width - 1) | (src_y < 0) | (src_y > height - 1)] = 0
        return out


def source_coordinates(matrix: np.ndarray, height: int, width: int) -> tuple[np.ndarray, ...]:
    """Where each output pixel samples the input: two (H, W) float32 maps, x and y."""
    xs = np.arange(width, dtype=np.float32)[None, :]
    ys = np.arange(height, dtype=np.float32)[:, None]
    (a, b, c), (d, e, f) = matrix.astype(np.float32)
    return a * xs + b * ys + c, d * xs + e * ys + f


def _wrap(coords: np.ndarray, size: int) -> np.ndarray:
    outside = (coords < 0) | (coords > size - 1)
    return np.where(outside, np.mod(coords, max(size - 1, 1)), coords).astype(np.float32)


def _shift(rng: np.random.Generator, shift_range: float, size: int) -> float:
    """A Keras shift: a fraction of ``size`` when the range is below 1, else pixels."""
    if not shift_range:
        return 0.0
    value = rng.uniform(-shift_range, shift_range)
    return float(value * size) if shift_range < 1 else float(value)


def keras_inverse_matrix(params: dict[str, Any], height: int, width: int) -> np.ndarray:
    """The 3x3 map from output (x, y) to input (x, y) pixel coordinates that Keras applies.

    Composed exactly as ``keras.src.legacy.preprocessing.image.apply_affine_transform`` does
    (rotation . shift . shear . zoom, moved to its centre), followed by ``apply_transform``'s
    flips, which act on the warped image and so come last on the output side.
    """
    theta = np.deg2rad(params.get("theta", 0))
    shear = np.deg2rad(params.get("shear", 0))
    tx, ty = params.get("tx", 0), params.get("ty", 0)
    zx, zy = params.get("zx", 1), params.get("zy", 1)
    rotation = np.array(
        [[np.cos(theta), -np.sin(theta), 0], [np.sin(theta), np.cos(theta), 0], [0, 0, 1]]
    )
    shift = np.array([[1, 0, tx], [0, 1, ty], [0, 0, 1]], dtype=float)
    shearing = np.array([[1, -np.sin(shear), 0], [0, np.cos(shear), 0], [0, 0, 1]])
    zoom = np.array([[zx, 0, 0], [0, zy, 0], [0, 0, 1]], dtype=float)
    matrix = rotation @ shift @ shearing @ zoom
    # Keras's transform_matrix_offset_center(matrix, h, w): x is offset by the HEIGHT's centre.
    o_x, o_y = height / 2 - 0.5, width / 2 - 0.5
    to_centre = np.array([[1, 0, o_x], [0, 1, o_y], [0, 0, 1]])
    from_centre = np.array([[1, 0, -o_x], [0, 1, -o_y], [0, 0, 1]])
    matrix = to_centre @ matrix @ from_centre
    flip = np.eye(3)
    if params.get("flip_horizontal"):
        flip = flip @ np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]])
    if params.get("flip_vertical"):
        flip = flip @ np.array([[1, 0, 0], [0, -1, height - 1], [0, 0, 1]])
    return matrix @ flip
