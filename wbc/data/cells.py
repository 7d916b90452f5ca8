"""Finding the white blood cell in a smear image and cutting a square crop around it.

Why: a 640x480 smear holds one WBC among dozens of red cells, so a classifier fed whole frames
spends most of its pixels on red cells and background. Cropping around the WBC lets it see the
nucleus (what separates the four classes) at a useful resolution.

Two sources of boxes:

* the BCCD Pascal VOC annotations (``read_voc_boxes``), available for the public images only;
* ``detect_cells``, a small colour/morphology detector, for images without annotations (new
  images at predict time, or annotations that miss a cell).

Why this detector works: Wright/Giemsa stain turns WBC nuclei dark purple/blue, while red cells
are pink/red and the background is pale. Nuclei absorb red and green light and pass blue, so on
the optical density of red plus green minus twice blue (``stain_map``) they are the only
strongly positive objects. That channel does not encode one lab's stain: its weights sum to
zero, so a brighter or darker lamp and a tinted background (cyan, yellow, green: a gain per
channel) only add a constant, and grey or black things (a printed scale bar, a label) sit at the
background's level instead of looking like a nucleus. Every level is relative to the image
itself: the nucleus threshold is a fixed fraction of the way from the image's median (its
background and red cells) to its peak (99.5th percentile), so a weaker or stronger stain, a
gamma or a blur moves the threshold with the nuclei. A colour is not enough, though: a strongly
tinted plasma (cyan or magenta) is as stain-coloured as a faintly stained nucleus, only far
lighter. So a nucleus pixel must also be dense: its total optical density a quarter of the way
from the image's lightest pixels to the typical density of its most strongly stained ones (a
printed black mark is dense but grey, so it sets neither level). Platelets are also purple but
an order of magnitude smaller, so an area floor removes them. Neutrophil nuclei are multi-lobed: a
morphological closing joins lobes a few pixels apart, and smaller pieces whose centre falls
inside a bigger nucleus' neighbourhood are merged into it. The annotated WBC box covers the
whole cell (nucleus plus cytoplasm), and the pale cytoplasm barely differs from the background,
so the cell box is grown from the nucleus: to the faintly stained region connected to it, above
a level set between the nucleus threshold and the cell's own surroundings (a ring just outside
the largest cell box; a tinted background there raises the level instead of becoming
cytoplasm), bounded between fixed multiples of the nucleus box (the cytoplasm is a rim, never
nothing and never several nucleus widths). No box covers more than half the frame: such a box
would be background taken for stain, so it is cut down around its nucleus (a "nucleus" whose
pixels cover over half the frame is dropped; one whose lobes only span that much, a cell under
high magnification, keeps its centre). All sizes are fractions of the frame, so the same rules
work on a single-cell crop where the cell fills the frame.

Measured with ``scripts/eval_detector.py`` on the 290 public images that have a VOC WBC box:
best box vs the largest VOC box mean IoU 0.81, IoU >= 0.5 for 98.3 %; 99.0 % of the VOC boxes
are matched at IoU >= 0.5 by some detected box; the number of detected cells equals the number
of VOC boxes for 99.0 %; on the VOC boxes cut out as 256-pixel single-cell crops, mean IoU 0.80.
The four complete misses (IoU 0) are images with two WBCs where the other cell is ranked first.
``--shift`` scores the same images under synthetic shifts of stain, background, optics,
magnification and print: every single shift keeps IoU >= 0.5 for 97.2 % or more of them, every
pair of shifts for 95.5 % or more (a cyan or magenta background at double magnification, where
the true cell can exceed the half-frame cap), and no box is frame-sized; the weak spot is a
tinted background (its colour is that of a lymphocyte's cytoplasm, so the grown box is too big:
mean IoU 0.75). The levels (0.4, 0.25, 0.85 and 0.25 of the way, the percentiles, the ring's
90th percentile) were chosen on that dev set (the unshifted images, their 256-pixel crops and
the shifts), not on any other lab's images.

Box convention everywhere in wbc: ``(x0, y0, x1, y1)`` in pixels, 0-based, with ``x1``/``y1``
EXCLUSIVE, i.e. the box is ``rgb[y0:y1, x0:x1]``. VOC files are 1-based and inclusive, so
``read_voc_boxes`` turns ``xmin, ymin, xmax, ymax`` into ``(xmin - 1, ymin - 1, xmax, ymax)``.

Everything here is pure numpy/OpenCV (no TensorFlow), so ``wbc prepare`` stays light.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wbc.core.errors import DataError

Box = tuple[int, int, int, int]  # (x0, y0, x1, y1), 0-based, x1/y1 exclusive

MODES = ("none", "boxes", "detect")
# An image whose sides are within this ratio is already a single-cell crop: it is kept whole
# (crop stage, wbc cv --data) and not searched for a WBC (predict --input auto). Other labs'
# crops are often a few pixels off square (tecom-crops: 104x120, ratio 1.15); smears are 4:3,
# 5:4 or wider.
CROP_ASPECT = 1.2
# Bump when the detector's rules change: the crop stage records it, so cached crops are redone.
DETECTOR_VERSION = 3

# Detector constants. The image is resized so that its longer side is _WORK_SIDE pixels; every
# size below is in those working pixels, i.e. a fixed fraction of the frame.
_WORK_SIDE = 320
_STAIN_WEIGHTS = (1.0, 1.0, -2.0)  # OD red + green - 2 x blue: zero on grey, high on nuclei
_PEAK_Q = 99.5  # percentile of the stain map taken as the image's nucleus level
_NUCLEUS_LEVEL = 0.4  # nucleus: above this fraction of the way from typical level to peak
_CYTO_LEVEL = 0.25  # cytoplasm: this fraction of the nucleus threshold's excess
# A nucleus is dense as well as stain-coloured: its total optical density above this fraction
# of the way from the image's lightest pixels (their _BG_Q-th percentile: background) to the
# median density of the stain's core (pixels _CORE_LEVEL of the way from the median stain to
# the peak). A strongly tinted plasma is stain-coloured but light and seldom reaches the core;
# a printed black mark, and the colour fringes JPEG leaves round it, are dense but too few or
# too grey to move the core's median.
_DENSITY_LEVEL = 0.25
_BG_Q = 5
_CORE_LEVEL = 0.85
_MIN_CONTRAST = 0.25  # below this stain excess (OD) the image holds no stained object
_RING = 2.2  # the cell's surroundings: between _CELL_MAX and this multiple of the nucleus box
_RING_Q = 90  # percentile of the surroundings' stain taken as their background (not red cells)
_MAX_FRAC = 0.5  # no box over this fraction of the frame: such a "cell" is background
_MIN_AREA_FRAC = 0.002  # nucleus area floor (fraction of the frame): removes platelets
_REL_AREA = 0.3  # a candidate under this fraction of the biggest nucleus is dropped (debris)
_CELL_MIN, _CELL_MAX = 1.2, 1.7  # cell box side between these multiples of the nucleus box
_MERGE_GROW = 1.4  # a piece whose centre is inside this multiple of a nucleus box joins it
# A single-cell crop is re-framed as the crop stage frames cells when its padded cell box spans
# at most this share of its side: a crop with a much wider margin (a CellaVision-style crop, the
# cell a third of the side) is cut down; one framed about as wbc frames, or tighter, is kept whole.
REFRAME_LIMIT = 0.5
# ... and only when no other stained object lies within this multiple of the cell box: a box
# with a neighbour that close may hold one lobe of the nucleus, or the nucleus without its
# cytoplasm, and re-cutting around it would cut the cell.
_REFRAME_CLEAR = 2.0
_CROP_WORK_SIDE = 160  # detector side on a crop: its cell is as many pixels as in a smear at 320


def is_cell_crop(shape: Sequence[int]) -> bool:
    """Whether an image of this shape is a single-cell crop already (see CROP_ASPECT)."""
    height, width = int(shape[0]), int(shape[1])
    return max(height, width) <= CROP_ASPECT * min(height, width)


@dataclass(frozen=True)
class Crop:
    """One crop: the pixels, the cell box it was cut around, and where the box came from."""

    image: np.ndarray
    box: Box
    source: str  # "boxes" | "detect" | "centre" | "none"


# ----------------------------------------------------------------------------- VOC annotations


def read_voc_boxes(xml_path: Path, name: str = "WBC") -> list[Box]:
    """The ``name`` boxes of a Pascal VOC file as 0-based exclusive boxes, in file order.

    A missing file gives ``[]`` (a few BCCD images have no annotation). A file that is not XML,
    or a box whose coordinates are not numbers, raises ``DataError`` naming the file. Degenerate
    boxes (no area) are left out.
    """
    path = Path(xml_path)
    try:
        root = ET.parse(path).getroot()
    except FileNotFoundError:
        return []
    except ET.ParseError as exc:
        raise DataError(f"{path}: malformed annotation XML ({exc})") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read annotation ({exc.strerror or exc})") from None
    wanted = name.strip().lower()
    boxes: list[Box] = []
    for obj in root.iter("object"):
        if (obj.findtext("name") or "").strip().lower() != wanted:
            continue
        bnd = obj.find("bndbox")
        if bnd is None:
            raise DataError(f"{path}: a {name} object has no <bndbox>")
        try:
            xmin, ymin, xmax, ymax = (
                float((bnd.findtext(tag) or "").strip()) for tag in ("xmin", "ymin", "xmax", "ymax")
            )
        except ValueError:
            raise DataError(
                f"{path}: a {name} box has a missing or non-numeric coordinate"
            ) from None
        box = (int(round(xmin)) - 1, int(round(ymin)) - 1, int(round(xmax)), int(round(ymax)))
        box = (max(box[0], 0), max(box[1], 0), box[2], box[3])
        if box[2] > box[0] and box[3] > box[1]:
            boxes.append(box)
    return boxes


# ----------------------------------------------------------------------------- box helpers


def box_area(box: Box) -> int:
    return max(0, box[2] - box[0]) * max(0, box[3] - box[1])


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two boxes (0.0 when either is empty)."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    inter = max(0, iw) * max(0, ih)
    union = box_area(a) + box_area(b) - inter
    return inter / union if union > 0 else 0.0


def clip_box(box: Sequence[float], image_shape: Sequence[int]) -> Box | None:
    """``box`` rounded and clipped to the image; None when nothing of it is inside."""
    height, width = int(image_shape[0]), int(image_shape[1])
    x0 = int(np.clip(round(box[0]), 0, width))
    y0 = int(np.clip(round(box[1]), 0, height))
    x1 = int(np.clip(round(box[2]), 0, width))
    y1 = int(np.clip(round(box[3]), 0, height))
    if x1 <= x0 or y1 <= y0:
        return None
    return (x0, y0, x1, y1)


def largest_box(boxes: Iterable[Box]) -> Box | None:
    boxes = list(boxes)
    return max(boxes, key=box_area) if boxes else None


def _place(lo: float, side: int, extent: int) -> int:
    """Start of a ``side``-long segment near ``lo`` kept inside ``[0, extent)`` if it fits."""
    if side >= extent:
        return -((side - extent) // 2)  # cannot fit: centre it so it overflows evenly
    return int(min(max(round(lo), 0), extent - side))


def square_box(box: Box, padding: float, image_shape: Sequence[int]) -> Box:
    """A square around ``box``, grown by ``padding`` x its longer side on every side.

    The square is shifted (never shrunk) to lie inside the image. When it is bigger than the
    image along an axis it is centred on the image there and overflows both edges evenly;
    ``crop_square`` fills the overflow by edge replication. The result is always square.
    """
    height, width = int(image_shape[0]), int(image_shape[1])
    x0, y0, x1, y1 = box
    side = max(1, int(round(max(x1 - x0, y1 - y0) * (1.0 + 2.0 * max(padding, 0.0)))))
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    sx = _place(cx - side / 2.0, side, width)
    sy = _place(cy - side / 2.0, side, height)
    return (sx, sy, sx + side, sy + side)


def center_box(image_shape: Sequence[int]) -> Box:
    """The largest centred square of the image (the crop used when no cell is found)."""
    height, width = int(image_shape[0]), int(image_shape[1])
    side = min(height, width)
    x0, y0 = (width - side) // 2, (height - side) // 2
    return (x0, y0, x0 + side, y0 + side)


def crop_square(rgb: np.ndarray, box: Box, padding: float, size: int) -> np.ndarray:
    """The padded square around ``box``, resized to ``size`` x ``size`` (edge-replicated)."""
    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = square_box(box, padding, rgb.shape)
    top, left = max(0, -y0), max(0, -x0)
    bottom, right = max(0, y1 - height), max(0, x1 - width)
    patch = rgb[max(y0, 0) : min(y1, height), max(x0, 0) : min(x1, width)]
    if top or left or bottom or right:
        patch = cv2.copyMakeBorder(patch, top, bottom, left, right, cv2.BORDER_REPLICATE)
    side = patch.shape[0]
    interpolation = cv2.INTER_AREA if side > size else cv2.INTER_LINEAR
    out = cv2.resize(np.ascontiguousarray(patch), (size, size), interpolation=interpolation)
    return out.reshape(size, size, *rgb.shape[2:]) if rgb.ndim == 3 else out


# ----------------------------------------------------------------------------- detector


def _as_rgb_uint8(rgb: np.ndarray) -> np.ndarray | None:
    """An (H, W, 3) uint8 view of ``rgb``, or None when it cannot carry stain colours."""
    array = np.asarray(rgb)
    if array.ndim != 3 or array.shape[2] not in (3, 4) or min(array.shape[:2]) < 8:
        return None
    array = array[..., :3]
    if array.dtype != np.uint8:
        if not np.issubdtype(array.dtype, np.number) or array.size == 0:
            return None
        array = array.astype(np.float64)
        if not np.all(np.isfinite(array)):
            array = np.nan_to_num(array, nan=0.0, posinf=255.0, neginf=0.0)
        if array.max() <= 1.0:
            array = array * 255.0
        array = np.clip(array, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(array)


# Natural log of every 8-bit level (0 read as 1): optical density up to a per-channel constant.
_LOG = np.log(np.maximum(np.arange(256, dtype=np.float32), 1.0))


def stain_map(rgb: np.ndarray) -> np.ndarray:
    """Nuclear stain as float32: optical density of red plus green minus twice blue.

    High on nuclei (they absorb red and green, pass blue), negative on red cells, and the same
    on the background and on anything grey or black (a printed scale bar or label absorbs every
    channel alike). The weights sum to zero, so a brightness change or a tinted background
    (a gain per channel) only adds a constant, which the detector's levels, all measured from
    the image's own median and peak, cancel.
    """
    return _stain_from_log(_LOG[rgb])


def _stain_from_log(log_rgb: np.ndarray) -> np.ndarray:
    return cv2.transform(log_rgb, np.asarray([_STAIN_WEIGHTS], np.float32) * -1.0)


def _density_from_log(log_rgb: np.ndarray) -> np.ndarray:
    """Total optical density (float32, up to a constant), smoothed as the stain map is."""
    return cv2.GaussianBlur(-channel_sum(log_rgb), (5, 5), 0)


def _dense_level(density: np.ndarray, core: np.ndarray) -> float:
    """The total density a nucleus pixel must exceed (see _DENSITY_LEVEL)."""
    light = float(np.percentile(density[::2, ::2], _BG_Q))
    if not core.any():
        return light
    dense = float(np.median(density[core]))
    return light + _DENSITY_LEVEL * (dense - light)


def channel_sum(array: np.ndarray) -> np.ndarray:
    """The sum over the last axis of an (..., 3) array: the same values as ``sum(axis=-1)``,
    which numpy computes several times slower on rows of three."""
    return array[..., 0] + array[..., 1] + array[..., 2]


def label_mask(labels: np.ndarray, count: int, kept: Sequence[int] | np.ndarray) -> np.ndarray:
    """Pixels whose label (0..count-1, as OpenCV's connected components number them) is one of
    ``kept``: ``np.isin`` by a lookup table, a tenth of its cost on a crop."""
    table = np.zeros(count, bool)
    table[np.asarray(kept, np.int64)] = True
    return table[labels]


def _ellipse(size: int) -> np.ndarray:
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (size, size))


def _grow(box: Sequence[float], factor: float) -> tuple[float, float, float, float]:
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    hw, hh = (box[2] - box[0]) * factor / 2.0, (box[3] - box[1]) * factor / 2.0
    return (cx - hw, cy - hh, cx + hw, cy + hh)


def _inside(point: tuple[float, float], box: Sequence[float]) -> bool:
    return box[0] <= point[0] <= box[2] and box[1] <= point[1] <= box[3]


def detect_cells(rgb: np.ndarray, work_side: int = _WORK_SIDE) -> list[Box]:
    """Candidate WBC boxes (whole cell, 0-based exclusive), best (largest nucleus) first.

    Returns ``[]`` for images without a stained object: blank, uniform, grayscale, tiny.
    ``work_side``: the longer side the image is resized to first (``_CROP_WORK_SIDE`` for a
    single-cell crop, whose cell is already several times larger than in a smear).
    """
    image = _as_rgb_uint8(rgb)
    if image is None:
        return []
    height, width = image.shape[:2]
    scale = work_side / max(height, width)
    work_w, work_h = max(1, round(width * scale)), max(1, round(height * scale))
    interpolation = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    small = cv2.resize(image, (work_w, work_h), interpolation=interpolation)

    # One table lookup serves the stain map and the total density.
    # cv2.LUT applies one table to every channel: three times faster than indexing _LOG.
    log_rgb = cv2.LUT(small, _LOG)
    stain = cv2.GaussianBlur(_stain_from_log(log_rgb), (5, 5), 0)
    # Levels from every other pixel in each direction (a nucleus spans many): 4x cheaper.
    reference, peak = (float(v) for v in np.percentile(stain[::2, ::2], (50, _PEAK_Q)))
    excess = peak - reference
    if excess < _MIN_CONTRAST:
        return []
    level = reference + _NUCLEUS_LEVEL * excess
    stained = stain > level
    density = _density_from_log(log_rgb)
    core = stain > reference + _CORE_LEVEL * excess
    nucleus = (stained & (density > _dense_level(density, core))).astype(np.uint8)
    nucleus = cv2.morphologyEx(nucleus, cv2.MORPH_OPEN, _ellipse(3))
    nucleus = cv2.morphologyEx(nucleus, cv2.MORPH_CLOSE, _ellipse(15))
    count, labels, stats, centroids = cv2.connectedComponentsWithStats(nucleus, connectivity=8)
    min_area = _MIN_AREA_FRAC * work_w * work_h
    pieces = [
        (int(stats[i, cv2.CC_STAT_AREA]), i)
        for i in range(1, count)
        if stats[i, cv2.CC_STAT_AREA] >= min_area
    ]
    if not pieces:
        return []
    pieces.sort(key=lambda piece: (-piece[0], piece[1]))

    # Merge lobes: a piece whose centre lies near a bigger nucleus belongs to that cell.
    cells: list[dict] = []
    for area, index in pieces:
        x, y, w, h = stats[index, :4]
        piece_box = (float(x), float(y), float(x + w), float(y + h))
        centre = (float(centroids[index][0]), float(centroids[index][1]))
        for cell in cells:
            if _inside(centre, _grow(cell["box"], _MERGE_GROW)):
                cb = cell["box"]
                cell["box"] = (
                    min(cb[0], piece_box[0]),
                    min(cb[1], piece_box[1]),
                    max(cb[2], piece_box[2]),
                    max(cb[3], piece_box[3]),
                )
                cell["area"] += area
                cell["labels"].append(index)
                break
        else:
            cells.append({"box": piece_box, "area": area, "labels": [index]})
    biggest = max(cell["area"] for cell in cells)
    cells = [cell for cell in cells if cell["area"] >= _REL_AREA * biggest]
    cells.sort(key=lambda cell: -cell["area"])

    # Grow each nucleus to its cell: the faintly stained region connected to it, within bounds.
    # Cytoplasm is measured against the cell's own surroundings (a ring just outside the
    # largest cell box), so a tinted background next to the cell is not taken for cytoplasm.
    smooth = cv2.GaussianBlur(stain, (0, 0), 3)
    frame = _MAX_FRAC * height * width
    boxes: list[Box] = []
    for cell in cells:
        nb = cell["box"]
        outer, inner = _grow(nb, _CELL_MAX), _grow(nb, _CELL_MIN)
        ring = np.zeros(smooth.shape, bool)
        _fill(ring, _grow(nb, _RING), work_w, work_h, True)
        _fill(ring, outer, work_w, work_h, False)
        local = float(np.percentile(smooth[ring], _RING_Q)) if ring.any() else reference
        local = max(local, reference)
        cyto = (smooth > local + _CYTO_LEVEL * (level - local)).astype(np.uint8)
        cyto = cv2.morphologyEx(cyto, cv2.MORPH_OPEN, _ellipse(5)) | nucleus
        cyto_count, cyto_labels = cv2.connectedComponents(cyto, connectivity=8)
        # The cytoplasm pieces that hold this cell's nucleus pixels (0 is the background).
        touched = cyto_labels[label_mask(labels, count, cell["labels"])]
        ys, xs = np.nonzero(label_mask(cyto_labels, cyto_count, touched[touched > 0]))
        if len(xs):
            grown = (float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1))
        else:
            grown = inner
        cb = (
            min(max(grown[0], outer[0]), inner[0]),
            min(max(grown[1], outer[1]), inner[1]),
            max(min(grown[2], outer[2]), inner[2]),
            max(min(grown[3], outer[3]), inner[3]),
        )
        full = clip_box([v / scale for v in cb], (height, width))
        if full is None:
            continue
        if box_area(full) > frame:
            # A box over half the frame boxes the background, not a cell: keep the nucleus'
            # neighbourhood, shrunk about its centre to the largest box that is not frame-sized;
            # a "nucleus" whose own pixels cover that much is no nucleus.
            nucleus_box = clip_box([v / scale for v in nb], (height, width))
            if nucleus_box is None or cell["area"] / scale**2 > frame:
                continue
            if box_area(nucleus_box) > frame:
                # A magnified cell whose lobes span over half the frame, though their pixels
                # do not: keep its centre and as much around it as the limit allows.
                cx = (nucleus_box[0] + nucleus_box[2]) // 2
                cy = (nucleus_box[1] + nucleus_box[3]) // 2
                nucleus_box = (cx, cy, cx + 1, cy + 1)
            full = _shrink(full, nucleus_box, frame, (height, width))
        boxes.append(full)
    return boxes


def _fill(mask: np.ndarray, box: Sequence[float], width: int, height: int, value: bool) -> None:
    x0, y0 = max(int(np.floor(box[0])), 0), max(int(np.floor(box[1])), 0)
    x1, y1 = min(int(np.ceil(box[2])), width), min(int(np.ceil(box[3])), height)
    if x1 > x0 and y1 > y0:
        mask[y0:y1, x0:x1] = value


def _shrink(box: Box, keep: Box, limit: float, image_shape: Sequence[int]) -> Box:
    """``box`` cut to at most ``limit`` pixels of area about its centre, still holding ``keep``
    (whose area is at most ``limit``), and inside the image."""
    height, width = int(image_shape[0]), int(image_shape[1])
    factor = np.sqrt(limit / box_area(box))
    kw, kh = keep[2] - keep[0], keep[3] - keep[1]
    w = max(int((box[2] - box[0]) * factor), kw)
    h = max(int((box[3] - box[1]) * factor), kh)
    if w * h > limit:  # one side is at the nucleus' size: the other one gives way
        w, h = (w, max(int(limit // w), kh)) if w == kw else (max(int(limit // h), kw), h)
    cx, cy = (box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0
    x0 = int(np.clip(round(cx - w / 2.0), max(keep[2] - w, 0), min(keep[0], width - w)))
    y0 = int(np.clip(round(cy - h / 2.0), max(keep[3] - h, 0), min(keep[1], height - h)))
    return (x0, y0, x0 + w, y0 + h)


# ----------------------------------------------------------------------------- choosing boxes


def detect_or_center(rgb: np.ndarray) -> tuple[Box, bool]:
    """The detector's best box, or the centre square and ``False`` when nothing is found."""
    boxes = detect_cells(rgb)
    if boxes:
        return boxes[0], True
    return center_box(np.asarray(rgb).shape), False


def find_boxes(
    rgb: np.ndarray, mode: str, boxes: Iterable[Sequence[float]] | None = None
) -> tuple[list[Box], str]:
    """Every WBC box of an image, best first, and where they came from.

    ``mode`` 'none' gives the whole frame; 'boxes' the given boxes clipped to the image,
    largest first (falling back to the detector when there are none); 'detect' the detector's
    boxes. When nothing is found the centre square is returned with source 'centre'.
    """
    if mode not in MODES:
        raise ValueError(f"crop mode must be one of {', '.join(MODES)}, not {mode!r}")
    shape = np.asarray(rgb).shape
    if mode == "none":
        return [(0, 0, int(shape[1]), int(shape[0]))], "none"
    if mode == "boxes" and boxes:
        clipped = [b for b in (clip_box(b, shape) for b in boxes) if b is not None]
        if clipped:
            return sorted(clipped, key=lambda b: -box_area(b)), "boxes"
    detected = detect_cells(rgb)
    if detected:
        return detected, "detect"
    return [center_box(shape)], "centre"


def crop_cells(
    rgb: np.ndarray,
    mode: str,
    padding: float,
    size: int,
    boxes: Iterable[Sequence[float]] | None = None,
    every: bool = False,
) -> list[Crop]:
    """Crops of the main WBC (``every=False``: a list of one) or of every WBC, best first.

    Mode 'none' returns the image itself, uncropped and unresized. A centre-square fallback
    is cut without padding (it already spans the shorter side of the frame).
    """
    found, source = find_boxes(rgb, mode, boxes)
    if source == "none":
        return [Crop(np.asarray(rgb), found[0], "none")]
    if not every:
        found = found[:1]
    pad = 0.0 if source == "centre" else padding
    return [Crop(crop_square(rgb, box, pad, size), box, source) for box in found]


def crop_image(
    rgb: np.ndarray,
    mode: str,
    padding: float,
    size: int,
    boxes: Iterable[Sequence[float]] | None = None,
    every: bool = True,
) -> list[np.ndarray]:
    """The crop pixels only (see ``crop_cells``); by default every WBC, best first."""
    return [crop.image for crop in crop_cells(rgb, mode, padding, size, boxes, every)]


def reframe_box(rgb: np.ndarray, padding: float) -> Box | None:
    """The cell box to re-cut a single-cell crop around (with ``padding``), or None to keep the
    crop whole: the detector's best box, when its padded square spans at most
    ``REFRAME_LIMIT`` of the crop's shorter side and no other detected object lies near it."""
    shape = np.asarray(rgb).shape
    found = detect_cells(rgb, _CROP_WORK_SIDE)
    if not found:
        return None
    best = found[0]
    x0, _, x1, _ = square_box(best, padding, shape)
    if x1 - x0 > REFRAME_LIMIT * min(shape[0], shape[1]):
        return None
    near = _grow(best, _REFRAME_CLEAR)
    if any(_overlaps(other, near) for other in found[1:]):
        return None
    return best


def reframe_crop(rgb: np.ndarray, padding: float, size: int) -> Crop | None:
    """A single-cell crop re-cut around its cell (``reframe_box``) as a ``size`` square crop
    with source 'reframed', or None when the crop is to be kept whole."""
    box = reframe_box(rgb, padding)
    if box is None:
        return None
    return Crop(crop_square(rgb, box, padding, size), box, "reframed")


def _overlaps(a: Sequence[float], b: Sequence[float]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]
