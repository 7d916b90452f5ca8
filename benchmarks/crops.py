"""Generated single-cell crops in class folders, as a lab exports them: ``ROOT/CLASS/*.png``.

Why generated: the scale benchmarks need 20,000 crops and more, seeded, on any machine, and no
lab set of that size is in the repository. Each crop is a window of a small synthetic smear
around one WBC: pale background, pink red cells with pale centres, and a WBC whose nucleus
shape follows its class (neutrophil: 3-5 small lobes; eosinophil: two lobes and orange
granules; lymphocyte: a large round nucleus in a thin rim; monocyte: a big cell with a kidney
nucleus), so a classifier trained on them has something to learn. Every cell is drawn from
its own seed ``(seed, index)``: the first 5,000 crops of a 20,000 set are the 5,000 set.

Planted duplicates (``duplicates`` > 0) are what a lab folder really holds: the same file
twice, a re-encoded JPEG copy, a resized copy, and the same cell cropped again a few pixels
off; ``CropSet.pairs`` lists them, for checking a duplicate finder.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "NEUTROPHIL")
COPY_KINDS = ("bytes", "jpeg", "resized", "recrop")  # how a planted duplicate was made
_FIELD = 1.6  # the synthetic smear's side, in crop sides: room to crop again off-centre


@dataclass
class CropSet:
    """What ``write_crop_folders`` wrote: every file with its class, and the planted copies."""

    root: Path
    paths: list[Path] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    pairs: list[tuple[Path, Path, str]] = field(default_factory=list)  # original, copy, kind


def _field(rng: np.random.Generator, cls: str, side: int) -> np.ndarray:
    """An RGB smear of ``side`` pixels with one WBC of class ``cls`` at its centre."""
    tint = rng.integers(-12, 13, 3)
    image = np.empty((side, side, 3), np.uint8)
    image[:] = np.clip(np.array((224, 216, 214)) + tint, 0, 255)
    scale = side / 192.0
    for _ in range(int(rng.integers(10, 18))):
        centre = tuple(int(v) for v in rng.integers(0, side, 2))
        radius = int(rng.integers(14, 22) * scale)
        tone = np.clip(rng.integers((185, 110, 125), (220, 150, 165)) + tint, 0, 255)
        cv2.circle(image, centre, radius, tuple(int(v) for v in tone), -1, cv2.LINE_AA)
        rim = tuple(int(v) - 35 for v in tone)
        cv2.circle(image, centre, radius, rim, max(1, round(2 * scale)), cv2.LINE_AA)
        cv2.circle(image, centre, max(2, radius // 3), (226, 204, 204), -1, cv2.LINE_AA)

    c = side // 2
    nucleus = tuple(
        int(v) for v in np.clip(np.array((105, 55, 170)) + rng.integers(-15, 16, 3), 0, 255)
    )
    cytoplasm = (208, 190, 220)
    jitter = lambda spread: int(rng.integers(-spread, spread + 1) * scale)  # noqa: E731
    if cls == "NEUTROPHIL":
        cv2.circle(image, (c, c), int(44 * scale), cytoplasm, -1, cv2.LINE_AA)
        lobes = int(rng.integers(3, 6))
        angles = rng.uniform(0, 2 * np.pi) + np.linspace(0, 2 * np.pi, lobes, endpoint=False)
        for angle in angles + rng.normal(0, 0.3, lobes):
            reach = rng.uniform(11, 19) * scale
            centre = (int(c + reach * np.cos(angle)), int(c + reach * np.sin(angle)))
            cv2.circle(image, centre, int(rng.integers(9, 14) * scale), nucleus, -1, cv2.LINE_AA)
    elif cls == "EOSINOPHIL":
        cv2.circle(image, (c, c), int(46 * scale), (226, 170, 150), -1, cv2.LINE_AA)
        for _ in range(160):  # the orange granules
            r, angle = 44 * scale * np.sqrt(rng.uniform()), rng.uniform(0, 2 * np.pi)
            spot = (int(c + r * np.cos(angle)), int(c + r * np.sin(angle)))
            cv2.circle(image, spot, max(1, round(2 * scale)), (215, 120, 80), -1, cv2.LINE_AA)
        angle = rng.uniform(0, np.pi)
        for sign in (-1, 1):
            reach = rng.uniform(12, 17) * scale
            centre = (int(c + sign * reach * np.cos(angle)), int(c + sign * reach * np.sin(angle)))
            cv2.circle(image, centre, int(rng.integers(12, 16) * scale), nucleus, -1, cv2.LINE_AA)
    elif cls == "LYMPHOCYTE":
        radius = int(rng.integers(30, 38) * scale)
        cv2.circle(image, (c, c), radius, (190, 190, 225), -1, cv2.LINE_AA)
        centre = (c + jitter(4), c + jitter(4))
        cv2.circle(image, centre, int(radius * rng.uniform(0.78, 0.88)), nucleus, -1, cv2.LINE_AA)
    else:  # MONOCYTE
        cv2.circle(image, (c, c), int(54 * scale), (200, 188, 215), -1, cv2.LINE_AA)
        axes = (int(rng.integers(28, 36) * scale), int(rng.integers(20, 26) * scale))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(image, (c, c), axes, angle, 0, 360, nucleus, -1, cv2.LINE_AA)
        bite = np.radians(angle + 90)
        centre = (int(c + axes[1] * np.cos(bite)), int(c + axes[1] * np.sin(bite)))
        cv2.circle(image, centre, int(axes[1] * 0.8), (200, 188, 215), -1, cv2.LINE_AA)
    # Texture, which is what tells two cells of one class apart: clumped chromatin in the
    # nucleus, faint granules in the cytoplasm.
    for _ in range(int(rng.integers(40, 70))):
        spot = (c + jitter(30), c + jitter(30))
        radius = max(1, round(rng.uniform(1, 4) * scale))
        if tuple(image[spot[1], spot[0]]) == nucleus:
            cv2.circle(image, spot, radius, (70, 30, 120), -1, cv2.LINE_AA)
        elif image[spot[1], spot[0]].mean() > 180:
            shade = tuple(int(v) - 18 for v in image[spot[1], spot[0]])
            cv2.circle(image, spot, radius, shade, -1, cv2.LINE_AA)
    # A camera's optics blur a little and its sensor adds a little noise: with more of either,
    # the crops would hold three times the corners (ORB keypoints) of real lab crops.
    image = cv2.GaussianBlur(image, (0, 0), 0.7 * scale)
    noise = rng.normal(0, 2, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def crop_image(
    seed: int, index: int, cls: str, size: int = 120, offset: tuple[int, int] = (0, 0)
) -> np.ndarray:
    """Crop ``index`` of set ``seed``: ``size`` pixels, RGB, the WBC near the centre.

    ``offset`` moves the window (a second crop of the same cell)."""
    rng = np.random.default_rng([seed, index])
    side = int(size * _FIELD)
    smear = _field(rng, cls, side)
    start = (side - size) // 2 + rng.integers(-size // 16, size // 16 + 1, 2)
    y, x = (int(v) for v in start + np.asarray(offset[::-1]))
    y, x = min(max(y, 0), side - size), min(max(x, 0), side - size)
    return np.ascontiguousarray(smear[y : y + size, x : x + size])


def _write(path: Path, rgb: np.ndarray, quality: int | None = None) -> None:
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if quality else []
    if not cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params):
        raise OSError(f"cannot write {path}")


def write_crop_folders(
    root: Path,
    n: int,
    seed: int = 0,
    classes: Sequence[str] = CLASSES,
    size: int = 120,
    duplicates: float = 0.0,
) -> CropSet:
    """Write ``n`` crops as ``root/CLASS/CLASS_NNNNNN.png`` (classes dealt round-robin).

    ``duplicates``: the share of the ``n`` files that are copies of an earlier crop of the same
    class (kinds in turn: ``COPY_KINDS``); a copy of kind ``jpeg`` or ``recrop`` is a .jpg."""
    root = Path(root)
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    chooser = np.random.default_rng([seed, 2**32 - 1])  # apart from the cells' seeds
    made = CropSet(root)
    originals: dict[str, list[int]] = {cls: [] for cls in classes}
    for index in range(n):
        cls = classes[index % len(classes)]
        stem = root / cls / f"{cls}_{index:06d}"
        earlier = originals[cls]
        if earlier and chooser.uniform() < duplicates:
            source = int(earlier[int(chooser.integers(len(earlier)))])
            kind = COPY_KINDS[len(made.pairs) % len(COPY_KINDS)]
            original = made.paths[source]
            if kind == "bytes":
                path = stem.with_suffix(".png")
                shutil.copyfile(original, path)
            elif kind == "jpeg":
                path = stem.with_suffix(".jpg")
                _write(path, crop_image(seed, source, cls, size), quality=90)
            elif kind == "resized":
                path = stem.with_suffix(".png")
                other = int(size * (0.8 if chooser.uniform() < 0.5 else 1.25))
                image = crop_image(seed, source, cls, size)
                _write(path, cv2.resize(image, (other, other), interpolation=cv2.INTER_AREA))
            else:
                path = stem.with_suffix(".jpg")
                offset = tuple(
                    int(v) for v in chooser.integers(4, size // 8, 2) * chooser.choice((-1, 1), 2)
                )
                _write(path, crop_image(seed, source, cls, size, offset), quality=92)
            made.pairs.append((original, path, kind))
        else:
            path = stem.with_suffix(".png")
            _write(path, crop_image(seed, index, cls, size))
            earlier.append(index)
        made.paths.append(path)
        made.labels.append(cls)
    return made
