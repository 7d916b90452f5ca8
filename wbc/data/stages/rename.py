"""Stage 1, rename: keep the usable single-class images and copy them as ``CLASS.ID.jpg``.

It reads the three raw layouts of ``wbc.data.layouts``: the Kaggle ``dataset-master`` (below, as
the study had it) and a lab's own class folders or CSV (``rename_lab``: names kept, sanitised,
as ``CLASS.ID-STEM.jpg``, and ``sources.csv`` maps every id back to its file).

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

from wbc.core.config import CLASSES, Config
from wbc.data.labels import read_labels
from wbc.data.raw import RawFolder, list_images, locate_raw
from wbc.core.errors import BadImage, DataError
from wbc.core.imageio import is_plain_rgb_jpeg, read_rgb, write_jpeg
from wbc.core.manifest import Manifest, run_stage, sha256_file, sha256_json
from wbc.data.stages.naming import original_name, sanitise_stem

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
    chosen: dict[int, str],
    groups: dict[int, int],
    skipped: list[list],
    file_of: Callable[[int], str],
    key_of: Callable[[int], str] = str,
) -> None:
    """Same-field duplicates whose labels differ: one of the labels is wrong, so none is kept.
    ``file_of``: the file an id names in skipped.csv; ``key_of``: how the reason names it."""
    members: dict[int, list[int]] = {}
    for image_id, group in groups.items():
        members.setdefault(group, []).append(image_id)
    for ids in members.values():
        labels = {chosen[i] for i in ids}
        if len(labels) > 1:
            described = ", ".join(f"{key_of(i)}={chosen[i]}" for i in sorted(ids))
            for image_id in sorted(ids):
                del chosen[image_id]
                skipped.append(
                    [
                        image_id,
                        file_of(image_id),
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
    from wbc.data.layouts import detect_layout

    if detect_layout(src) != "dataset-master":
        return rename_lab(src, dst, config, force=force, echo=echo)
    raw = locate_raw(src)
    classes = tuple(c.upper() for c in config.rename.classes or CLASSES)
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
            _drop_conflicting_groups(chosen, groups, skipped, lambda i: raw.image_path(i).name)

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
            "layout": "dataset-master",
            "classes": list(classes),
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


# ----------------------------------------------------------------------------- a lab's layout

MIN_SOURCES = 2  # per class: one for each side of the split


def _lab_classes(found: list[str], asked: tuple[str, ...], where: Path) -> list[str]:
    """The classes to keep, in order: those asked for (each must exist), else all found."""
    if not asked:
        return sorted(found)
    missing = [cls for cls in asked if cls not in found]
    if missing:
        raise DataError(
            f"{where}: no images of class {', '.join(missing)} asked for in rename.classes "
            f"(classes found: {', '.join(sorted(found)) or 'none'})"
        )
    return list(asked)


def _too_few(items: list, classes: list[str], split_given: bool) -> dict[str, int]:
    """Classes with fewer usable sources than the split needs, with their counts."""
    if split_given:  # the lab's split stands; a class needs one training image
        counts = Counter(item.label for _, item in items if item.side == "train")
        return {cls: counts.get(cls, 0) for cls in classes if counts.get(cls, 0) < 1}
    counts = Counter(item.label for _, item in items)
    return {cls: counts.get(cls, 0) for cls in classes if counts.get(cls, 0) < MIN_SOURCES}


def rename_lab(
    src: Path,
    dst: Path,
    config: Config,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Manifest:
    """A lab's class folders or CSV -> ``dst/CLASS.ID-STEM.jpg`` plus the stage's CSV files."""
    from wbc.data.layouts import class_name, read_listing

    listing = read_listing(src, config.rename)
    asked = tuple(class_name(c) or c for c in config.rename.classes)
    digests = {}
    for item in listing.items:
        try:
            digests[item.where] = sha256_file(item.path)
        except OSError as exc:
            digests[item.where] = f"unreadable: {exc.strerror}"
    params = {
        "layout": listing.kind,
        "classes": list(asked),
        "find_duplicates": config.rename.find_duplicates,
        "duplicate_min_inliers": config.rename.duplicate_min_inliers,
        "group_by_subfolder": config.rename.group_by_subfolder,
    }
    rows = [[i.where, i.label, i.group, i.side, digests[i.where]] for i in listing.items] + [
        [p.where, p.reason] for p in listing.problems
    ]
    inputs = {"raw": sha256_json(rows)}

    def build(tmp: Path) -> dict:
        skipped: list[list] = [["", p.where, p.reason] for p in listing.problems]
        classes = _lab_classes(sorted({i.label for i in listing.items}), asked, listing.root)
        kept = [i for i in listing.items if i.label in classes]
        skipped += [
            ["", i.where, f"class not kept: {i.label}"]
            for i in listing.items
            if i.label not in classes
        ]

        # The same bytes twice: under two classes no label can be trusted; under one, once.
        by_digest: dict[str, list] = {}
        for item in kept:
            by_digest.setdefault(digests[item.where], []).append(item)
        unique = []
        for item in kept:
            twins = by_digest[digests[item.where]]
            labels = sorted({t.label for t in twins})
            if digests[item.where].startswith("unreadable"):
                skipped.append(["", item.where, digests[item.where]])
            elif len(labels) > 1:
                others = ", ".join(f"{t.where} ({t.label})" for t in twins if t is not item)
                skipped.append(
                    [
                        "",
                        item.where,
                        f"same image under two classes: {' vs '.join(labels)}; also {others}",
                    ]
                )
            elif twins[0] is not item:
                skipped.append(["", item.where, f"same bytes as another file: {twins[0].where}"])
            else:
                unique.append(item)

        readable, converted = [], set()
        for item in unique:
            try:
                pixels = read_rgb(item.path)
                if min(pixels.shape[:2]) < MIN_SIDE:
                    raise BadImage(
                        item.path,
                        f"image too small ({pixels.shape[1]}x{pixels.shape[0]} pixels, "
                        f"need {MIN_SIDE})",
                    )
            except BadImage as exc:
                skipped.append(["", item.where, exc.reason])
                continue
            image_id = len(readable) + 1
            readable.append((image_id, item))
            if not is_plain_rgb_jpeg(item.path):
                converted.add(image_id)

        from wbc.data.duplicates import find_duplicates, group_ids

        chosen = {image_id: item.label for image_id, item in readable}
        by_id = dict(readable)
        pairs: list[tuple[int, int, float]] = []
        if config.rename.find_duplicates and len(chosen) > 1:
            pairs = find_duplicates(
                {i: item.path for i, item in readable}, config.rename.duplicate_min_inliers
            )

        def where(image_id: int) -> str:
            return by_id[image_id].where

        _drop_conflicting_groups(chosen, group_ids(sorted(chosen), pairs), skipped, where, where)
        groups = _lab_groups(chosen, pairs, by_id)

        items = [(i, by_id[i]) for i in sorted(chosen)]
        dropped = _too_few(items, classes, listing.split_given)
        need = "one training image" if listing.split_given else f"at least {MIN_SOURCES} images"
        for cls, count in dropped.items():
            if cls in asked:
                raise DataError(
                    f"{listing.root}: class {cls} (asked for in rename.classes) has {count} "
                    f"usable image(s); the split needs {need}"
                )
        for image_id, item in items:
            if item.label in dropped:
                del chosen[image_id]
                skipped.append([image_id, item.where, f"too few images in class: {item.label}"])
        classes = [cls for cls in classes if cls not in dropped]
        if len(classes) < 2:
            raise DataError(
                f"{listing.root}: {len(classes)} usable class(es) "
                f"({', '.join(classes) or 'none'}); a classifier needs two or more"
            )

        sources = []
        for image_id in sorted(chosen):
            item = by_id[image_id]
            target = tmp / original_name(item.label, image_id, sanitise_stem(item.path.stem))
            if image_id in converted:
                write_jpeg(read_rgb(item.path), target, quality=95)
            else:
                shutil.copyfile(item.path, target)
            sources.append(
                [image_id, item.label, target.name, item.where, item.group or "", item.side or ""]
            )

        _write_csv(tmp / "skipped.csv", ["id", "file", "reason"], skipped)
        _write_csv(
            tmp / "duplicates.csv",
            ["id_a", "id_b", "score"],
            [[a, b, round(score, 3)] for a, b, score in pairs if a in chosen and b in chosen],
        )
        _write_csv(
            tmp / "groups.csv",
            ["id", "group"],
            [[i, g] for i, g in sorted(groups.items()) if i in chosen],
        )
        _write_csv(tmp / "boxes.csv", ["id", "xmin", "ymin", "xmax", "ymax"], [])
        _write_csv(tmp / SOURCES_NAME, ["id", "class", "name", "source", "group", "side"], sources)
        if listing.split_given:
            _write_csv(
                tmp / GIVEN_SPLIT_NAME,
                ["id", "side"],
                [[i, by_id[i].side] for i in sorted(chosen)],
            )
        counts = Counter(chosen.values())
        group_sizes = Counter(g for i, g in groups.items() if i in chosen)
        return {
            "layout": listing.kind,
            "classes": classes,
            "dropped_classes": {
                cls: f"{count} usable image(s), the split needs {need}"
                for cls, count in dropped.items()
            },
            "counts": {cls: counts.get(cls, 0) for cls in classes},
            "kept": len(chosen),
            "skipped": len(skipped),
            "skipped_reasons": dict(Counter(_reason_kind(r[2]) for r in skipped)),
            "converted": len(converted & set(chosen)),
            "duplicate_pairs": len(pairs),
            "duplicate_groups": sum(1 for size in group_sizes.values() if size > 1),
            "groups_from": _groups_from(listing, config),
            "split_given": listing.split_given,
            "raw": str(listing.source or listing.root),
        }

    return run_stage(STAGE, dst, params, inputs, build, force=force)


SOURCES_NAME = "sources.csv"
GIVEN_SPLIT_NAME = "given_split.csv"


def _groups_from(listing, config: Config) -> str:
    if any(item.group for item in listing.items):
        return "CSV group column" if listing.kind == "csv" else "class sub-folders"
    return "same-field duplicates" if config.rename.find_duplicates else "none (every image alone)"


def _lab_groups(chosen: dict[int, str], pairs: list, by_id: dict) -> dict[int, int]:
    """Group of every image in a group of two or more: the layout's own groups (patient,
    slide) joined with the duplicates, so that neither can straddle the split."""
    from wbc.data.duplicates import group_ids

    links = [(a, b) for a, b, _ in pairs if a in chosen and b in chosen]
    first_of: dict[str, int] = {}
    for image_id in sorted(chosen):
        group = by_id[image_id].group
        if group:
            links.append((first_of.setdefault(group, image_id), image_id))
    every = group_ids(sorted(chosen), links)
    sizes = Counter(every.values())
    return {i: g for i, g in every.items() if sizes[g] > 1}
