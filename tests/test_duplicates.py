"""Same-field duplicate detection (wbc.data.duplicates) on synthetic slides."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from benchmarks.crops import CLASSES, COPY_KINDS, crop_image, write_crop_folders
from wbc.data import duplicates
from wbc.data.duplicates import (
    CANDIDATES,
    PairMatch,
    _key_bits,
    _match,
    _prepare,
    _Spill,
    find_duplicates,
    group_ids,
    is_duplicate,
    match_candidates,
)


def slide(seed: int, height: int = 420, width: int = 560) -> np.ndarray:
    """A synthetic smear bigger than one photo: pink red cells with pale centres, one WBC."""
    rng = np.random.default_rng(seed)
    image = np.full((height, width, 3), (222, 218, 212), np.uint8)
    for _ in range(110):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        radius = int(rng.integers(14, 24))
        tone = tuple(int(v) for v in rng.integers((190, 120, 130), (215, 150, 160)))
        cv2.circle(image, centre, radius, tone, -1, cv2.LINE_AA)
        cv2.circle(image, centre, radius, tuple(v - 40 for v in tone), 2, cv2.LINE_AA)
        cv2.circle(image, centre, max(3, radius // 3), (225, 200, 200), -1, cv2.LINE_AA)
    # The WBC near the middle: a lilac cell with a lobed purple nucleus.
    cy, cx = height // 2, width // 2
    cv2.circle(image, (cx, cy), 46, (205, 185, 215), -1, cv2.LINE_AA)
    for dx, dy in ((-14, -8), (10, -12), (16, 12), (-8, 14)):
        cv2.circle(image, (cx + dx, cy + dy), 13, (110, 60, 180), -1, cv2.LINE_AA)
    noise = rng.normal(0, 3, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def view(field: np.ndarray, x: int, y: int, angle: float = 0.0, size=(240, 320)) -> np.ndarray:
    """A photo of ``field``: a window at (x, y), optionally rotated about the slide centre."""
    if angle:
        h, w = field.shape[:2]
        rotation = cv2.getRotationMatrix2D((w / 2, h / 2), angle, 1.0)
        field = cv2.warpAffine(field, rotation, (w, h), borderMode=cv2.BORDER_REFLECT)
    return np.ascontiguousarray(field[y : y + size[0], x : x + size[1]])


def save(folder: Path, image_id: int, image: np.ndarray) -> Path:
    path = folder / f"BloodImage_{image_id:05d}.jpg"
    Image.fromarray(image).save(path, quality=92)
    return path


def test_a_shifted_and_rotated_copy_is_found_and_other_fields_are_not(tmp_path):
    field = slide(1)
    images = {
        3: save(tmp_path, 3, view(field, 110, 80)),
        8: save(tmp_path, 8, view(field, 140, 100, angle=3.0)),  # shifted 30/20 px, 3 degrees
    }
    for image_id, seed in ((1, 2), (5, 3), (6, 4), (9, 5)):
        images[image_id] = save(tmp_path, image_id, view(slide(seed), 120, 90))
    pairs = find_duplicates(images)
    assert [(a, b) for a, b, _ in pairs] == [(3, 8)]
    assert pairs[0][2] >= 20


def test_two_different_images_are_not_a_pair(tmp_path):
    images = {
        1: save(tmp_path, 1, view(slide(10), 120, 90)),
        2: save(tmp_path, 2, view(slide(11), 120, 90)),
    }
    assert find_duplicates(images) == []


def test_unreadable_and_single_images_give_no_pairs(tmp_path):
    bad = tmp_path / "BloodImage_00002.jpg"
    bad.write_bytes(b"not a jpeg")
    good = save(tmp_path, 1, view(slide(12), 100, 100))
    assert find_duplicates({1: good, 2: bad}) == []
    assert find_duplicates({1: good}) == []
    assert find_duplicates({}) == []


def test_the_rule_needs_every_piece_of_evidence():
    strong = PairMatch(inliers=50, correlation=0.9, overlap=0.6, same_cell=True, transform=None)
    assert is_duplicate(strong)
    assert is_duplicate(PairMatch(50, 0.9, 0.6, None, None))  # no cell detected: field decides
    assert not is_duplicate(PairMatch(50, 0.9, 0.6, False, None))  # overlap without the cell
    assert not is_duplicate(PairMatch(50, 0.1, 0.6, True, None))  # dust-like chance transform
    assert not is_duplicate(PairMatch(3, 0.9, 0.6, True, None))
    assert not is_duplicate(PairMatch(50, 0.9, 0.6, True, None), min_inliers=60)
    # Two crops: one cell fills both frames, so outlines alone correlate at up to 0.43.
    assert is_duplicate(PairMatch(6, 0.87, 0.9, True, None, crops=True))
    assert not is_duplicate(PairMatch(6, 0.43, 0.9, True, None, crops=True))
    assert is_duplicate(PairMatch(6, 0.43, 0.9, True, None))  # the smears' rule


@pytest.mark.parametrize(
    "pairs, expected",
    [
        ([], {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 6}),
        ([(1, 2), (2, 3)], {1: 1, 2: 1, 3: 1, 4: 4, 5: 5, 6: 6}),  # transitive
        ([(3, 2, 9.0), (5, 4, 7.0), (4, 2, 8.0)], {1: 1, 2: 2, 3: 2, 4: 2, 5: 2, 6: 6}),
        ([(6, 1), (1, 99)], {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 1}),  # unknown ids are ignored
    ],
)
def test_group_ids(pairs, expected):
    assert group_ids([6, 5, 4, 3, 2, 1], pairs) == expected


# --------------------------------------------------------------------------- a lab's crops


def crop_folder(tmp_path: Path, n: int = 16) -> dict[str, Path]:
    """``n`` distinct generated 120x120 crops in class folders, ids = relative paths."""
    images = {}
    for index in range(n):
        cls = CLASSES[index % len(CLASSES)]
        (tmp_path / cls).mkdir(exist_ok=True)
        path = tmp_path / cls / f"{index:03d}.bmp"
        Image.fromarray(crop_image(7, index, cls)).save(path)
        images[f"{cls}/{path.name}"] = path
    return images


def test_copies_of_a_crop_are_found_and_distinct_cells_are_not_paired(tmp_path):
    images = crop_folder(tmp_path)
    original = Image.open(images["MONOCYTE/002.bmp"])
    copies = tmp_path / "copies"
    copies.mkdir()
    shutil.copyfile(images["MONOCYTE/002.bmp"], copies / "same-bytes.bmp")
    original.save(copies / "reencoded.jpg", quality=75)
    original.resize((96, 96), Image.LANCZOS).save(copies / "smaller.png")
    original.resize((150, 150), Image.BICUBIC).save(copies / "larger.jpg", quality=90)
    for path in sorted(copies.iterdir()):
        images[f"copies/{path.name}"] = path
    found = find_duplicates(images)
    group = sorted(["MONOCYTE/002.bmp", *(f"copies/{p.name}" for p in copies.iterdir())])
    assert {(a, b) for a, b, _ in found} == {
        (a, b) for i, a in enumerate(group) for b in group[i + 1 :]
    }
    assert all(inliers >= 20 for _, _, inliers in found)
    groups = group_ids(sorted(images), found)
    assert {i for i, g in groups.items() if g == "MONOCYTE/002.bmp"} == set(group)


def test_planted_copies_in_a_generated_class_folder_set(tmp_path):
    made = write_crop_folders(tmp_path, 28, seed=3, duplicates=0.3)
    kinds = {kind for _, _, kind in made.pairs}
    assert kinds == set(COPY_KINDS)  # a byte copy, re-encoded, resized and cropped-again copy
    images = {p.relative_to(tmp_path).as_posix(): p for p in made.paths}
    planted = {
        tuple(sorted(p.relative_to(tmp_path).as_posix() for p in pair[:2])) for pair in made.pairs
    }
    found = {(a, b) for a, b, _ in find_duplicates(images)}
    assert planted <= found
    groups = group_ids(sorted(images), planted)  # two copies of one crop are a pair as well
    assert all(groups[a] == groups[b] for a, b in found)


def test_many_copies_of_one_crop_are_one_group(tmp_path):
    """More copies than a hash bucket holds: their descriptors cast no votes, the digest
    still sends every copy to matching."""
    images = crop_folder(tmp_path, 4)
    for copy in range(20):
        path = tmp_path / f"copy{copy:02d}.bmp"
        shutil.copyfile(images["NEUTROPHIL/003.bmp"], path)
        images[path.name] = path
    groups = group_ids(sorted(images), find_duplicates(images))
    copies = {i for i, g in groups.items() if g == groups["NEUTROPHIL/003.bmp"]}
    assert copies == {"NEUTROPHIL/003.bmp", *(f"copy{c:02d}.bmp" for c in range(20))}


def test_the_candidates_grow_with_the_images_not_with_the_pairs(tmp_path):
    images = crop_folder(tmp_path, 24)
    assert len(match_candidates(images)) <= len(images) * CANDIDATES  # all pairs: 276


def test_votes_counted_on_disk_give_the_same_candidates(tmp_path, monkeypatch):
    images = crop_folder(tmp_path, 12)
    shutil.copyfile(images["EOSINOPHIL/004.bmp"], tmp_path / "copy.bmp")
    images["copy.bmp"] = tmp_path / "copy.bmp"
    in_memory = match_candidates(images)
    monkeypatch.setattr(duplicates, "_VOTE_BYTES", 4096)  # a large set's votes: split by pair
    on_disk = match_candidates(images)
    assert set(on_disk) == set(in_memory) and ("EOSINOPHIL/004.bmp", "copy.bmp") in on_disk


def test_the_hash_key_grows_one_bit_per_doubling():
    assert _key_bits(2**20) == _key_bits(2**19) + 1
    assert _key_bits(0) == _key_bits(1) == 16  # never so short that every bucket is full


def test_the_spill_gives_back_what_matching_needs():
    rgb = np.ascontiguousarray(view(slide(20), 100, 80))
    image = _prepare(rgb)
    spill = _Spill()
    try:
        again = spill.get(spill.put(image), image.cells)
    finally:
        spill.close()
    assert np.array_equal(again.gray, image.gray)
    assert np.array_equal(again.points, image.points)
    assert np.array_equal(again.descriptors, image.descriptors)
    assert np.array_equal(again.highpass, image.highpass)
    assert _match(image, image).inliers == _match(again, again).inliers > 20


def test_group_ids_takes_any_sortable_ids():
    ids = ["b/2.png", "a/1.png", "c/3.png"]
    assert group_ids(ids, [("c/3.png", "b/2.png", 9.0)]) == {
        "a/1.png": "a/1.png",
        "b/2.png": "b/2.png",
        "c/3.png": "b/2.png",
    }
