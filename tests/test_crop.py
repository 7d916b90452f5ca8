"""WBC boxes and crops (wbc.data.cells) and the crop stage (wbc.data.stages.crop), on synthetic
images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wbc.core.config import load_config
from wbc.core.errors import DataError
from wbc.core.manifest import run_stage
from wbc.data.cells import (
    center_box,
    crop_cells,
    crop_image,
    crop_square,
    detect_cells,
    detect_or_center,
    find_boxes,
    iou,
    read_voc_boxes,
    square_box,
)
from wbc.data.stages.crop import crop, read_boxes_csv

from conftest import CLASSES, synthetic_smear, voc_xml


def exclusive(box):
    """conftest boxes are inclusive at the far end; wbc boxes are exclusive."""
    return (box[0], box[1], box[2] + 1, box[3] + 1)


def cropped_cell(rng: np.random.Generator, size: int = 120) -> tuple[np.ndarray, tuple]:
    """A single-cell crop: a lilac cell filling most of the frame, a purple nucleus inside."""
    image = np.empty((size, size, 3), np.float64)
    image[:] = (226, 221, 214)  # pale background
    yy, xx = np.mgrid[:size, :size]
    cy, cx, r = size / 2 + 3, size / 2 - 2, size * 0.40
    cell = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
    image[cell] = (206, 186, 214)  # cytoplasm
    nucleus = ((yy - cy + 4) / (r * 0.55)) ** 2 + ((xx - cx - 3) / (r * 0.65)) ** 2 <= 1
    image[nucleus] = (112, 72, 186)
    image += rng.normal(0, 4, image.shape)
    ys, xs = np.nonzero(cell)
    return np.clip(image, 0, 255).astype(np.uint8), (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)


# ----------------------------------------------------------------------------- detector


@pytest.mark.parametrize("cls", CLASSES)
@pytest.mark.parametrize("size", [(48, 64), (240, 320)])
def test_detector_finds_the_blob_on_synthetic_smears(cls, size):
    rng = np.random.default_rng([7, CLASSES.index(cls), size[0]])
    for _ in range(4):
        image, box = synthetic_smear(cls, rng, size)
        found = detect_cells(image)
        assert found, "nothing detected"
        assert iou(found[0], exclusive(box)) > 0.5


def test_detector_handles_an_already_cropped_cell():
    rng = np.random.default_rng(3)
    for size in (96, 256):
        image, cell = cropped_cell(rng, size)
        found = detect_cells(image)
        assert found and iou(found[0], cell) > 0.5


def test_detector_ranks_the_bigger_cell_first_and_finds_both():
    rng = np.random.default_rng(5)
    image, small_box = synthetic_smear("NEUTROPHIL", rng, (240, 320))
    yy, xx = np.mgrid[:240, :320]
    # A second, bigger purple cell on the other side of the frame.
    cx = 50 if (small_box[0] + small_box[2]) / 2 > 160 else 270
    big = ((yy - 120) / 36.0) ** 2 + ((xx - cx) / 36.0) ** 2 <= 1
    image[big] = (95, 40, 140)
    found = detect_cells(image)
    assert len(found) == 2
    assert abs((found[0][0] + found[0][2]) / 2 - cx) < 10  # the big one first
    assert iou(found[1], exclusive(small_box)) > 0.5


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((100, 120, 3), np.uint8),
        np.full((100, 120, 3), 255, np.uint8),
        np.full((100, 120, 3), (95, 40, 140), np.uint8),  # uniform stain colour: no object
        np.full((480, 640, 3), (228, 190, 200), np.uint8),
        np.zeros((4, 4, 3), np.uint8),
        np.zeros((0, 0, 3), np.uint8),
        np.zeros((100, 100), np.uint8),  # grayscale: no stain information
        np.zeros((100, 100, 2), np.uint8),
    ],
)
def test_detector_returns_nothing_on_blank_or_odd_images(image):
    assert detect_cells(image) == []


def test_detector_survives_noise_float_and_rgba():
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    for box in detect_cells(noise):
        assert 0 <= box[0] < box[2] <= 80 and 0 <= box[1] < box[3] <= 60
    image, box = synthetic_smear("EOSINOPHIL", rng, (120, 160))
    as_float = detect_cells(image.astype(np.float32) / 255.0)
    assert as_float and iou(as_float[0], exclusive(box)) > 0.5
    rgba = np.dstack([image, np.full(image.shape[:2], 255, np.uint8)])
    assert detect_cells(rgba) == detect_cells(image)
    assert detect_cells(np.full((50, 50, 3), np.nan, np.float32)) == []


# ----------------------------------------------------------------------------- boxes and crops


def test_square_box_is_square_and_stays_inside():
    rng = np.random.default_rng(1)
    for _ in range(500):
        height, width = (int(v) for v in rng.integers(20, 400, 2))
        x0, x1 = sorted(int(v) for v in rng.integers(0, width + 1, 2))
        y0, y1 = sorted(int(v) for v in rng.integers(0, height + 1, 2))
        box = (x0, y0, max(x1, x0 + 1), max(y1, y0 + 1))
        padding = float(rng.uniform(0, 0.5))
        sx0, sy0, sx1, sy1 = square_box(box, padding, (height, width))
        side = sx1 - sx0
        assert side == sy1 - sy0 >= max(box[2] - box[0], box[3] - box[1])
        if side <= width:
            assert 0 <= sx0 and sx1 <= width
            assert sx0 <= box[0] or sx1 >= box[2]  # shifted, not shrunk
        else:
            assert sx0 <= 0 and sx1 >= width
        if side <= height:
            assert 0 <= sy0 and sy1 <= height
        else:
            assert sy0 <= 0 and sy1 >= height


def test_square_box_centres_the_cell_when_it_fits():
    assert square_box((100, 100, 140, 120), 0.25, (480, 640)) == (90, 80, 150, 140)


def test_crop_square_shape_and_edge_replication():
    image = np.zeros((60, 80, 3), np.uint8)
    image[:, :40] = 200
    out = crop_square(image, (0, 0, 80, 60), 0.5, 32)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert crop_square(image, (10, 10, 20, 20), 0.15, 224).shape == (224, 224, 3)
    # A square far bigger than the image is filled from the edges, not with black.
    assert out[0, 0].tolist() == [200, 200, 200] and out[-1, -1].tolist() == [0, 0, 0]


def test_center_box():
    assert center_box((480, 640)) == (80, 0, 560, 480)
    assert center_box((100, 50)) == (0, 25, 50, 75)


def test_crop_image_modes():
    rng = np.random.default_rng(2)
    image, box = synthetic_smear("MONOCYTE", rng, (120, 160))
    assert crop_image(image, "none", 0.1, 64)[0] is image
    given = [(5, 5, 25, 25), (40, 30, 100, 90)]
    crops = crop_cells(image, "boxes", 0.1, 64, given, every=True)
    assert [c.box for c in crops] == [given[1], given[0]]  # largest first
    assert all(c.source == "boxes" and c.image.shape == (64, 64, 3) for c in crops)
    assert len(crop_cells(image, "boxes", 0.1, 64, given)) == 1  # the main cell only
    fallback = crop_cells(image, "boxes", 0.1, 64, [])
    assert fallback[0].source == "detect" and iou(fallback[0].box, exclusive(box)) > 0.5
    assert len(crop_image(image, "detect", 0.1, 48)) == 1
    blank = np.full((120, 160, 3), 230, np.uint8)
    (centre,) = crop_cells(blank, "detect", 0.1, 48)
    assert centre.source == "centre" and centre.box == (20, 0, 140, 120)
    assert detect_or_center(blank) == ((20, 0, 140, 120), False)
    assert detect_or_center(image)[1] is True
    assert find_boxes(image, "boxes", [(-10, -10, 500, 500)])[0] == [(0, 0, 160, 120)]
    with pytest.raises(ValueError):
        find_boxes(image, "auto")


# ----------------------------------------------------------------------------- VOC


def test_read_voc_boxes(tmp_path):
    xml = tmp_path / "a.xml"
    xml.write_text(
        voc_xml("a.jpg", 640, 480, [(260, 177, 491, 376), (1, 1, 50, 60)]).replace(
            "</annotation>",
            "<object><name>RBC</name><bndbox><xmin>10</xmin><ymin>10</ymin><xmax>20</xmax>"
            "<ymax>20</ymax></bndbox></object></annotation>",
        )
    )
    assert read_voc_boxes(xml) == [(259, 176, 491, 376), (0, 0, 50, 60)]
    assert read_voc_boxes(xml, name="RBC") == [(9, 9, 20, 20)]
    assert read_voc_boxes(xml, name="Platelets") == []
    assert read_voc_boxes(tmp_path / "missing.xml") == []


def test_read_voc_boxes_errors_name_the_file(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<annotation><object><name>WBC</name>")
    with pytest.raises(DataError, match="broken.xml: malformed annotation XML"):
        read_voc_boxes(broken)
    bad = tmp_path / "bad.xml"
    bad.write_text(
        "<annotation><object><name>WBC</name><bndbox><xmin>a</xmin><ymin>1</ymin>"
        "<xmax>5</xmax><ymax>5</ymax></bndbox></object></annotation>"
    )
    with pytest.raises(DataError, match="bad.xml"):
        read_voc_boxes(bad)


# ----------------------------------------------------------------------------- crop stage


def fake_renamed(folder: Path, n: int = 6, blank_ids=(), box_rows=None) -> Path:
    """A rename-stage output: CLASS.ID.jpg, boxes.csv and a manifest, made with run_stage."""
    rng = np.random.default_rng(11)
    truth = {}

    def build(tmp: Path) -> dict:
        for image_id in range(n):
            cls = CLASSES[image_id % 4]
            image, box = synthetic_smear(cls, rng, (120, 160))
            if image_id in blank_ids:
                image = np.full_like(image, 225)
            truth[image_id] = exclusive(box)
            Image.fromarray(image).save(tmp / f"{cls}.{image_id}.jpg", quality=95)
        rows = (
            box_rows
            if box_rows is not None
            else [[i, *truth[i]] for i in range(n) if i % 2 == 0 and i not in blank_ids]
        )
        with open(tmp / "boxes.csv", "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "xmin", "ymin", "xmax", "ymax"])
            writer.writerows(rows)
        (tmp / "skipped.csv").write_text("id,file,reason\n")
        return {"kept": n}

    run_stage("rename", folder, {"test": True}, {}, build, force=True)
    return folder


def read_crops_csv(folder: Path) -> list[dict]:
    with open(folder / "crops.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def test_crop_stage_boxes_mode(tmp_path):
    src = fake_renamed(tmp_path / "renamed", n=6, blank_ids=(5,))
    config = load_config(overrides=["crop.mode=boxes", "crop.size=64"])
    manifest = crop(src, tmp_path / "cropped", config)
    names = sorted(p.name for p in (tmp_path / "cropped").glob("*.jpg"))
    assert names == sorted(p.name for p in src.glob("*.jpg"))
    for name in names:
        assert Image.open(tmp_path / "cropped" / name).size == (64, 64)
    summary = manifest.summary
    assert summary["images"] == 6
    assert (summary["from_boxes"], summary["detected"], summary["fallback_centre"]) == (3, 2, 1)
    rows = read_crops_csv(tmp_path / "cropped")
    assert [r["source"] for r in sorted(rows, key=lambda r: int(r["id"]))] == [
        "boxes",
        "detect",
        "boxes",
        "detect",
        "boxes",
        "centre",
    ]
    saved = json.loads((tmp_path / "cropped" / "manifest.json").read_text())
    assert saved["inputs"]["renamed"] and saved["params"]["mode"] == "boxes"
    assert "crops.csv" in saved["outputs"]


def test_crop_stage_skips_a_current_rerun_and_redoes_on_change(tmp_path):
    src = fake_renamed(tmp_path / "renamed", n=4)
    config = load_config(overrides=["crop.mode=detect", "crop.size=48"])
    first = crop(src, tmp_path / "cropped", config)
    assert not first.skipped and first.summary["detected"] == 4
    assert crop(src, tmp_path / "cropped", config).skipped
    changed = load_config(overrides=["crop.mode=detect", "crop.size=48", "crop.padding=0.3"])
    assert not crop(src, tmp_path / "cropped", changed).skipped
    assert crop(src, tmp_path / "cropped", changed, force=True).skipped is False
    fake_renamed(src, n=5)  # new upstream output: a new digest
    again = crop(src, tmp_path / "cropped", changed)
    assert not again.skipped and again.summary["images"] == 5


def test_crop_stage_uses_the_largest_of_two_boxes(tmp_path):
    rows = [[0, 0, 0, 10, 10], [0, 20, 20, 100, 90]]
    src = fake_renamed(tmp_path / "renamed", n=1, box_rows=rows)
    crop(src, tmp_path / "cropped", load_config(overrides=["crop.mode=boxes"]))
    (row,) = read_crops_csv(tmp_path / "cropped")
    got = (row["source"], row["x0"], row["y0"], row["x1"], row["y1"])
    assert got == ("boxes", "20", "20", "100", "90")


def test_crop_stage_errors(tmp_path):
    config = load_config(overrides=["crop.mode=boxes"])
    with pytest.raises(DataError, match="rename"):
        crop(tmp_path / "nowhere", tmp_path / "cropped", config)
    src = fake_renamed(tmp_path / "renamed", n=2)
    (src / "boxes.csv").write_text("id,xmin\n1,2\n")
    with pytest.raises(DataError, match="boxes.csv: missing column"):
        crop(src, tmp_path / "cropped", config)
    assert not (tmp_path / "cropped").exists()
    other = tmp_path / "other.csv"
    other.write_text("id,xmin,ymin,xmax,ymax\n0,1,2,30,40\n0,x,1,1,1\n")
    with pytest.raises(DataError, match="line 3"):
        read_boxes_csv(other)


def test_crop_stage_reframes_a_loose_crop_and_keeps_a_tight_one_whole(tmp_path):
    """Crops from another lab frame their cell in their own way: one with a much wider margin
    (the cell a quarter of the side, as in CellaVision crops) is re-cut around its cell, so
    every crop frames its cell as the crop stage does; a crop framed about as wbc frames is
    kept whole."""
    folder = tmp_path / "renamed"

    def cell_on_background(side: int, radius: int) -> np.ndarray:
        image = np.full((side, side, 3), (228, 190, 200), np.uint8)
        yy, xx = np.mgrid[:side, :side]
        image[(yy - side // 2) ** 2 + (xx - side // 2) ** 2 <= radius**2] = (95, 40, 140)
        return image

    def build(tmp: Path) -> dict:
        loose, tight = cell_on_background(160, 20), cell_on_background(52, 20)
        Image.fromarray(loose).save(tmp / "MONOCYTE.1.jpg", quality=95)
        Image.fromarray(tight).save(tmp / "MONOCYTE.2.jpg", quality=95)
        (tmp / "boxes.csv").write_text("id,xmin,ymin,xmax,ymax\n")
        (tmp / "skipped.csv").write_text("id,file,reason\n")
        return {"kept": 2}

    run_stage("rename", folder, {"test": True}, {}, build, force=True)
    manifest = crop(folder, tmp_path / "cropped", load_config(overrides=["crop.size=64"]))
    assert (manifest.summary["reframed"], manifest.summary["kept_whole"]) == (1, 1)
    rows = {r["id"]: r for r in read_crops_csv(tmp_path / "cropped")}
    assert rows["1"]["source"] == "reframed" and rows["2"]["source"] == "whole"
    x0, x1 = int(rows["1"]["x0"]), int(rows["1"]["x1"])
    assert 36 <= x1 - x0 <= 48 and abs((x0 + x1) / 2 - 80) <= 3  # the cell's box, centred
    for name in ("MONOCYTE.1.jpg", "MONOCYTE.2.jpg"):
        pixels = np.asarray(Image.open(tmp_path / "cropped" / name).convert("RGB"))
        assert pixels.shape == (64, 64, 3)
        # Framed alike: the cell spans most of both crops, not a quarter of the loose one.
        dark = (pixels.astype(int).sum(axis=2) < 400).mean()
        assert dark > 0.25, name  # as is, the loose crop would be 0.05 cell


def test_a_crop_whose_cell_box_has_a_close_neighbour_is_kept_whole(monkeypatch):
    """A detected box with another one right beside it may be one lobe of a nucleus, or a
    nucleus without its cytoplasm: re-cutting around it would cut the cell, so the crop stays
    whole. A second cell far off does not stop the re-cut, nor does a box too big to re-cut
    around become one."""
    import wbc.data.cells as cells

    image = np.full((200, 200, 3), 200, np.uint8)
    found: list = []
    monkeypatch.setattr(cells, "detect_cells", lambda rgb, work_side=320: list(found))
    found[:] = [(85, 85, 115, 115)]
    assert cells.reframe_box(image, 0.15) == (85, 85, 115, 115)
    found[:] = [(85, 85, 115, 115), (118, 90, 140, 112)]  # a lobe beside it
    assert cells.reframe_box(image, 0.15) is None
    found[:] = [(85, 85, 115, 115), (170, 170, 195, 195)]  # another cell, far off
    assert cells.reframe_box(image, 0.15) == (85, 85, 115, 115)
    found[:] = [(40, 40, 140, 140)]  # padded, over half the side: framed about as wbc frames
    assert cells.reframe_box(image, 0.15) is None
    found[:] = []
    assert cells.reframe_box(image, 0.15) is None
