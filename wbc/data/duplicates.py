"""Same-field image pairs: the same WBC photographed twice under two image ids.

Why: the BCCD images were shot while panning around a slide, so several cells appear in two (or
three) images, shifted by up to half a frame and rotated by a degree or so. If one copy lands in
training and the other in the test set, the test score measures memory, not classification; and
when the two copies carry different labels one of them is wrong. ``find_duplicates`` finds such
pairs, ``group_ids`` turns them into groups that the grouped split keeps on one side.

How, and why each step:

1. Candidates (linear in the number of images): each image's ORB descriptors (step 2) go into
   a locality-sensitive hash index (16 tables, each keyed by ~22 of the 256 bits: a key about
   5 bits longer than log2 of the descriptors indexed, so buckets stay as full whatever the
   set's size). Two descriptors of different images sharing a key vote for the shift between
   their points; a field photographed twice collects many votes at one shift, chance
   collisions (red-cell texture looks alike everywhere) scatter. Only the ``candidates`` best-
   voted partners of each image (>= ``MIN_VOTES`` in one 16-pixel shift bin) go on, plus
   images with identical pixels. All-pairs comparison (a 20,000-image lab set is 200 million
   pairs) is what this replaces: up to issue 22 the prefilter was the phase correlation of
   high-passed thumbnails for every pair. Images are read once, in batches; what matching
   needs of each (working grey, keypoints) waits in a temporary file, not in memory.
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
Both prefilters (all-pairs phase correlation, then this index) kept every pair that all-pairs
matching accepted (25 of 25); the index keeps them all with 2 partners an image as well as 4.
Its margin is thin the other way: a key one bit longer loses the weakest pair (225-262).

Result on the public folder: 25 pairs in 23 groups (48 images: 21 pairs and two triples, e.g.
242/248/249); 4 more pairs of overlapping fields without a shared WBC are rejected (19-20,
107-108, 204-276, 223-264). One pair of single-class rows disagrees: 206 LYMPHOCYTE vs 278
MONOCYTE (the same cell; the rename stage drops both). About 6-13 s for 297 images on 2 shared
cores; ``wbc bench --only duplicates`` measures the growth on 5,000 and 20,000 generated crops.

Single-cell crops (a lab's class folders; images under the working size, which are upscaled to
it) go through the same steps, with one stricter threshold: the overlap correlation must reach
``MIN_CROP_CORRELATION`` (0.6), because one cell fills the frame and two different cells of one
class correlate at up to 0.43 on their outlines alone (5 such pairs passed 0.35 among 20,000
generated crops). A byte copy, a re-encoded or resized copy, or the same cell cropped a few
pixels off correlates at 0.87-1.0 and is found (tests/test_duplicates.py). The public
tecom-crops folder holds 13 such same-cell pairs of its own, one across classes.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from wbc.core.errors import BadImage

# Thresholds (see the module docstring for the measured distributions behind them).
DEFAULT_MIN_INLIERS = 5
MIN_CORRELATION = 0.35  # normalised cross-correlation of the overlapping high-passed pixels
# The same for two single-cell crops (images under the working size): one cell fills the frame,
# so two different cells of one class, outlines aligned, correlate at up to 0.43 (20,000
# generated crops), while copies and re-crops of one cell are at 0.87-1.0 (generated, and the
# tecom-crops folder's own same-cell crops).
MIN_CROP_CORRELATION = 0.6
MIN_OVERLAP = 0.1  # the overlap must cover this fraction of the frame
SCALE_RANGE = (0.8, 1.25)  # same microscope, same magnification
MAX_ROTATION = 15.0  # degrees; the camera does not turn between shots (true pairs: < 2)
CANDIDATES = 4  # best-voted partners per image sent to keypoint matching
MIN_VOTES = 3  # consistent descriptor collisions a candidate needs

_WORK_SIDE = 320  # longer side of the image used for keypoints and correlation
_ORB_FEATURES = 500
_RATIO = 0.8
_RANSAC_PIXELS = 3.0  # reprojection tolerance in working pixels

# The candidate index (step 1): locality-sensitive hashing of the ORB descriptors.
_TABLES = 16  # hash tables; each keys a descriptor by some of its 256 bits (``_key_bits``)
_SPARE_BITS = 5  # key bits beyond log2(descriptors in the index)
_BUCKET_CAP = 16  # a bucket holding more descriptors than this is texture, not a landmark
_SHIFT_BIN = 16.0  # working pixels per translation bin of the vote
_VOTE_BYTES = 2**26  # votes counted in memory at once (64 MiB); more are split by pair on disk
_VOTES_PER_DESCRIPTOR = 14  # measured: 11 on the public smears, 14 on generated crops
_BINS = 128  # shift bins per axis: +-1024 working pixels at 16 a bin (images are 320)
_CHUNK = 256  # images decoded per batch: all that is in memory at once besides the index


@dataclass
class _Image:
    """What matching needs of one image, all at working resolution."""

    points: np.ndarray  # (N, 2) float32 keypoint positions
    descriptors: np.ndarray | None
    highpass: np.ndarray | None  # float32 grey, low frequencies removed
    cells: list  # detected WBC boxes (x0, y0, x1, y1)
    gray: np.ndarray  # uint8 working grey that ``highpass`` is made of (what gets spilled)
    crop: bool = False  # smaller than the working size (upscaled): a single-cell crop


@dataclass(frozen=True)
class PairMatch:
    """The evidence for one candidate pair (transform maps image a onto image b)."""

    inliers: int
    correlation: float
    overlap: float
    same_cell: bool | None  # None when either image has no detected cell
    transform: np.ndarray | None
    crops: bool = False  # both images are single-cell crops: MIN_CROP_CORRELATION applies


def _highpass(gray: np.ndarray, sigma: float) -> np.ndarray:
    gray = gray.astype(np.float32)
    return gray - cv2.GaussianBlur(gray, (0, 0), sigma)


def _prepare(rgb: np.ndarray, highpass: bool = True) -> _Image:
    """``highpass=False``: leave it out (None); the index pass does not need it."""
    from wbc.data.cells import detect_cells

    height, width = rgb.shape[:2]
    scale = _WORK_SIDE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    small = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    gray = cv2.cvtColor(small, cv2.COLOR_RGB2GRAY)

    clahe = cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8))
    orb = cv2.ORB_create(nfeatures=_ORB_FEATURES)
    keypoints, descriptors = orb.detectAndCompute(clahe.apply(gray), None)
    points = np.float32([kp.pt for kp in keypoints]).reshape(-1, 2)
    filtered = _highpass(gray, 8.0) if highpass else None
    return _Image(points, descriptors, filtered, detect_cells(small), gray, scale > 1)


class _Spill:
    """The per-image matching data, parked in a temporary file between the two passes.

    Why: a 20,000-image lab set's working greys alone are 2 GB; memory holds only the index
    (descriptors and positions) and each image's offset here.
    """

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="wbc-duplicates-")
        self._end = 0

    def put(self, image: _Image) -> tuple:
        descriptors = image.descriptors
        if descriptors is None:
            descriptors = np.zeros((0, 32), np.uint8)
        parts = [np.ascontiguousarray(image.gray), image.points, descriptors]
        blob = b"".join(part.tobytes() for part in parts)
        os.pwrite(self._file.fileno(), blob, self._end)
        record = (
            self._end,
            image.gray.shape,
            len(image.points),
            image.descriptors is not None,
            image.crop,
        )
        self._end += len(blob)
        return record

    def get(self, record: tuple, cells: list) -> _Image:
        offset, shape, count, has_descriptors, crop = record
        size = shape[0] * shape[1]
        blob = os.pread(self._file.fileno(), size + count * 40, offset)
        gray = np.frombuffer(blob, np.uint8, size).reshape(shape)
        points = np.frombuffer(blob, np.float32, count * 2, size).reshape(-1, 2)
        descriptors = np.frombuffer(blob, np.uint8, count * 32, size + count * 8).reshape(-1, 32)
        return _Image(
            points,
            descriptors if has_descriptors else None,
            _highpass(gray, 8.0),
            cells,
            gray,
            crop,
        )

    def close(self) -> None:
        self._file.close()


def _hash_tables(bits: int, seed: int = 0) -> list[np.ndarray]:
    """Which of the 256 descriptor bits key each table (fixed, so runs agree)."""
    rng = np.random.default_rng(seed)
    return [rng.choice(256, bits, replace=False) for _ in range(_TABLES)]


def _key_bits(descriptors: int) -> int:
    """Key length for an index of ``descriptors``: about 2**_SPARE_BITS buckets per descriptor.

    Why it grows with the index: with a fixed key, buckets fill up as images are added, so the
    collisions per descriptor (the work) would grow with the set, and full buckets would be
    dropped. Growing the key by one bit per doubling keeps both about constant per image.
    """
    return int(np.clip(np.ceil(np.log2(max(descriptors, 2))) + _SPARE_BITS, 16, 48))


def _keys(descriptors: np.ndarray, bits: np.ndarray) -> np.ndarray:
    keys = np.zeros(len(descriptors), np.int64)
    for position, bit in enumerate(bits):
        column = (descriptors[:, bit // 8] >> (7 - bit % 8)) & 1
        keys |= column.astype(np.int64) << position
    return keys


def _collisions(owner: np.ndarray, points: np.ndarray, bits: np.ndarray, descriptors):
    """One hash table's votes: a code ``(pair, shift bin)`` per colliding descriptor pair."""
    images = int(owner.max()) + 1
    keys = _keys(descriptors, bits)
    order = np.argsort(keys, kind="stable")
    keys = keys[order]
    bucket = np.cumsum(np.r_[True, keys[1:] != keys[:-1]]) - 1
    size = np.bincount(bucket)[bucket]
    keep = (size >= 2) & (size <= _BUCKET_CAP)  # most keys are unique: drop them first
    order, keys = order[keep], keys[keep]
    codes = []
    for step in range(1, min(_BUCKET_CAP, len(keys))):
        same = keys[step:] == keys[:-step]
        if not same.any():
            break
        a, b = order[:-step][same], order[step:][same]
        other = owner[a] != owner[b]
        a, b = a[other], b[other]
        swap = owner[a] > owner[b]
        a, b = np.where(swap, b, a), np.where(swap, a, b)
        pair = owner[a].astype(np.int64) * images + owner[b]
        cell = np.floor((points[b] - points[a]) / _SHIFT_BIN).astype(np.int64) + _BINS // 2
        codes.append((pair * _BINS + cell[:, 0]) * _BINS + cell[:, 1])
    return np.concatenate(codes) if codes else np.zeros(0, np.int64)


def _strong_bins(codes: np.ndarray, min_votes: int) -> tuple[np.ndarray, np.ndarray]:
    """Each pair with a shift bin of ``min_votes`` votes or more, and its best bin's votes.

    ``codes`` (every vote of some pairs, all of each pair's votes) is sorted in place."""
    codes.sort()
    m = max(1, min_votes) - 1
    # Bins with at least min_votes votes: in sorted order, a code equal to the one m places on.
    strong = np.unique(codes[:-m][codes[m:] == codes[:-m]] if m else codes)
    votes = np.searchsorted(codes, strong, "right") - np.searchsorted(codes, strong, "left")
    pairs = strong // (_BINS * _BINS)
    if not len(pairs):
        return pairs, votes
    starts = np.flatnonzero(np.r_[True, pairs[1:] != pairs[:-1]])  # strong bins sort by pair
    return pairs[starts], np.maximum.reduceat(votes, starts)


def _vote_pairs(
    owner: np.ndarray, points: np.ndarray, descriptors: np.ndarray, k: int, min_votes: int
) -> set[tuple[int, int]]:
    """Candidate image pairs ``(i, j)``, ``i < j``, from colliding ORB descriptors.

    Two descriptors collide when a hash table gives them the same key; a collision between
    images i and j votes for the shift that moves the point of i onto the point of j. A field
    photographed twice has many collisions at one shift; chance collisions (red-cell texture
    looks alike everywhere) scatter over shifts. Each image keeps the ``k`` partners with the
    most votes in one shift bin, if at least ``min_votes``. Work is linear in the number of
    descriptors: the key grows with the index and crowded buckets are skipped. The votes
    (8 bytes each, about 14 a descriptor, 4,000 an image) are counted in memory up to
    ``_VOTE_BYTES``; beyond, they go to temporary files by pair and are counted file by file.
    """
    images = int(owner.max()) + 1
    tables = _hash_tables(_key_bits(len(owner)))
    parts = int(np.ceil(len(owner) * _VOTES_PER_DESCRIPTOR * 8 / _VOTE_BYTES))
    if parts <= 1:
        codes = np.concatenate([_collisions(owner, points, bits, descriptors) for bits in tables])
        pairs, best = _strong_bins(codes, min_votes)
        del codes
    else:
        with tempfile.TemporaryDirectory(prefix="wbc-votes-") as folder:
            names = [Path(folder) / f"{part}.votes" for part in range(parts)]
            files = [open(name, "wb") for name in names]
            try:
                for bits in tables:
                    codes = _collisions(owner, points, bits, descriptors)
                    part = (codes // (_BINS * _BINS)) % parts
                    order = np.argsort(part, kind="stable")
                    bounds = np.searchsorted(part[order], np.arange(parts + 1))
                    codes = codes[order]
                    for index, handle in enumerate(files):
                        codes[bounds[index] : bounds[index + 1]].tofile(handle)
                    del codes, part, order
            finally:
                for handle in files:
                    handle.close()
            found = [_strong_bins(np.fromfile(name, np.int64), min_votes) for name in names]
        pairs = np.concatenate([pairs for pairs, _ in found])
        best = np.concatenate([best for _, best in found])
    first, second = pairs // images, pairs % images
    # Each image's k best partners: the pair list ranked from both of its ends.
    ends, partners, votes = np.r_[first, second], np.r_[second, first], np.r_[best, best]
    order = np.lexsort((partners, -votes, ends))
    ends, partners = ends[order], partners[order]
    position = np.arange(len(ends))
    start = np.maximum.accumulate(np.where(np.r_[True, ends[1:] != ends[:-1]], position, 0))
    chosen = position - start < k
    return {(int(min(e, p)), int(max(e, p))) for e, p in zip(ends[chosen], partners[chosen])}


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
        [
            (m[0].queryIdx, m[0].trainIdx, m[0].distance)
            for m in knn
            if len(m) == 2 and m[0].distance < _RATIO * m[1].distance
        ],
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
        src,
        dst,
        method=cv2.RANSAC,
        ransacReprojThreshold=_RANSAC_PIXELS,
        maxIters=2000,
        confidence=0.99,
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
    return PairMatch(inliers, correlation, overlap, same_cell, transform, a.crop and b.crop)


def _load(path: Path) -> tuple[_Image, str] | None:
    """The prepared image and a digest of its pixels.

    Why the digest: exact copies are always candidates, even when a set holds so many copies of
    one image that its descriptors' buckets overflow ``_BUCKET_CAP`` and cast no votes. The
    working grey is hashed (a twelfth of a smear's RGB bytes): images that differ only below
    its resolution are near-copies, which matching then confirms or not.
    """
    from wbc.core.imageio import read_rgb

    try:
        rgb = read_rgb(path)
    except BadImage:
        return None
    image = _prepare(rgb, highpass=False)
    digest = hashlib.blake2b(image.gray.tobytes(), digest_size=16, key=repr(rgb.shape).encode())
    return image, digest.hexdigest()


def _stack(pieces: list) -> np.ndarray:
    """One array of ``pieces``, which are let go (not two copies of the index at once)."""
    stacked = np.concatenate(pieces)
    pieces.clear()
    return stacked


def _workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def match_candidates(
    images: Mapping[Hashable, Path], candidates: int = CANDIDATES
) -> dict[tuple, PairMatch]:
    """The evidence for every prefiltered candidate pair ``(id_a, id_b)``, ``id_a < id_b``.

    Ids are any sortable keys. Unreadable images are left out. This is what
    ``find_duplicates`` thresholds; scripts use it to look at the score distribution.
    """
    from wbc.core.progress import bar

    ids = sorted(images)
    kept: list = []  # ids of the readable images, in index order
    cells: list[list] = []
    records: list[tuple] = []
    owners, points, descriptors = [], [], []
    first_of: dict[str, int] = {}
    exact: set[tuple[int, int]] = set()
    spill = _Spill()
    try:
        with ThreadPoolExecutor(_workers()) as pool, bar(len(ids), "duplicates: reading") as shown:
            # Batches bound what is decoded at once: only the index outlives a batch.
            for start in range(0, len(ids), _CHUNK):
                batch = ids[start : start + _CHUNK]
                for image_id, item in zip(batch, pool.map(lambda i: _load(Path(images[i])), batch)):
                    shown.update(1)
                    if item is None:
                        continue
                    image, digest = item
                    index = len(kept)
                    kept.append(image_id)
                    cells.append(image.cells)
                    records.append(spill.put(image))
                    if digest in first_of:
                        exact.add((first_of[digest], index))
                    else:
                        first_of[digest] = index
                    if image.descriptors is not None and len(image.points):
                        owners.append(np.full(len(image.points), index, np.int32))
                        points.append(image.points)
                        descriptors.append(image.descriptors)
        if len(kept) < 2:
            return {}
        pairs = set(exact)
        if owners:
            index = [_stack(owners), _stack(points), _stack(descriptors)]
            pairs |= _vote_pairs(*index, candidates, MIN_VOTES)
            del index
        partners: dict[int, list[int]] = {}
        for i, j in sorted(pairs):
            partners.setdefault(i, []).append(j)

        def match(i: int) -> list[PairMatch]:
            # One task per first image: it is read back from the spill once for all its pairs.
            first = spill.get(records[i], cells[i])
            return [_match(first, spill.get(records[j], cells[j])) for j in partners[i]]

        results = {}
        with (
            ThreadPoolExecutor(_workers()) as pool,
            bar(len(pairs), "duplicates: matching") as shown,
        ):
            for i, found in zip(partners, pool.map(match, partners)):
                for j, result in zip(partners[i], found):
                    results[(kept[i], kept[j])] = result
                shown.update(len(found))
        return results
    finally:
        spill.close()


def is_duplicate(match: PairMatch, min_inliers: int = DEFAULT_MIN_INLIERS) -> bool:
    """The rule: enough inliers, a correlated overlap, and (when both have cells) a shared WBC."""
    return (
        match.inliers >= min_inliers
        and match.correlation >= (MIN_CROP_CORRELATION if match.crops else MIN_CORRELATION)
        and match.overlap >= MIN_OVERLAP
        and match.same_cell is not False
    )


def find_duplicates(
    images: Mapping[Hashable, Path], min_inliers: int = DEFAULT_MIN_INLIERS
) -> list[tuple]:
    """Pairs ``(id_a, id_b, inliers)`` with ``id_a < id_b`` that show the same cell, sorted."""
    found = match_candidates(images)
    return sorted(
        (a, b, float(m.inliers)) for (a, b), m in found.items() if is_duplicate(m, min_inliers)
    )


def group_ids(ids: Iterable[Hashable], pairs: Iterable[tuple]) -> dict:
    """Union-find over ``pairs``: each id of ``ids`` -> the smallest id of its group.

    Ids are any sortable keys. Pairs naming an id outside ``ids`` are ignored, so every key and
    value is one of ``ids``.
    """
    parent = {i: i for i in ids}

    def root(x):
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for pair in pairs:
        a, b = pair[0], pair[1]
        if a not in parent or b not in parent:
            continue
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {i: root(i) for i in parent}
