"""Parsing the Kaggle ``labels.csv`` (",Image,Category"), quirks and all.

The real file has CRLF endings, an unnamed index column, no final newline, empty categories and
multi-class rows ("NEUTROPHIL, EOSINOPHIL"). Users also bring copies saved by spreadsheet programs:
a UTF-8 BOM, ``;`` separators. Rows that cannot be used are returned with a reason, never dropped
silently; a file that cannot be used at all is a ``DataError`` naming it.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from wbc.core.errors import DataError

_ID_PATTERN = re.compile(r"^\d{1,9}$")
_DELIMITERS = ",;\t"


@dataclass(frozen=True)
class LabelRow:
    raw_id: str  # the Image cell as written
    image_id: int | None  # None when raw_id is not a plain number
    categories: tuple[str, ...]  # upper-cased, in file order, empties removed
    line: int  # 1-based line number in the file, header = 1


def _decode(path: Path, data: bytes) -> str:
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            return data.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{path}: not a text file")


def _delimiter(path: Path, text: str) -> str:
    header = text.splitlines()[0] if text.splitlines() else ""
    try:
        return csv.Sniffer().sniff(header, delimiters=_DELIMITERS).delimiter
    except csv.Error:
        counts = {d: header.count(d) for d in _DELIMITERS}
        best = max(counts, key=counts.get)
        if counts[best] == 0:
            raise DataError(
                f"{path}: cannot find the columns; expected a CSV header like ',Image,Category'"
            ) from None
        return best


def parse_categories(cell: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in str(cell).split(",") if part.strip())


def read_labels(path: Path) -> list[LabelRow]:
    """All rows of ``labels.csv`` with their ids and categories parsed (not yet filtered)."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: labels file not found") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, expected the labels CSV file") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror})") from None
    if not data.strip():
        raise DataError(f"{path}: empty file, expected a header ',Image,Category' and rows")
    text = _decode(path, data)
    delimiter = _delimiter(path, text)
    try:
        frame = pd.read_csv(
            io.StringIO(text), sep=delimiter, dtype=str, keep_default_na=False, skipinitialspace=False
        )
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: malformed CSV ({first})") from None
    columns = {str(name).strip().lower(): name for name in frame.columns}
    if "image" not in columns or "category" not in columns:
        found = ", ".join(repr(str(c)) for c in frame.columns) or "none"
        raise DataError(f"{path}: expected columns 'Image' and 'Category', found {found}")
    if frame.empty:
        raise DataError(f"{path}: header only, no label rows")
    rows = []
    for offset, (raw_id, category) in enumerate(
        zip(frame[columns["image"]], frame[columns["category"]])
    ):
        raw_id = str(raw_id).strip()
        image_id = int(raw_id) if _ID_PATTERN.match(raw_id) else None
        rows.append(LabelRow(raw_id, image_id, parse_categories(category), line=offset + 2))
    return rows
