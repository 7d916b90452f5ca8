"""File names that carry their origin: ``CLASS.ID[-STEM].jpg`` and copies ``CLASS.ID[-STEM].aNNNN.jpg``.

Later stages read the source id back from the name, which is what lets the grouped split keep
every copy of one cell on one side. ``STEM`` is the sanitised name of a lab's own file (the
``dataset-master`` layout has none: its id is the file's number), so a prediction or an error in
any later folder can be traced back to the file it came from.
"""

from __future__ import annotations

import re
from typing import NamedTuple

CLASS_PATTERN = r"[A-Z0-9][A-Z0-9_]*"
_NAME = re.compile(
    rf"^(?P<cls>{CLASS_PATTERN})\.(?P<id>\d+)(?:-(?P<stem>[A-Za-z0-9_-]+))?"
    r"(?:\.a(?P<copy>\d+))?\.jpg$"
)
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")
MAX_STEM = 60  # keeps names well under any file system's 255-byte limit


class ImageName(NamedTuple):
    cls: str
    source_id: int
    copy: int | None  # None for the original image
    stem: str | None = None  # the lab file's sanitised name, if any


def sanitise_stem(stem: str) -> str:
    """``stem`` with every run of characters outside ``[A-Za-z0-9_-]`` made one ``_``."""
    cleaned = _UNSAFE.sub("_", stem).strip("_")[:MAX_STEM]
    return cleaned or "image"


def original_name(cls: str, source_id: int, stem: str | None = None) -> str:
    return f"{cls}.{source_id}{'-' + stem if stem else ''}.jpg"


def copy_name(cls: str, source_id: int, copy: int, stem: str | None = None) -> str:
    return f"{cls}.{source_id}{'-' + stem if stem else ''}.a{copy:04d}.jpg"


def parse_name(name: str) -> ImageName | None:
    """The parts of a wbc image name, or None for any other file name."""
    match = _NAME.match(name)
    if not match:
        return None
    copy = match.group("copy")
    return ImageName(
        match.group("cls"), int(match.group("id")), int(copy) if copy else None, match.group("stem")
    )
