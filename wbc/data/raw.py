"""Finding the raw dataset: a ``dataset-master`` folder, or the Kaggle zip that holds one.

The zip is extracted once into ``DATA/raw/<zip name>/`` (atomically, refusing entries that would
land outside that folder), then treated like a folder. Raw files are only ever read.
"""

from __future__ import annotations

import os
import stat
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from wbc.core.errors import DataError
from wbc.core.manifest import remove_tree, replace_dir, sha256_file, write_atomic

LABELS_NAME = "labels.csv"
IMAGES_DIR = "JPEGImages"
ANNOTATIONS_DIR = "Annotations"
MAX_UNPACKED_BYTES = 8 << 30  # refuse zip bombs: the real archive unpacks to ~100 MB
_MAX_DEPTH = 4


@dataclass(frozen=True)
class RawFolder:
    root: Path
    labels: Path
    images: Path
    annotations: Path | None

    def image_path(self, image_id: int) -> Path:
        return self.images / f"BloodImage_{image_id:05d}.jpg"

    def annotation_path(self, image_id: int) -> Path | None:
        if self.annotations is None:
            return None
        return self.annotations / f"BloodImage_{image_id:05d}.xml"


def _unsafe_member(info: zipfile.ZipInfo, dest: Path) -> str | None:
    name = info.filename.replace("\\", "/")
    if name.startswith("/") or PurePosixPath(name).is_absolute() or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    target = (dest / name).resolve()
    if target != dest.resolve() and dest.resolve() not in target.parents:
        return "path escapes the target folder"
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        return "symbolic link"
    return None


def safe_extract(archive: Path, dest: Path) -> None:
    """Extract ``archive`` into the new folder ``dest``; refuse it whole if any entry is unsafe."""
    archive, dest = Path(archive), Path(dest)
    try:
        with zipfile.ZipFile(archive) as zf:
            members = zf.infolist()
            total = sum(m.file_size for m in members)
            if total > MAX_UNPACKED_BYTES:
                raise DataError(f"{archive}: unpacks to {total:,} bytes, over the {MAX_UNPACKED_BYTES:,} limit")
            for info in members:
                problem = _unsafe_member(info, dest)
                if problem:
                    raise DataError(f"{archive}: refused entry '{info.filename}' ({problem})")
            tmp = dest.parent / f".{dest.name}.tmp"
            remove_tree(tmp)
            tmp.mkdir(parents=True)
            try:
                for info in members:
                    zf.extract(info, tmp)
                replace_dir(tmp, dest)
            except BaseException:
                remove_tree(tmp)
                raise
    except zipfile.BadZipFile:
        raise DataError(f"{archive}: not a valid zip archive (truncated or corrupt)") from None
    except OSError as exc:
        raise DataError(f"{archive}: cannot extract ({exc.strerror or exc})") from None


def _labels_files(root: Path) -> list[Path]:
    """labels.csv files up to a few folders down (the Kaggle zip nests dataset-master twice)."""
    found = []
    for depth in range(_MAX_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [LABELS_NAME])
        found.extend(sorted(p for p in root.glob(pattern) if p.is_file()))
    return found


def _find_labels(root: Path) -> Path | None:
    return next((p for p in _labels_files(root) if (p.parent / IMAGES_DIR).is_dir()), None)


def extract_zip(archive: Path, raw_dir: Path) -> Path:
    """Extract once; reuse the folder while the zip's hash is unchanged."""
    dest = raw_dir / archive.stem
    marker = dest / ".source-sha256"
    digest = sha256_file(archive)
    if not (marker.is_file() and marker.read_text().strip() == digest):
        safe_extract(archive, dest)
        write_atomic(marker, digest + "\n")
    return dest


def locate_raw(raw: Path, raw_dir: Path | None = None) -> RawFolder:
    """Resolve a folder or a zip to the folder holding ``labels.csv`` and ``JPEGImages/``."""
    raw = Path(raw)
    if not raw.exists():
        raise DataError(f"{raw}: not found; give the dataset-master folder or its zip")
    if raw.is_file():
        if not zipfile.is_zipfile(raw):
            raise DataError(f"{raw}: not a folder or a zip archive")
        raw = extract_zip(raw, Path(raw_dir) if raw_dir else raw.parent)
    labels = _find_labels(raw)
    if labels is None:
        lonely = next(iter(_labels_files(raw)), None)
        if lonely is not None:
            raise DataError(f"{lonely.parent / IMAGES_DIR}: missing; expected the images beside {lonely}")
        raise DataError(f"{raw}: no {LABELS_NAME} found (expected the Kaggle dataset-master layout)")
    root = labels.parent
    annotations = root / ANNOTATIONS_DIR
    return RawFolder(
        root=root,
        labels=labels,
        images=root / IMAGES_DIR,
        annotations=annotations if annotations.is_dir() else None,
    )


def list_images(folder: Path) -> list[Path]:
    """Regular image files directly in ``folder`` (symlinks to files are read, loops ignored)."""
    found = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as exc:
        raise DataError(f"{folder}: cannot list ({exc.strerror})") from None
    for entry in entries:
        try:
            if entry.is_file():
                found.append(Path(entry.path))
        except OSError:
            continue
    return found
