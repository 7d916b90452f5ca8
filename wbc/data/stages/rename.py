"""Stage 1, rename: keep the usable single-class images and copy them as ``CLASS.ID.jpg``.

Every dropped row or file is written to ``skipped.csv`` with its reason, so the counts can be
checked against labels.csv by hand. The raw folder is only read: plain RGB JPEGs are copied byte
for byte, other readable images (PNG under a .jpg name, CMYK, grayscale, 16-bit, RGBA, EXIF-rotated)
are converted to RGB JPEG. Same-field duplicates are found here, once, because every later
stage needs them: the grouped split keeps a group on one side, and a group whose images carry
different labels is dropped whole (one of the two labels must be wrong).
"""

from __future__ import annotations

import csv
import re
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from wbc.core.config import Config
from wbc.data.labels import read_labels
from wbc.data.raw import RawFolder, list_images, locate_raw
from wbc.core.errors import BadImage, DataError
from wbc.core.imageio import is_plain_rgb_jpeg, read_rgb, write_jpeg
from wbc.core.manifest import Manifest, run_stage, sha256_file
from wbc.data.stages.naming import original_name

STAGE = "rename"
MIN_SIDE = 16  # pixels: anything smaller cannot show a cell
_IMAGE_NAME = re.compile(r"^BloodImage_(\d+)\.jpe?g$", re.IGNORECASE)


def _raw_digest(raw: RawFolder) -> dict[str, str]:
    """Content hashes of everything the stage reads, so an edited raw file redoes the stage."""
    digests = {"labels.csv": sha256_file(raw.labels)}
    for path in list_images(raw.images):
        digests[f"JPEGImages/{path.name}"] = sha256_file(path)
    if raw.annotations is not None:
        for path in sorted(raw.annotations.glob("*.xml")):
            digests[f"Annotations/{path.name}"] = sha256_file(path)
    return digests


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)


def _select_rows(
    raw: RawFolder, classes: tuple[str, ...], skipped: list[list]
) -> tuple[dict[int, str], set[int]]:
    """Rows that name exactly one kept class and have a JPEG (id -> class), and all row ids."""
    chosen: dict[int, str] = {}
    seen: set[str] = set()
    rows = read_labels(raw.labels)
    # An id whose rows name different classes: no row can be trusted, so the image is skipped
    # (the first row winning would train it under a label that may be wrong).
    labels_of: dict[str, list] = {}
    for row in rows:
        labels_of.setdefault(row.raw_id, []).append(row)
    contradictions = {
        raw_id: " vs ".join(
            f"{', '.join(r.categories) or 'no label'} (line {r.line})" for r in id_rows
        )
        for raw_id, id_rows in labels_of.items()
        if len({tuple(r.categories) for r in id_rows}) > 1
    }
    for row in rows:
        if row.raw_id in seen:
            if row.raw_id not in contradictions:
                skipped.append([row.raw_id, "", f"duplicate row (line {row.line})"])
            continue
        seen.add(row.raw_id)
        if row.raw_id in contradictions and row.image_id is not None:
            skipped.append(
                [
                    row.image_id,
                    raw.image_path(row.image_id).name,
                    f"contradictory labels: {contradictions[row.raw_id]}",
                ]
            )
            continue
        if row.image_id is None:
            skipped.append([row.raw_id, "", f"id is not a number (line {row.line})"])
            continue
        if not row.categories:
            reason = "no label"
        elif len(row.categories) > 1:
            reason = "several classes: " + ", ".join(row.categories)
        elif row.categories[0] not in classes:
            reason = f"class {row.categories[0]} is not kept"
        elif not raw.image_path(row.image_id).is_file():
            reason = "no image file"
        else:
            chosen[row.image_id] = row.categories[0]
            continue
        skipped.append([row.image_id, raw.image_path(row.image_id).name, reason])
    return chosen, {row.image_id for row in rows if row.image_id is not None}


def _unlabelled_images(raw: RawFolder, labelled_ids: set[int], skipped: list[list]) -> None:
    for path in list_images(raw.images):
        match = _IMAGE_NAME.match(path.name)
        if not match:
            skipped.append(["", path.name, "unexpected file name (not BloodImage_NNNNN.jpg)"])
        elif int(match.group(1)) not in labelled_ids:
            skipped.append([int(match.group(1)), path.name, "no row in labels.csv"])


def _drop_conflicting_groups(
    chosen: dict[int, str], groups: dict[int, int], skipped: list[list], raw: RawFolder
) -> None:
    members: dict[int, list[int]] = {}
    for image_id, group in groups.items():
        members.setdefault(group, []).append(image_id)
    for ids in members.values():
        labels = {chosen[i] for i in ids}
        if len(labels) > 1:
            described = ", ".join(f"{i}={chosen[i]}" for i in sorted(ids))
            for image_id in sorted(ids):
                del chosen[image_id]
                skipped.append(
                    [
                        image_id,
                        raw.image_path(image_id).name,
                        f"same field as another image with a different label ({described})",
                    ]
                )


def rename(
    src: Path,
    dst: Path,
    config: Config,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Manifest:
    """Copy the usable images of the raw folder ``src`` to ``dst`` as ``CLASS.ID.jpg``."""
    raw = locate_raw(src)
    classes = tuple(c.upper() for c in config.rename.classes)
    params = {
        "classes": list(classes),
        "find_duplicates": config.rename.find_duplicates,
        "duplicate_min_inliers": config.rename.duplicate_min_inliers,
    }

    def build(tmp: Path) -> dict:
        skipped: list[list] = []
        chosen, label_ids = _select_rows(raw, classes, skipped)
        _unlabelled_images(raw, label_ids, skipped)

        readable: dict[int, str] = {}
        converted = []
        for image_id in sorted(chosen):
            path = raw.image_path(image_id)
            try:
                pixels = read_rgb(path)  # a full decode: a JPEG header can be fine, its data cut
                if min(pixels.shape[:2]) < MIN_SIDE:
                    raise BadImage(
                        path,
                        f"image too small ({pixels.shape[1]}x{pixels.shape[0]} "
                        f"pixels, need {MIN_SIDE})",
                    )
                if not is_plain_rgb_jpeg(path):
                    converted.append(image_id)
                readable[image_id] = chosen[image_id]
            except BadImage as exc:
                skipped.append([image_id, path.name, exc.reason])
        chosen = readable

        pairs: list[tuple[int, int, float]] = []
        groups: dict[int, int] = {}
        if config.rename.find_duplicates and len(chosen) > 1:
            from wbc.data.duplicates import find_duplicates, group_ids

            pairs = find_duplicates(
                {i: raw.image_path(i) for i in chosen}, config.rename.duplicate_min_inliers
            )
            every_group = group_ids(sorted(chosen), pairs)
            sizes = Counter(every_group.values())
            groups = {i: g for i, g in every_group.items() if sizes[g] > 1}
            _drop_conflicting_groups(chosen, groups, skipped, raw)

        for image_id, cls in sorted(chosen.items()):
            source = raw.image_path(image_id)
            target = tmp / original_name(cls, image_id)
            if image_id in converted:
                write_jpeg(read_rgb(source), target, quality=95)
            else:
                shutil.copyfile(source, target)

        _write_csv(tmp / "skipped.csv", ["id", "file", "reason"], skipped)
        _write_csv(
            tmp / "duplicates.csv",
            ["id_a", "id_b", "score"],
            [[a, b, round(score, 3)] for a, b, score in pairs],
        )
        _write_csv(
            tmp / "groups.csv",
            ["id", "group"],
            [[i, g] for i, g in sorted(groups.items()) if i in chosen],
        )
        _write_csv(
            tmp / "boxes.csv",
            ["id", "xmin", "ymin", "xmax", "ymax"],
            _boxes_rows(raw, sorted(chosen)),
        )

        counts = Counter(chosen.values())
        group_sizes = Counter(g for i, g in groups.items() if i in chosen)
        return {
            "counts": {cls: counts.get(cls, 0) for cls in classes},
            "kept": len(chosen),
            "skipped": len(skipped),
            "skipped_reasons": dict(Counter(_reason_kind(r[2]) for r in skipped)),
            "converted": converted,
            "duplicate_pairs": len(pairs),
            "duplicate_groups": sum(1 for size in group_sizes.values() if size > 1),
            "raw": str(raw.root),
        }

    inputs = {"raw": _raw_digest(raw)}
    return run_stage(STAGE, dst, params, inputs, build, force=force)


def _reason_kind(reason: str) -> str:
    return reason.split(":")[0].split("(")[0].strip()


def _boxes_rows(raw: RawFolder, ids: list[int]) -> list[list]:
    from wbc.data.cells import read_voc_boxes

    rows = []
    for image_id in ids:
        xml = raw.annotation_path(image_id)
        if xml is None or not xml.is_file():
            continue
        try:
            boxes = read_voc_boxes(xml)
        except DataError:
            continue  # a broken annotation only loses its box; crop.mode=boxes falls back to detect
        rows.extend([image_id, *box] for box in boxes)
    return rows
