"""A corpus of bad inputs, shared by the robustness tests and scripts/robustness_report.py.

Each case writes one bad thing into a fresh copy of a tiny raw folder (or makes a bad model or
archive) and states what a clean outcome is: the exit code, and a phrase the one-line message or
the skipped.csv reason must contain.
"""

from __future__ import annotations

import io
import os
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

TARGET = "BloodImage_00000.jpg"  # the image each image case replaces (a NEUTROPHIL)


def _good_rgb() -> Image.Image:
    rng = np.random.default_rng(0)
    array = np.clip(rng.normal(200, 20, (48, 64, 3)), 0, 255).astype(np.uint8)
    array[15:30, 20:40] = (95, 40, 140)
    return Image.fromarray(array)


def _encoded(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height: the guard must refuse it before decoding anything."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + chunk(b"IEND", b"")
    )


def _exif_rotated() -> bytes:
    image = _good_rgb()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when shown
    return _encoded(image, "JPEG", exif=exif.tobytes())


def _sixteen_bit() -> bytes:
    gray = np.asarray(_good_rgb().convert("L"), dtype=np.uint16) * 257
    return _encoded(Image.fromarray(gray), "PNG")


@dataclass(frozen=True)
class ImageCase:
    name: str
    make: Callable[[], bytes]
    readable: bool  # decodes: predict gives a row; False: an error row naming the reason
    reason: str = ""  # phrase of the skip reason / error row
    prepare: str = "converted"  # what `wbc prepare` does with it: converted | skipped


def _good_jpeg() -> bytes:
    return _encoded(_good_rgb(), "JPEG", quality=95)


IMAGE_CASES = [
    ImageCase("zero-byte", lambda: b"", False, "empty file", "skipped"),
    ImageCase(
        "truncated", lambda: _good_jpeg()[: len(_good_jpeg()) // 2], False, "truncated", "skipped"
    ),
    ImageCase(
        "random-bytes",
        lambda: np.random.default_rng(1).bytes(4096),
        False,
        "not an image",
        "skipped",
    ),
    ImageCase(
        "html-named-jpg",
        lambda: b"<!DOCTYPE html><html>404</html>",
        False,
        "not an image",
        "skipped",
    ),
    ImageCase("png-named-jpg", lambda: _encoded(_good_rgb(), "PNG"), True),
    ImageCase("cmyk", lambda: _encoded(_good_rgb().convert("CMYK"), "JPEG"), True),
    ImageCase("16-bit", _sixteen_bit, True),
    ImageCase("grayscale", lambda: _encoded(_good_rgb().convert("L"), "JPEG"), True),
    ImageCase("rgba", lambda: _encoded(_good_rgb().convert("RGBA"), "PNG"), True),
    ImageCase(
        "1x1",
        lambda: _encoded(Image.new("RGB", (1, 1), (90, 40, 140)), "JPEG"),
        True,
        "too small",
        "skipped",
    ),
    ImageCase("20000x20000", lambda: _png_header_only(20000, 20000), False, "too large", "skipped"),
    ImageCase("exif-rotated", _exif_rotated, True),
]


@dataclass(frozen=True)
class LabelsCase:
    name: str
    data: bytes
    exit_code: int
    phrase: str  # in the error line (exit 1) or in skipped.csv (exit 0)


LABELS_CASES = [
    LabelsCase("empty", b"", 1, "empty file"),
    LabelsCase("header-only", b",Image,Category\r\n", 1, "header only"),
    LabelsCase("wrong-columns", b"id,label\n0,NEUTROPHIL\n", 1, "expected columns"),
    LabelsCase("bom", "\ufeff,Image,Category\r\n,0,NEUTROPHIL\r\n,1,NEUTROPHIL".encode(), 0, ""),
    LabelsCase("semicolons", b";Image;Category\n;0;NEUTROPHIL\n;1;NEUTROPHIL\n", 0, ""),
    LabelsCase(
        "non-numeric-ids",
        b",Image,Category\n,0,NEUTROPHIL\n,abc,NEUTROPHIL\n",
        0,
        "id is not a number",
    ),
    LabelsCase(
        "contradictory-rows",
        b",Image,Category\n,0,NEUTROPHIL\n,1,NEUTROPHIL\n,0,EOSINOPHIL\n",
        0,
        "contradictory labels: NEUTROPHIL (line 2) vs EOSINOPHIL (line 4)",
    ),
    LabelsCase(
        "path-ids",
        b",Image,Category\n,0,NEUTROPHIL\n,../../etc/passwd,NEUTROPHIL\n",
        0,
        "id is not a number",
    ),
]


def zip_with(entries: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


ZIP_CASES = {
    "dotdot-entry": "../escape.txt",
    "absolute-entry": "/tmp/wbc-absolute-escape.txt",
}


def make_symlink_loop(folder: Path) -> None:
    os.symlink(folder / "loop", folder / "loop")
