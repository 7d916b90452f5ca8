import csv

import numpy as np
import pytest
from PIL import Image

from wbc.core.config import load_config
from wbc.core.errors import DataError
from wbc.data.stages.naming import parse_name
from wbc.data.stages.rename import rename

from conftest import tree_hash

NO_DUPES = ["rename.find_duplicates=false"]


def skipped_reasons(dst):
    with open(dst / "skipped.csv", newline="") as handle:
        return {row["id"]: row["reason"] for row in csv.DictReader(handle)}


def add_rows(raw, text):
    path = raw / "labels.csv"
    path.write_bytes(path.read_bytes() + text.encode())


def test_keeps_single_class_images_and_copies_them_byte_for_byte(tiny_raw, tmp_path):
    before = tree_hash(tiny_raw)
    manifest = rename(tiny_raw, tmp_path / "renamed", load_config(overrides=NO_DUPES))
    assert manifest.summary["counts"] == {
        "NEUTROPHIL": 12,
        "EOSINOPHIL": 8,
        "LYMPHOCYTE": 6,
        "MONOCYTE": 5,
    }
    files = sorted(p.name for p in (tmp_path / "renamed").glob("*.jpg"))
    assert len(files) == 31
    parsed = parse_name("NEUTROPHIL.0.jpg")
    assert parsed.cls == "NEUTROPHIL" and parsed.source_id == 0 and parsed.copy is None
    assert (tmp_path / "renamed" / "NEUTROPHIL.0.jpg").read_bytes() == (
        tiny_raw / "JPEGImages" / "BloodImage_00000.jpg"
    ).read_bytes()
    assert tree_hash(tiny_raw) == before


def test_every_dropped_row_and_file_has_a_reason(tiny_raw, tmp_path):
    images = tiny_raw / "JPEGImages"
    good = (images / "BloodImage_00000.jpg").read_bytes()
    (images / "BloodImage_00100.jpg").write_bytes(b"")  # zero bytes
    (images / "BloodImage_00101.jpg").write_bytes(good[: len(good) // 2])  # truncated
    (images / "BloodImage_00102.jpg").write_bytes(b"<html>not found</html>")  # HTML named .jpg
    for image_id in (103, 104, 105):
        (images / f"BloodImage_{image_id:05d}.jpg").write_bytes(good)
    (images / "BloodImage_00200.jpg").write_bytes(good)  # no row
    (images / "notes.txt").write_text("hello")
    add_rows(
        tiny_raw,
        "\r\n,100,NEUTROPHIL\r\n,101,NEUTROPHIL\r\n,102,MONOCYTE"
        '\r\n,103,BASOPHIL\r\n,104,\r\n,105,"NEUTROPHIL, EOSINOPHIL"\r\n,106,MONOCYTE'
        "\r\n,../../etc/passwd,MONOCYTE\r\n,0,EOSINOPHIL\r\n,1,NEUTROPHIL",
    )
    dst = tmp_path / "renamed"
    manifest = rename(tiny_raw, dst, load_config(overrides=NO_DUPES))
    reasons = skipped_reasons(dst)
    assert reasons["100"] == "empty file (0 bytes)"
    assert "truncated" in reasons["101"] or "corrupt" in reasons["101"]
    assert "not an image" in reasons["102"]
    assert reasons["103"] == "class BASOPHIL is not kept"
    assert reasons["104"] == "no label"
    assert reasons["105"] == "several classes: NEUTROPHIL, EOSINOPHIL"
    assert reasons["106"] == "no image file"
    assert reasons["../../etc/passwd"].startswith("id is not a number")
    assert reasons["200"] == "no row in labels.csv"
    # image 0 is NEUTROPHIL on its first row and EOSINOPHIL on a later one: neither is trusted
    assert reasons["0"].startswith("contradictory labels: NEUTROPHIL (line 2) vs EOSINOPHIL")
    assert not (dst / "NEUTROPHIL.0.jpg").exists() and not (dst / "EOSINOPHIL.0.jpg").exists()
    assert reasons["1"].startswith("duplicate row")  # the same label twice: kept once
    assert (dst / "NEUTROPHIL.1.jpg").exists()
    assert manifest.summary["kept"] == 30
    assert not any("etc" in p.name for p in dst.iterdir())


@pytest.mark.parametrize("mode", ["CMYK", "L", "RGBA", "PNG", "I;16"])
def test_readable_odd_images_are_converted_to_rgb_jpeg(tiny_raw, tmp_path, mode):
    path = tiny_raw / "JPEGImages" / "BloodImage_00000.jpg"
    rgb = Image.open(path).convert("RGB")
    if mode == "PNG":
        rgb.save(path, format="PNG")
    elif mode == "I;16":
        gray = np.asarray(rgb.convert("L"), dtype=np.uint16) * 257
        Image.fromarray(gray).save(path, format="PNG")
    elif mode == "RGBA":
        rgb.convert("RGBA").save(path, format="PNG")
    else:
        rgb.convert(mode).save(path, format="JPEG")
    manifest = rename(tiny_raw, tmp_path / "renamed", load_config(overrides=NO_DUPES))
    assert 0 in manifest.summary["converted"]
    with Image.open(tmp_path / "renamed" / "NEUTROPHIL.0.jpg") as out:
        assert out.format == "JPEG" and out.mode == "RGB"


def test_rerun_is_skipped_and_raw_change_redoes(tiny_raw, tmp_path):
    config = load_config(overrides=NO_DUPES)
    rename(tiny_raw, tmp_path / "r", config)
    assert rename(tiny_raw, tmp_path / "r", config).skipped
    add_rows(tiny_raw, "\r\n,999,NEUTROPHIL")
    assert not rename(tiny_raw, tmp_path / "r", config).skipped


def test_boxes_are_recorded_from_the_annotations(tiny_raw, tmp_path):
    rename(tiny_raw, tmp_path / "r", load_config(overrides=NO_DUPES))
    with open(tmp_path / "r" / "boxes.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 31
    assert {"id", "xmin", "ymin", "xmax", "ymax"} <= set(rows[0])


def test_same_field_pairs_are_grouped_and_conflicting_labels_dropped(tiny_raw, tmp_path):
    images = tiny_raw / "JPEGImages"
    # Image 1 (a neutrophil) photographed again as 300 and 301, with a small shift.
    field = np.asarray(Image.open(images / "BloodImage_00001.jpg").convert("RGB"))
    big = np.asarray(Image.fromarray(field).resize((256, 192)))
    Image.fromarray(big).save(images / "BloodImage_00001.jpg", quality=95)
    Image.fromarray(np.roll(big, 3, axis=1)).save(images / "BloodImage_00300.jpg", quality=95)
    # Image 2 photographed again as 301 but labelled differently.
    other = np.asarray(
        Image.open(images / "BloodImage_00002.jpg").convert("RGB").resize((256, 192))
    )
    Image.fromarray(other).save(images / "BloodImage_00002.jpg", quality=95)
    Image.fromarray(np.roll(other, 2, axis=0)).save(images / "BloodImage_00301.jpg", quality=95)
    add_rows(tiny_raw, "\r\n,300,NEUTROPHIL\r\n,301,MONOCYTE")
    dst = tmp_path / "r"
    manifest = rename(tiny_raw, dst, load_config(overrides=["rename.duplicate_min_inliers=15"]))
    with open(dst / "groups.csv", newline="") as handle:
        groups = {int(r["id"]): int(r["group"]) for r in csv.DictReader(handle)}
    assert groups.get(300) == groups.get(1) == 1
    reasons = skipped_reasons(dst)
    assert "different label" in reasons["2"] and "different label" in reasons["301"]
    assert manifest.summary["duplicate_groups"] >= 1


def test_missing_labels_is_a_data_error(tiny_raw, tmp_path):
    (tiny_raw / "labels.csv").unlink()
    with pytest.raises(DataError, match="no labels.csv found"):
        rename(tiny_raw, tmp_path / "r", load_config())


def test_header_only_labels(tiny_raw, tmp_path):
    (tiny_raw / "labels.csv").write_text(",Image,Category\r\n")
    with pytest.raises(DataError, match="header only"):
        rename(tiny_raw, tmp_path / "r", load_config())
    assert not (tmp_path / "r").exists()
