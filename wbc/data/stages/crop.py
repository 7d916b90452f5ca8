"""Stage 1b, crop: a square crop around the WBC of every renamed image, as ``CLASS.ID.jpg``.

Why a stage of its own: cropping is the slow, data-dependent step (VOC boxes or the stain
detector) and everything downstream (augment, split, subsets) should see cell-centred images
without knowing how they were made. It runs only when ``crop.mode`` is not ``none``.

Input: the rename stage's flat folder (``CLASS.ID.jpg``, ``manifest.json``, ``boxes.csv`` with
one row ``id, xmin, ymin, xmax, ymax`` per VOC WBC box in ``wbc.data.cells`` box convention: 0-based,
``xmax``/``ymax`` exclusive). Output: one ``CLASS.ID.jpg`` per source image, ``crop.size``
pixels square, and ``crops.csv`` saying for each id which box was used and where it came from:

* mode ``boxes``: the largest VOC box of the image; the detector's best box when the image has
  no box; the centre square when neither finds anything;
* mode ``detect``: the detector's best box, else the centre square (VOC boxes are ignored, which
  is what predict sees on new images);
* mode ``none``: the images are copied unchanged (the pipeline normally skips the stage then).

Whatever the mode, an image that is already a single-cell crop (about square:
``wbc.data.cells.is_cell_crop``, the rule ``predict --input auto`` applies) is not searched as a
smear: a lab's folder may mix whole-field smears and crops, decided image by image. A crop with a
much wider margin than wbc's (``wbc.data.cells.reframe_box``: a CellaVision-style crop, the cell
a third of the side) is re-cut around its cell with ``crop.padding``, so that every crop frames
its cell alike; any other crop is kept whole, resized to the crop size.

The summary counts each source, so a detector that silently fails shows up as many 'centre'.
"""

from __future__ import annotations

import csv
import shutil

import cv2
from collections import Counter
from pathlib import Path

from wbc.core.config import Config
from wbc.data.cells import (
    CROP_ASPECT,
    DETECTOR_VERSION,
    MODES,
    REFRAME_LIMIT,
    Box,
    crop_cells,
    is_cell_crop,
    reframe_crop,
)
from wbc.core.errors import BadImage, ConfigError, DataError
from wbc.core.imageio import read_rgb, write_jpeg
from wbc.core.manifest import Manifest, run_stage, sha256_file, upstream
from wbc.core.progress import bar
from wbc.data.stages.naming import parse_name

STAGE = "crop"
BOXES_NAME = "boxes.csv"
CROPS_NAME = "crops.csv"
JPEG_QUALITY = 95


def read_boxes_csv(path: Path) -> dict[int, list[Box]]:
    """``boxes.csv`` as ``{id: [box, ...]}`` (ids without a row are absent)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = ("id", "xmin", "ymin", "xmax", "ymax")
            missing = [c for c in columns if c not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
            boxes: dict[int, list[Box]] = {}
            for line, row in enumerate(reader, start=2):
                try:
                    image_id = int(row["id"])
                    box = tuple(int(round(float(row[c]))) for c in columns[1:])
                except (TypeError, ValueError):
                    raise DataError(f"{path}: line {line}: id and box must be numbers") from None
                boxes.setdefault(image_id, []).append(box)  # type: ignore[arg-type]
    except FileNotFoundError:
        raise DataError(f"{path}: not found; rerun `wbc prepare --stage rename`") from None
    except UnicodeDecodeError:
        raise DataError(f"{path}: not a UTF-8 CSV file") from None
    return boxes


def _sources(src: Path) -> list[tuple[str, int, Path]]:
    """The original ``CLASS.ID.jpg`` files of ``src`` as (name, id, path), sorted by name."""
    found = []
    for path in sorted(Path(src).iterdir()):
        parsed = parse_name(path.name)
        if parsed is not None and parsed.copy is None and path.is_file():
            found.append((path.name, parsed.source_id, path))
    return found


def crop(
    src: Path,
    dst: Path,
    config: Config,
    boxes_csv: Path | None = None,
    force: bool = False,
) -> Manifest:
    """Crop every ``CLASS.ID.jpg`` of ``src`` around its WBC into ``dst``."""
    src, dst = Path(src), Path(dst)
    settings = config.crop
    if settings.mode not in MODES:
        raise ConfigError(f"crop.mode: '{settings.mode}' is not one of {', '.join(MODES)}")
    renamed = upstream(src, "rename")
    params = {
        "mode": settings.mode,
        "padding": settings.padding,
        "size": settings.size,
        "detector": DETECTOR_VERSION,
        "jpeg_quality": JPEG_QUALITY,
        "whole_if_aspect_within": CROP_ASPECT,
        "reframe_within": REFRAME_LIMIT,
    }
    inputs: dict[str, str] = {"renamed": renamed.digest}
    boxes_path = Path(boxes_csv) if boxes_csv is not None else src / BOXES_NAME
    if settings.mode == "boxes" and boxes_csv is not None:
        # A boxes file from elsewhere is not covered by the rename digest: hash it too.
        try:
            inputs["boxes"] = sha256_file(boxes_path)
        except FileNotFoundError:
            raise DataError(f"{boxes_path}: not found") from None

    def build(tmp: Path) -> dict:
        files = _sources(src)
        if settings.mode == "none":
            for name, _, path in files:
                shutil.copyfile(path, tmp / name)
            return {"mode": "none", "images": len(files), "copied": len(files)}

        boxes = read_boxes_csv(boxes_path) if settings.mode == "boxes" else {}
        counts: Counter[str] = Counter()
        unreadable: list[str] = []
        rows: list[list] = []
        with bar(len(files), f"crop ({settings.mode})", unit="image") as shown:
            for name, image_id, path in files:
                shown.update(1)
                try:
                    rgb = read_rgb(path)
                except BadImage as exc:
                    unreadable.append(f"{name}: {exc.reason}")
                    continue
                if is_cell_crop(rgb.shape):
                    height, width = rgb.shape[:2]
                    recut = reframe_crop(rgb, settings.padding, settings.size)
                    if recut is not None:
                        write_jpeg(recut.image, tmp / name, quality=JPEG_QUALITY)
                        counts[recut.source] += 1
                        rows.append([image_id, recut.source, *recut.box])
                        continue
                    whole = cv2.resize(
                        rgb, (settings.size, settings.size), interpolation=cv2.INTER_AREA
                        if min(height, width) > settings.size else cv2.INTER_LINEAR
                    )
                    write_jpeg(whole, tmp / name, quality=JPEG_QUALITY)
                    counts["whole"] += 1
                    rows.append([image_id, "whole", 0, 0, width, height])
                    continue
                (cell,) = crop_cells(
                    rgb, settings.mode, settings.padding, settings.size, boxes.get(image_id)
                )
                write_jpeg(cell.image, tmp / name, quality=JPEG_QUALITY)
                counts[cell.source] += 1
                rows.append([image_id, cell.source, *cell.box])
        with open(tmp / CROPS_NAME, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "source", "x0", "y0", "x1", "y1"])
            writer.writerows(rows)
        return {
            "mode": settings.mode,
            "images": len(rows),
            "from_boxes": counts["boxes"],
            "detected": counts["detect"],
            "fallback_centre": counts["centre"],
            "kept_whole": counts["whole"],
            "reframed": counts["reframed"],
            "unreadable": unreadable,
        }

    return run_stage(STAGE, dst, params, inputs, build, force=force)
