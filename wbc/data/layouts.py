"""A lab's own images: class folders or a CSV of file and label, listed for the rename stage.

Three layouts are read; ``detect_layout`` names the one a raw path holds:

- ``dataset-master``: the Kaggle folder (``labels.csv`` beside ``JPEGImages/``), read by
  ``wbc.data.raw`` and the rename stage as before;
- ``class-folders``: ``ROOT/CLASS/*`` (the layout of Keras' ``image_dataset_from_directory``,
  torchvision's ``ImageFolder``, PBC, Raabin-WBC), or ``ROOT/{train,val,test}/CLASS/*`` with the
  given split kept (val and test become the test side);
- ``csv``: a CSV of file and label (and optionally a group: patient, slide or smear), with paths
  relative to the CSV's folder; ``--raw`` names the CSV or a folder holding exactly one.

Reading never follows a symlink out of the root, never follows a symlinked folder (no loops),
and never stops at a bad item: each one becomes a ``Problem`` that the rename stage lists in
``skipped.csv``. Only a layout that cannot be used at all is a ``DataError``.
"""

from __future__ import annotations

import csv
import io
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from wbc.core.errors import DataError
from wbc.core.imageio import is_image_name

SPLIT_FOLDERS = {"train": "train", "val": "test", "valid": "test", "validation": "test", "test": "test"}
FILE_COLUMNS = ("file", "filename", "file_name", "path", "image", "image_path")
LABEL_COLUMNS = ("label", "class", "category", "cell_type", "type")
GROUP_COLUMNS = ("group", "patient", "patient_id", "slide", "smear", "subject")
# Letters, digits, space, - and _ only: a class becomes a folder name and part of file names.
_VALID_CLASS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 _-]*$")


@dataclass(frozen=True)
class Item:
    """One labelled image of a lab's layout."""

    path: Path  # the file read (inside the root)
    where: str  # how to name it to a person: the path relative to the root, or 'CSV line N'
    label: str  # the class, normalised (see class_name)
    group: str | None = None  # patient / slide / smear, when the layout gives one
    side: str | None = None  # 'train' or 'test' when the layout gives the split


@dataclass(frozen=True)
class Problem:
    where: str
    reason: str


@dataclass
class Listing:
    kind: str  # class-folders | csv
    root: Path
    items: list[Item] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    split_given: bool = False
    source: Path | None = None  # the CSV file, for the csv layout


def class_name(label: str) -> str | None:
    """The class a folder name or label stands for (upper case, spaces and - as _), or None
    when it cannot be a folder name (empty, a path, punctuation, another script)."""
    label = str(label).strip()
    if not _VALID_CLASS.match(label):
        return None
    return re.sub(r"[ -]+", "_", label).upper()


def _csv_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.suffix.lower() == ".csv" and p.is_file())
    except OSError:
        return []


def detect_layout(raw: Path) -> str:
    """``dataset-master``, ``class-folders`` or ``csv`` for the folder or file ``raw``."""
    from wbc.data.raw import IMAGES_DIR, LABELS_NAME, _labels_files

    raw = Path(raw)
    if raw.is_file():
        if raw.suffix.lower() == ".csv":
            return "csv"
        return "dataset-master"  # a zip: only the Kaggle archive is read that way
    if any((p.parent / IMAGES_DIR).is_dir() for p in _labels_files(raw)):
        return "dataset-master"
    if (raw / IMAGES_DIR).is_dir():
        return "dataset-master"  # its labels.csv is missing: that reader says so
    if (raw / LABELS_NAME).is_file():
        return "csv"
    if _class_folders(raw):
        return "class-folders"
    if len(_csv_files(raw)) == 1:
        return "csv"
    return "dataset-master"  # lets the dataset-master reader say what is missing


def _class_folders(root: Path) -> list[os.DirEntry]:
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError:
        return []
    return [e for e in entries if not e.name.startswith(".") and e.is_dir(follow_symlinks=False)]


def _inside(path: Path, root: Path) -> bool:
    try:
        resolved = path.resolve(strict=True)
    except (OSError, RuntimeError):  # a dangling link or a loop
        return False
    return resolved == root or root in resolved.parents


def _walk_images(folder: Path, root: Path, listing: Listing):
    """(path, group sub-folder or None) of every image file under ``folder``, sorted; every
    other entry becomes a Problem. Symlinked folders are not followed: no loops, no escape."""
    for current, dirs, files in os.walk(folder, followlinks=False):
        current_path = Path(current)
        dirs.sort()
        for name in list(dirs):
            entry = current_path / name
            if name.startswith("."):
                dirs.remove(name)
            elif entry.is_symlink():
                dirs.remove(name)
                listing.problems.append(
                    Problem(str(entry.relative_to(root)), "symlinked folder, not followed")
                )
        for name in sorted(files):
            path = current_path / name
            where = str(path.relative_to(root))
            if name.startswith("."):
                listing.problems.append(Problem(where, "hidden file"))
            elif not is_image_name(path):
                listing.problems.append(
                    Problem(where, f"not an image file ({path.suffix or 'no extension'})")
                )
            elif path.is_symlink() and not _inside(path, root):
                listing.problems.append(
                    Problem(where, "symlink pointing outside the folder, or broken, or a loop")
                )
            else:
                relative = path.relative_to(folder).parts
                yield path, (relative[0] if len(relative) > 1 else None)


def read_class_folders(root: Path, group_by_subfolder: bool = False) -> Listing:
    """``ROOT/CLASS/*`` or ``ROOT/{train,val,test}/CLASS/*``; nested files belong to CLASS."""
    root = Path(root).resolve()
    listing = Listing("class-folders", root)
    tops = _class_folders(root)
    splits = [e for e in tops if e.name.lower() in SPLIT_FOLDERS]
    if splits and len(splits) == len(tops):
        listing.split_given = True
        parents = [(Path(e.path), SPLIT_FOLDERS[e.name.lower()]) for e in splits]
    else:
        parents = [(root, None)]
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if entry.is_file(follow_symlinks=False) or entry.is_symlink():
            listing.problems.append(Problem(entry.name, "not in a class folder"))
    for parent, side in parents:
        for folder in _class_folders(parent):
            where = str(Path(folder.path).relative_to(root))
            cls = class_name(folder.name)
            if cls is None:
                listing.problems.append(
                    Problem(
                        where,
                        f"class folder '{folder.name}' is not a valid class name "
                        "(letters, digits, space, - and _ only)",
                    )
                )
                continue
            found = 0
            for path, sub in _walk_images(Path(folder.path), root, listing):
                # one patient's folder under two classes is one patient: one group
                group = f"folder/{sub}" if group_by_subfolder and sub else None
                listing.items.append(Item(path, str(path.relative_to(root)), cls, group, side))
                found += 1
            if not found:
                listing.problems.append(Problem(where, "empty class folder (no image files)"))
    if not listing.items:
        raise DataError(
            f"{root}: no images in class folders (expected ROOT/CLASS/*.jpg|png|bmp|tif, "
            f"or ROOT/train/CLASS/*){_first_problem(listing)}"
        )
    return listing


def _first_problem(listing: Listing) -> str:
    if not listing.problems:
        return ""
    first = listing.problems[0]
    return f"; first problem: {first.where}: {first.reason}"


def _pick_column(path: Path, header: list[str], asked: str, usual: tuple[str, ...], what: str):
    lowered = {name.strip().lower(): name for name in header}
    if asked:
        if asked.strip().lower() in lowered:
            return lowered[asked.strip().lower()]
        raise DataError(
            f"{path}: no column '{asked}' for the {what} (found: {', '.join(header) or 'none'})"
        )
    for name in usual:
        if name in lowered:
            return lowered[name]
    return None


def read_csv_layout(
    raw: Path, file_column: str = "", label_column: str = "", group_column: str = ""
) -> Listing:
    """A CSV of file and label (and group), paths relative to the CSV's folder."""
    raw = Path(raw)
    if raw.is_dir():
        candidates = _csv_files(raw)
        if len(candidates) != 1:
            raise DataError(
                f"{raw}: expected class folders or one CSV of file and label, found "
                f"{len(candidates)} CSV files"
            )
        raw = candidates[0]
    root = raw.parent.resolve()
    try:
        data = raw.read_bytes()
    except OSError as exc:
        raise DataError(f"{raw}: cannot read ({exc.strerror})") from None
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = data.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    else:
        raise DataError(f"{raw}: not a text file")
    first = text.splitlines()[0] if text.strip() else ""
    if not first:
        raise DataError(f"{raw}: empty file, expected a header with a file and a label column")
    delimiter = max(",;\t", key=first.count)
    reader = csv.reader(io.StringIO(text), delimiter=delimiter)
    header = [h.strip() for h in next(reader)]
    file_col = _pick_column(raw, header, file_column, FILE_COLUMNS, "file")
    label_col = _pick_column(raw, header, label_column, LABEL_COLUMNS, "label")
    if file_col is None or label_col is None:
        raise DataError(
            f"{raw}: expected a file column ({'/'.join(FILE_COLUMNS[:4])}) and a label column "
            f"({'/'.join(LABEL_COLUMNS[:3])}), found {', '.join(header) or 'none'}; name them "
            "with --set rename.file_column=... rename.label_column=..."
        )
    group_col = _pick_column(raw, header, group_column, GROUP_COLUMNS, "group")
    index = {name: i for i, name in enumerate(header)}
    listing = Listing("csv", root, source=raw)
    for line, row in enumerate(reader, start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {name: (row[i].strip() if i < len(row) else "") for name, i in index.items()}
        where = f"{raw.name} line {line}"
        name, label = cells[file_col], cells[label_col]
        cls = class_name(label)
        if not name:
            listing.problems.append(Problem(where, "no file named"))
        elif cls is None:
            listing.problems.append(
                Problem(
                    where,
                    f"class '{label}' is not a valid class name (letters, digits, space, "
                    "- and _ only)",
                )
            )
        else:
            path = (root / name) if not os.path.isabs(name) else Path(name)
            if not _inside(path, root) and not path.exists():
                listing.problems.append(Problem(where, f"file not found: {name}"))
            elif not _inside(path, root):
                listing.problems.append(Problem(where, f"path outside the CSV's folder: {name}"))
            elif not path.is_file():
                listing.problems.append(Problem(where, f"not a file: {name}"))
            elif not is_image_name(path):
                listing.problems.append(
                    Problem(where, f"not an image file ({path.suffix or 'no extension'}): {name}")
                )
            else:
                group = cells[group_col] if group_col else ""
                listing.items.append(
                    Item(path, f"{name} ({where})", cls, f"group/{group}" if group else None)
                )
    if not listing.items:
        raise DataError(f"{raw}: no usable rows{_first_problem(listing) or ' (header only)'}")
    return listing


def read_listing(raw: Path, rename_config) -> Listing:
    """The lab layout at ``raw`` (class folders or a CSV), with the config's column names."""
    kind = detect_layout(raw)
    if kind == "csv":
        return read_csv_layout(
            raw,
            rename_config.file_column,
            rename_config.label_column,
            rename_config.group_column,
        )
    if kind == "class-folders":
        return read_class_folders(raw, rename_config.group_by_subfolder)
    raise DataError(f"{raw}: a dataset-master folder, not a lab layout")
