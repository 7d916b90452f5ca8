"""One progress bar for every long step (tqdm): prepare's stages, fetch, predict, count, cv
folds and tune cells.

A bar is drawn on stderr, and only when stderr is a terminal, so stdout stays clean for the
JSON and CSV that scripts read, and CI logs get no carriage-return noise. ``WBC_PROGRESS=1``
forces it on (``0`` off), e.g. to watch a job whose stderr goes to a file.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional


def enabled(stream=None) -> bool:
    forced = os.environ.get("WBC_PROGRESS")
    if forced in ("0", "1"):
        return forced == "1"
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


@contextmanager
def bar(
    total: Optional[int],
    label: str,
    *,
    unit: str = "it",
    scale: bool = False,
    leave: bool = False,
    show: Optional[bool] = None,
) -> Iterator:
    """A tqdm bar of ``total`` steps (None: unknown) labelled ``label``; call ``.update(n)``.
    Disabled (its ``update`` does nothing) when stderr is not a terminal. ``scale``: show
    bytes as kB/MB. ``leave``: keep the finished bar on screen. ``show``: force it on or off
    (None: ``enabled()``)."""
    from tqdm import tqdm

    progress = tqdm(
        total=total,
        desc=label,
        unit=unit,
        unit_scale=scale,
        leave=leave,
        file=sys.stderr,
        disable=not (enabled() if show is None else show),
        dynamic_ncols=True,
        mininterval=0.2,
    )
    try:
        yield progress
    finally:
        progress.close()


def no_echo(_message: str) -> None:
    """An ``echo`` that prints nothing: for library calls whose messages are not wanted."""
