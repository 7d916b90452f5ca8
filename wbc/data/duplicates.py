"""Same-field image pairs: the same WBC photographed twice under two image ids.

Why: the BCCD images were shot while panning around a slide, so several cells appear in two (or
three) images, shifted by up to half a frame and rotated by a degree or so. If one copy lands in
training and the other in the test set, the test score measures memory, not classification; and
when the two copies carry different labels one of them is wrong. ``find_duplicates`` finds such
pairs, ``group_ids`` turns them into groups that the grouped split keeps on one side.

How, and why each step:

1. Prefilter (cheap, all pairs): phase correlation of 64x48 high-passed grey thumbnails. Its
   peak is high when one thumbnail is a translated copy of the other, whatever the shift, which
   colour histograms and perceptual hashes are not (every smear has the same colours; a shifted
   field changes the hash). Only the top ``candidates`` partners of each image go on.
2. Keypoints: ORB on a contrast-equalised (CLAHE) 320-pixel grey image, ratio-tested,
   one-to-one matches, and a RANSAC similarity transform, kept only when it is what moving a
   slide under the same camera can do: scale near 1, rotation under 15 degrees. (Lobed nuclei
   of two different cells often "match" each other at some large rotation.) The score is the
   RANSAC inlier count.
3. Photometric check: the first image is warped onto the second with that transform and the
   normalised cross-correlation of the overlap is measured. Inlier counts alone do not separate
   well on smears: dust on the camera sensor sits at the same pixels in every image and yields
   a handful of "identity" inliers between unrelated images, and red-cell texture is repetitive.
   A true overlap correlates at 0.46-0.96, a chance transform at about 0-0.3.
4. Same cell: a pair counts only when a detected WBC of one image maps into a detected WBC of
   the other (``wbc.data.cells.detect_cells``). Overlapping fields whose shared part holds only red
   cells are not duplicates of a labelled cell, and their labels may rightly differ.

Thresholds, from the public folder (297 images; ``scripts/show_duplicates.py`` prints the
table). Matching all 43,956 pairs (not only the prefiltered ones): unrelated images reach 8
inliers (6 within the rotation limit), so no inlier count alone separates them from the weakest
true pairs (6-13 inliers, when two shots overlap by only a fifth of the frame). The overlap
correlation does: within the rotation limit unrelated pairs stay at or below 0.11, true pairs
(each checked by eye on a warped overlay) are at 0.46-0.96, all with rotation under 2 degrees.
Hence the inlier count is only a floor, set at 5, one below the weakest true pairs (whose
counts move by one or two with decoding details), and the correlation decides: >= 0.35, between
the two populations; plus an overlap of >= 10 % of the frame and a shared WBC.
The prefilter kept every pair that all-pairs matching accepted (25 of 25).

Result on the public folder: 25 pairs in 23 groups (48 images: 21 pairs and two triples, e.g.
242/248/249); 4 more pairs of overlapping fields without a shared WBC are rejected (19-20,
107-108, 204-276, 223-264). One pair of single-class rows disagrees: 206 LYMPHOCYTE vs 278
MONOCYTE (the same cell; the rename stage drops both). About 11 s for 297 images on 2 cores.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Mapping

import cv2
import numpy as np
import scipy.fft

from wbc.core.errors import BadImage

# Thresholds (see the module docstring for the measured distributions behind them).
DEFAULT_MIN_INLIERS = 5
MIN_CORRELATION = 0.35  # normalised cross-correlation of the overlapping high-passed pixels
MIN_OVERLAP = 0.1  # the overlap must cover this fraction of the frame
SCALE_RANGE = (0.8, 1.25)  # same microscope, same magnification
MAX_ROTATION = 15.0  # degrees; the camera does not turn between shots (true pairs: < 2)
CANDIDATES = 4  # phase-correlation partners per image sent to keypoint matching

_THUMB = (64, 48)  # width, height of the prefilter thumbnail
_WORK_SIDE = 320  # longer side of the image used for keypoints and correlation
_ORB_FEATURES = 500
_RATIO = 0.8
_RANSAC_PIXELS = 3.0  # reprojection tolerance in working pixels


@dataclass
class _Image:
    """What matching needs of one image, all at working resolution."""

    thumb_spectrum: np.ndarray
    points: np.ndarray  # (N, 2) float32 keypoint positions
    descriptors: np.ndarray | None
    highpass: np.ndarray  # float32 grey, low frequencies removed
    cells: list  # detected WBC boxes (x0, y0, x1, y1)


@dataclass(frozen=True)
class PairMatch:
    """The evidence for one candidate pair (transform maps image a onto image b)."""

    inliers: int
    correlation: float
    overlap: float
    same_cell: bool | None  # None when either image has no detected cell
    transform: np.ndarray | None


def _highpass(gray: np.ndarray, sigma: float) -> np.ndarray:
    gray = gray.astype(np.float32)
    return gray - cv2.GaussianBlur(gray, (0, 0), sigma)


def _prepare(rgb: np.ndarray) -> _Image:
    from wbc.data.cells import detect_cells

    height, width = rgb.shape[:2]
    scale = _WORK_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    thumb = cv2.resize(gray, _THUMB, interpolation=cv2.INTER_AREA)
    thumb = _highpass(thumb, 4.0)
    thumb = (thumb - thumb.mean()) / (thumb.std() + 1e-6)
    spectrum = np.fft.rfft2(thumb)
    spectrum = (spectrum / (np.abs(spectrum) + 1e-9)).astype(np.complex64)

    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    orb = cv2.ORB_create(nfeatures=_ORB_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(clahe.apply(gray), None)
    points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
    return _Image(spectrum, points, descriptors, _highpass(gray, 8.0), detect_cells(small))


def _phase_scores(spectra: np.ndarray) -> np.ndarray:
    """Phase-correlation peak for every pair (symmetric matrix, diagonal -inf)."""
    n = len(spectra)
    scores = np.full((n, n), -np.inf, np.float32)
    for i in range(n - 1):
        cross = spectra[i][None] * np.conj(spectra[i + 1:])
        peaks = scipy.fft.irfft2(cross, s=(_THUMB[1], _THUMB[0]), axes=(1, 2), workers=_workers())
        peaks = peaks.reshape(n - i - 1, -1)
        scores[i, i + 1:] = peaks.max(axis=1)
        scores[i + 1:, i] = scores[i, i + 1:]
    return scores


def _candidate_pairs(scores: np.ndarray, k: int) -> list[tuple[int, int]]:
    pairs: set[tuple[int, int]] = set()
    n = len(scores)
    k = min(k, n - 1)
    if k <= 0:
        return []
    for i in range(n):
        for j in np.argpartition(-scores[i], k - 1)[:k]:
            pairs.add((min(i, int(j)), max(i, int(j))))
    return sorted(pairs)


def _centre(box) -> np.ndarray:
    return np.array([(box[0] + box[2]) / 2.0, (box[1] + box[3]) / 2.0, 1.0])


def _maps_into(transform: np.ndarray, boxes_from: list, boxes_to: list) -> bool:
    for box in boxes_from:
        x, y = transform @ _centre(box)
        for other in boxes_to:
            if other[0] <= x <= other[2] and other[1] <= y <= other[3]:
                return True
    return False


def _match(a: _Image, b: _Image) -> PairMatch:
    none = PairMatch(0, 0.0, 0.0, None, None)
    if a.descriptors is None or b.descriptors is None or len(a.points) < 3 or len(b.points) < 3:
        return none
    matcher = cv2.BFMatcher(cv2.NORM_HAMMING)
    knn = matcher.knnMatch(a.descriptors, b.descriptors, k=2)
    rows = np.array(
        [(m[0].queryIdx, m[0].trainIdx, m[0].distance) for m in knn
         if len(m) == 2 and m[0].distance < _RATIO * m[1].distance],
        dtype=np.float64,
    ).reshape(-1, 3)
    if len(rows) < 3:
        return none
    # One-to-one: where several query points chose one train point, keep the closest.
    rows = rows[np.lexsort((rows[:, 2], rows[:, 1]))]
    rows = rows[np.r_[True, rows[1:, 1] != rows[:-1, 1]]]
    if len(rows) < 3:
        return none
    src = a.points[rows[:, 0].astype(int)]
    dst = b.points[rows[:, 1].astype(int)]
    transform, mask = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=_RANSAC_PIXELS,
        maxIters=2000, confidence=0.99,
    )
    if transform is None or mask is None:
        return none
    inliers = int(mask.sum())
    scale = float(np.hypot(transform[0, 0], transform[1, 0]))
    angle = float(np.degrees(np.arctan2(transform[1, 0], transform[0, 0])))
    if not SCALE_RANGE[0] <= scale <= SCALE_RANGE[1] or abs(angle) > MAX_ROTATION:
        return PairMatch(inliers, 0.0, 0.0, None, transform)

    height, width = b.highpass.shape
    warped = cv2.warpAffine(a.highpass, transform, (width, height), flags=cv2.INTER_LINEAR)
    valid = cv2.warpAffine(np.ones_like(a.highpass), transform, (width, height)) > 0.99
    overlap = float(valid.mean())
    correlation = 0.0
    if valid.sum() >= 100:
        x, y = warped[valid], b.highpass[valid]
        x, y = x - x.mean(), y - y.mean()
        denominator = float(np.sqrt((x * x).sum() * (y * y).sum()))
        correlation = float((x * y).sum() / denominator) if denominator > 0 else 0.0

    same_cell = None
    if a.cells and b.cells:
        inverse = cv2.invertAffineTransform(transform)
        same_cell = _maps_into(transform, a.cells, b.cells) or _maps_into(inverse, b.cells, a.cells)
    return PairMatch(inliers, correlation, overlap, same_cell, transform)


def _load(path: Path) -> _Image | None:
    from wbc.core.imageio import read_rgb

    try:
        return _prepare(read_rgb(path))
    except BadImage:
        return None


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def match_candidates(
    images: Mapping[int, Path], candidates: int = CANDIDATES
) -> dict[tuple[int, int], PairMatch]:
    """The evidence for every prefiltered candidate pair ``(id_a, id_b)``, ``id_a < id_b``.

    Unreadable images are left out. This is what ``find_duplicates`` thresholds; scripts use it
    to look at the score distribution.
    """
    from wbc.core.progress import bar

    ids = sorted(images)
    with ThreadPoolExecutor(_workers()) as pool, bar(len(ids), "duplicates: reading") as shown:
        prepared = []
        for item in pool.map(lambda i: _load(Path(images[i])), ids):
            prepared.append(item)
            shown.update(1)
    kept = [(i, p) for i, p in zip(ids, prepared) if p is not None]
    if len(kept) < 2:
        return {}
    scores = _phase_scores(np.stack([p.thumb_spectrum for _, p in kept]))
    pairs = _candidate_pairs(scores, candidates)
    with ThreadPoolExecutor(_workers()) as pool, bar(len(pairs), "duplicates: matching") as shown:
        results = []
        for item in pool.map(lambda ij: _match(kept[ij[0]][1], kept[ij[1]][1]), pairs):
            results.append(item)
            shown.update(1)
    return {(kept[i][0], kept[j][0]): result for (i, j), result in zip(pairs, results)}


def is_duplicate(match: PairMatch, min_inliers: int = DEFAULT_MIN_INLIERS) -> bool:
    """The rule: enough inliers, a correlated overlap, and (when both have cells) a shared WBC."""
    return (
        match.inliers >= min_inliers
        and match.correlation >= MIN_CORRELATION
        and match.overlap >= MIN_OVERLAP
        and match.same_cell is not False
    )


def find_duplicates(
    images: Mapping[int, Path], min_inliers: int = DEFAULT_MIN_INLIERS
) -> list[tuple[int, int, float]]:
    """Pairs ``(id_a, id_b, inliers)`` with ``id_a < id_b`` that show the same cell, sorted."""
    found = match_candidates(images)
    return sorted(
        (a, b, float(m.inliers)) for (a, b), m in found.items() if is_duplicate(m, min_inliers)
    )


def group_ids(ids: Iterable[int], pairs: Iterable[tuple]) -> dict[int, int]:
    """Union-find over ``pairs``: each id of ``ids`` -> the smallest id of its group.

    Pairs naming an id outside ``ids`` are ignored, so every key and value is one of ``ids``.
    """
    parent = {int(i): int(i) for i in ids}

    def root(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        a, b = int(pair[0]), int(pair[1])
        if a not in parent or b not in parent:
            continue
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in parent}
