"""One writer per folder: a second wbc process on the same data or run folder stops at once.

Why: two `wbc train --run-dir R` (or two `wbc prepare` on one data folder) started together both
pass the "already holds a run" checks before either writes, then interleave their files: the
history of one and the checkpoints of the other, with no error. An advisory ``flock`` on
``FOLDER/.wbc.lock`` turns that into a one-line error naming the folder and the holder's pid.
The kernel releases the lock when its process dies, however it dies, so a killed run never
leaves a folder locked; the file itself is removed when the holder finishes. On systems
without ``fcntl`` (Windows) there is no lock.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from wbc.core.errors import DataError

LOCK_NAME = ".wbc.lock"
F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def folder_lock(folder: Path, doing: str) -> Iterator[None]:
    """Hold ``folder``'s lock for the block; ``DataError`` when another process holds it.

    ``doing`` completes the error message: "another wbc process (pid N) is {doing} in FOLDER".
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    folder = Path(folder)
    created = not folder.exists()
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a+", encoding="utf-8")
    except OSError as exc:
        raise DataError(f"{folder}: cannot write ({exc.strerror or exc})") from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        holder = handle.read().strip()
        handle.close()
        who = f" (pid {holder})" if holder.isdigit() else ""
        raise DataError(
            f"{folder}: another wbc process{who} is {doing} in this folder; "
            "wait for it to finish or choose another folder"
        ) from None
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()  # while still holding the lock, so no one else has it yet
        handle.close()
        if created:  # a run that failed before writing anything leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()


def holds_folder_lock(
    doing: str, *names: str, when: Callable[[], bool] = lambda: True
) -> Callable[[F], F]:
    """Decorate a function to run under ``folder_lock`` of the first of its keyword arguments
    ``names`` that is given (not None). Without one (a fresh timestamped folder), or when
    ``when()`` is false, it runs unlocked. The folder must be passed by keyword."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def locked(*args: Any, **kwargs: Any) -> Any:
            target = next((kwargs[n] for n in names if kwargs.get(n) is not None), None)
            if target is None or not when():
                return function(*args, **kwargs)
            with folder_lock(Path(target), doing):
                return function(*args, **kwargs)

        return locked  # type: ignore[return-value]

    return decorate
