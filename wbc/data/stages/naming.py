"""File names that carry their origin: ``CLASS.ID.jpg`` and augmented copies ``CLASS.ID.aNNNN.jpg``.

Later stages read the source id back from the name, which is what lets the grouped split keep
every copy of one cell on one side.
"""

from __future__ import annotations

import re
from typing import NamedTuple

_NAME = re.compile(r"^(?P<cls>[A-Z_]+)\.(?P<id>\d+)(?:\.a(?P<copy>\d+))?\.jpg$")


class ImageName(NamedTuple):
    cls: str
    source_id: int
    copy: int | None  # None for the original image


def original_name(cls: str, source_id: int) -> str:
    return f"{cls}.{source_id}.jpg"


def copy_name(cls: str, source_id: int, copy: int) -> str:
    return f"{cls}.{source_id}.a{copy:04d}.jpg"


def parse_name(name: str) -> ImageName | None:
    """The parts of a wbc image name, or None for any other file name."""
    match = _NAME.match(name)
    if not match:
        return None
    copy = match.group("copy")
    return ImageName(match.group("cls"), int(match.group("id")), int(copy) if copy else None)
