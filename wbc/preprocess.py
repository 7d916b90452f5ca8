"""Image -> model input: the one preprocessing that training, evaluation and prediction share.

The settings (image size, crop mode) are read from a run's ``config.yaml``, never re-typed, so a
model always sees new images the way it saw its training images. Resizing uses OpenCV's area
interpolation, which averages pixels when shrinking (640x480 -> 160x120) instead of skipping them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wbc.config import Config
from wbc.imageio import read_rgb


@dataclass(frozen=True)
class InputSpec:
    image_size: tuple[int, int]  # height, width
    crop_mode: str = "none"  # how the training images were cropped: none | boxes | detect
    crop_padding: float = 0.15

    @classmethod
    def from_config(cls, config: Config) -> "InputSpec":
        return cls(tuple(config.train.image_size), config.crop.mode, config.crop.padding)


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


def load_resized(path: Path, image_size: tuple[int, int]) -> np.ndarray:
    """Read any supported image file and resize it: uint8 (H, W, 3). Raises ``BadImage``."""
    return resize(read_rgb(path), image_size)
