"""Image -> model input: the one preprocessing that training, evaluation and prediction share.

The settings (image size, crop mode) are read from a run's ``config.yaml``, never re-typed, so a
model always sees new images the way it saw its training images. Resizing uses OpenCV's area
interpolation, which averages pixels when shrinking (640x480 -> 160x120) instead of skipping them.
The colour steps (``color.input``, ``color.normalize``: ``wbc.imaging.color``) follow the resize
(``recolor``, ``to_input``); the stain reference they need travels with the run.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import cv2
import numpy as np

from wbc.core.config import Config
from wbc.core.imageio import read_rgb


@dataclass(frozen=True)
class InputSpec:
    image_size: tuple[int, int]  # height, width
    crop_mode: str = "none"  # how the training images were cropped: none | boxes | detect
    crop_padding: float = 0.15
    color_input: str = "rgb"  # color.input: rgb | gray | hematoxylin
    stain_normalize: str = "none"  # color.normalize: none | reinhard | macenko
    stain_reference: Optional[Any] = (
        None  # wbc.imaging.color.StainReference (the run's, for normalize)
    )

    @classmethod
    def from_config(
        cls,
        config: Config,
        stain_reference: Optional[Any] = None,
        image_size: Optional[tuple[int, int]] = None,
    ) -> InputSpec:
        """``image_size``: the model family's input size, which the caller knows from the
        family (``wbc.models.family_for(config).input_size()``); default ``train.image_size``,
        the study family's. Pixels know nothing of model families: that is the layer above."""
        if image_size is None:
            image_size = tuple(config.train.image_size)
        return cls(
            tuple(image_size),
            config.crop.mode,
            config.crop.padding,
            config.color.input,
            config.color.normalize,
            stain_reference,
        )

    @property
    def recolors(self) -> bool:
        """Whether the colour steps (``color.input``, ``color.normalize``) change images."""
        return self.color_input != "rgb" or self.stain_normalize != "none"


def resize(rgb: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``rgb`` (H, W, 3) uint8 resized to ``image_size`` (height, width), still uint8."""
    height, width = image_size
    if rgb.shape[:2] == (height, width):
        return np.ascontiguousarray(rgb)
    shrinking = rgb.shape[0] >= height and rgb.shape[1] >= width
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(rgb, (width, height), interpolation=interpolation)


def scale(batch):
    """uint8 pixels -> float32 in [0, 1], the study's /255. Works on numpy arrays and tensors."""
    if isinstance(batch, np.ndarray):
        return batch.astype(np.float32) / 255.0
    import tensorflow as tf

    return tf.cast(batch, tf.float32) / 255.0


def recolor(pixels: np.ndarray, spec: Optional[InputSpec]) -> np.ndarray:
    """The colour steps of ``spec`` on a resized uint8 image (``wbc.imaging.color.apply_color``)."""
    if spec is None or not spec.recolors:
        return pixels
    from wbc.imaging.color import apply_color

    return apply_color(pixels, spec.color_input, spec.stain_normalize, spec.stain_reference)


def to_input(rgb: np.ndarray, spec: InputSpec) -> np.ndarray:
    """``rgb`` (an image or a cell crop) -> uint8 model input: resized, then ``recolor``."""
    return recolor(resize(rgb, spec.image_size), spec)


def load_resized(
    path: Path, image_size: tuple[int, int], spec: Optional[InputSpec] = None
) -> np.ndarray:
    """Read any supported image file and resize it: uint8 (H, W, 3). Raises ``BadImage``.

    With ``spec``, its colour steps (``recolor``) follow the resize.
    """
    return recolor(resize(read_rgb(path), image_size), spec)
