"""Reading images safely: one function that every command uses, so bad files fail the same way.

Pillow is used rather than ``tf.io.decode_image`` because it reads every format a lab exports
(JPEG, PNG, BMP, TIFF), honours EXIF rotation, and lets us refuse decompression bombs before
decoding. Each failure is a ``BadImage`` naming the file and the problem in a few words.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from wbc.core.errors import BadImage

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
# A 640x480 smear is 0.3 Mpx; 40 Mpx leaves room for whole-slide tiles yet refuses bombs.
MAX_PIXELS = 40_000_000


def is_image_name(path: Path) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def _to_rgb(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        array = np.asarray(image, dtype=np.uint32)
        peak = 65535 if image.mode.startswith("I;16") or array.max() > 255 else 255
        gray = (array.astype(np.float64) * (255.0 / peak)).round().clip(0, 255).astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode == "F":
        array = np.asarray(image, dtype=np.float64)
        gray = np.clip(array, 0, 255).round().astype(np.uint8)
        return np.repeat(gray[..., None], 3, axis=2)
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Transparent pixels become white, like a slide's bright background, not black.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def open_checked(path: Path) -> Image.Image:
    """Open ``path`` with Pillow, refusing empty files, non-images and oversized images."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise BadImage(path, "file not found") from None
    except OSError as exc:
        raise BadImage(path, f"cannot read ({exc.strerror})") from None
    if path.is_dir():
        raise BadImage(path, "is a folder, not an image")
    if size == 0:
        raise BadImage(path, "empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        raise BadImage(path, "not an image (unknown or unsupported format)") from None
    except Image.DecompressionBombError:
        raise BadImage(path, f"image too large (over {MAX_PIXELS:,} pixels)") from None
    except OSError as exc:
        raise BadImage(path, f"cannot read ({exc})") from None
    width, height = image.size
    if width * height > MAX_PIXELS:
        image.close()
        raise BadImage(path, f"image too large ({width}x{height} pixels, limit {MAX_PIXELS:,})")
    return image


def read_rgb(path: Path) -> np.ndarray:
    """Decode ``path`` to an ``(H, W, 3)`` uint8 RGB array, upright per its EXIF orientation."""
    image = open_checked(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_rgb(image)
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).split("\n")[0] or type(exc).__name__
        if "truncated" in reason.lower() or "broken data stream" in reason.lower():
            reason = "truncated or corrupt image data"
        raise BadImage(path, reason) from None
    except Image.DecompressionBombError:
        raise BadImage(path, f"image too large (over {MAX_PIXELS:,} pixels)") from None
    finally:
        image.close()


def is_plain_rgb_jpeg(path: Path) -> bool:
    """True for an 8-bit RGB JPEG with no EXIF rotation: safe to copy byte for byte."""
    try:
        with open_checked(path) as image:
            orientation = image.getexif().get(0x0112, 1)
            return image.format == "JPEG" and image.mode == "RGB" and orientation in (0, 1)
    except BadImage:
        return False


def write_jpeg(array: np.ndarray, path: Path, quality: int = 95) -> None:
    Image.fromarray(array).save(path, format="JPEG", quality=quality)


def decode_threads(limit: int, per_core: int = 1) -> int:
    """Threads for decoding images beside the main work: ``per_core`` per core, at most
    ``limit`` (decoding releases the GIL, so threads beyond the cores still help a little)."""
    return max(1, min(limit, (os.cpu_count() or 1) * per_core))
