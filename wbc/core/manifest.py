"""Stage bookkeeping: manifests, skip-if-unchanged, and atomic output folders.

A stage builds its output in a hidden temporary folder beside the destination and renames it into
place only when complete, so a run killed at any moment leaves the old output or none, never half
of one. Its ``manifest.json`` records a key (stage name, parameters, input digests) and the SHA-256
of every output file; a rerun whose key matches and whose files are all there is skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from wbc.core.errors import DataError

MANIFEST_NAME = "manifest.json"
FORMAT_VERSION = 1


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def sha256_json(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of the regular files under ``root``, sorted, manifest excluded."""
    root = Path(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            full = Path(dirpath) / name
            rel = full.relative_to(root).as_posix()
            if rel != MANIFEST_NAME and full.is_file():
                found.append(rel)
    return sorted(found)


def digest_files(root: Path, relpaths: Iterable[str] | None = None) -> dict[str, str]:
    root = Path(root)
    rels = list_files(root) if relpaths is None else list(relpaths)
    return {rel: sha256_file(root / rel) for rel in rels}


@dataclass
class Manifest:
    stage: str
    key: str
    params: dict[str, Any]
    inputs: dict[str, Any]
    outputs: dict[str, str]
    summary: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    seconds: float = 0.0
    format: int = FORMAT_VERSION
    skipped: bool = field(default=False, compare=False)

    @property
    def digest(self) -> str:
        """One hash for all outputs: what a downstream stage records as its input."""
        return sha256_json(self.outputs)

    def to_json(self) -> str:
        data = asdict(self)
        data.pop("skipped")
        data["digest"] = self.digest
        return json.dumps(data, indent=2, sort_keys=False)

    def save(self, folder: Path) -> None:
        write_atomic(Path(folder) / MANIFEST_NAME, self.to_json() + "\n")

    @classmethod
    def load(cls, folder: Path) -> Manifest:
        path = Path(folder) / MANIFEST_NAME
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(
                f"{path}: no manifest; run the stage that makes {folder} first"
            ) from None
        except (OSError, ValueError) as exc:
            raise DataError(f"{path}: unreadable manifest ({exc})") from None
        data.pop("digest", None)
        try:
            return cls(**data)
        except TypeError:
            raise DataError(f"{path}: not a wbc manifest") from None

    def outputs_present(self, folder: Path) -> bool:
        folder = Path(folder)
        return all((folder / rel).is_file() for rel in self.outputs)


def stage_key(stage: str, params: dict[str, Any], inputs: dict[str, Any]) -> str:
    return sha256_json(
        {"stage": stage, "params": params, "inputs": inputs, "format": FORMAT_VERSION}
    )


def load_if_current(dst: Path, key: str) -> Manifest | None:
    """The existing manifest at ``dst`` when it matches ``key`` and its files are all there."""
    if not (Path(dst) / MANIFEST_NAME).is_file():
        return None
    try:
        existing = Manifest.load(dst)
    except DataError:
        return None
    if existing.key == key and existing.outputs_present(dst):
        existing.skipped = True
        return existing
    return None


TEMP_PREFIX = ".tmp-"


def temp_sibling(path: Path) -> Path:
    """A hidden temporary name beside ``path``: ``.tmp-<pid>-<name>``.

    It ends with the real name, so writers that check a suffix (Keras' ``.keras`` and
    ``.weights.h5``, matplotlib's ``.png``) accept it, and it carries the writer's pid, so that a
    later writer can tell the debris of a killed process from a file being written now."""
    path = Path(path)
    return path.with_name(f"{TEMP_PREFIX}{os.getpid()}-{path.name}")


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # exists, but another user's
        return True
    return True


def sweep_temps(folder: Path, name: str = "*", recursive: bool = False) -> list[Path]:
    """Remove what killed writers left in ``folder``: ``.tmp-<pid>-NAME`` whose process is gone,
    and a stage's ``.DST.tmp`` / ``.DST.old`` folders. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    pattern = f"**/{TEMP_PREFIX}*-{name}" if recursive else f"{TEMP_PREFIX}*-{name}"
    removed = []
    for path in sorted(folder.glob(pattern)):
        pid = path.name[len(TEMP_PREFIX) :].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            with contextlib.suppress(OSError):
                remove_tree(path)
                removed.append(path)
    return removed


def fsync_path(path: Path) -> None:
    """Flush a written file (or a folder's entries) to the disk, not just the page cache."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if Path(path).is_dir() else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems cannot fsync a folder: nothing more to do there
        pass
    finally:
        os.close(fd)


def _fsync_tree(path: Path) -> None:
    if path.is_dir():
        for dirpath, _dirs, files in os.walk(path):
            for name in files:
                fsync_path(Path(dirpath) / name)
            fsync_path(Path(dirpath))
    else:
        fsync_path(path)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """For writers that take a file name (Keras, matplotlib, ONNX, a SavedModel folder): yield a
    temporary name beside ``path``; when the block ends without an error, the file (or folder)
    is flushed to disk and renamed onto ``path``, so a reader sees the old one or the new one,
    never half of one. On an error the temporary is removed. Debris of killed writers of the
    same file is swept first. A full disk or a read-only folder becomes a one-line
    ``DataError`` naming ``path``."""
    path = Path(path)
    tmp = temp_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        sweep_temps(path.parent, path.name)
        remove_tree(tmp)
        yield tmp
        _fsync_tree(tmp)
        if tmp.is_dir():
            replace_dir(tmp, path)
        else:
            os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as exc:
        _discard(tmp)
        raise DataError(os_error_message(exc, path)) from None
    except BaseException:
        _discard(tmp)
        raise


def write_atomic(path: Path, data: str | bytes) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through ``atomic_path``: a killed process
    leaves the old file or the new one, never half of one."""
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        handle.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_json(path: Path, data: Any) -> None:
    """``data`` as indented JSON, written atomically (``write_atomic``)."""
    write_atomic(path, json.dumps(data, indent=2) + "\n")


def read_json(path: Path, what: str = "file") -> Any:
    """A JSON file's value, or a one-line ``DataError`` saying it is missing or unreadable."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: {what} not found") from None
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise DataError(f"{path}: unreadable {what} ({reason})") from None


def _temp_path(dst: Path, tag: str) -> Path:
    return dst.parent / f".{dst.name}.{tag}"


def remove_tree(path: Path) -> None:
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink()
    elif path.exists():
        shutil.rmtree(path)


def replace_dir(tmp: Path, dst: Path) -> None:
    """Move ``tmp`` to ``dst``; between the two renames a kill leaves no ``dst``, never a mix."""
    old = _temp_path(dst, "old")
    remove_tree(old)
    if dst.exists() or dst.is_symlink():
        os.replace(dst, old)
    os.replace(tmp, dst)
    fsync_path(dst.parent)
    remove_tree(old)


def os_error_message(exc: OSError, fallback: Path) -> str:
    where = exc.filename or fallback
    if exc.errno == errno.ENOSPC:
        what = "no space left on device"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        what = "not writable (permission denied or read-only file system)"
    else:
        what = exc.strerror or str(exc)
    return f"{where}: {what}"


def run_stage(
    stage: str,
    dst: Path,
    params: dict[str, Any],
    inputs: dict[str, Any],
    build: Callable[[Path], dict[str, Any]],
    force: bool = False,
) -> Manifest:
    """Run ``build(tmp_folder) -> summary`` unless ``dst`` already holds this exact result."""
    dst = Path(dst)
    key = stage_key(stage, params, inputs)
    # A kill between replace_dir's renames leaves .DST.old beside a finished DST: never keep it.
    _discard(_temp_path(dst, "old"))
    if not force:
        current = load_if_current(dst, key)
        if current is not None:
            return current
    tmp = _temp_path(dst, "tmp")
    started = time.time()
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        remove_tree(tmp)
        tmp.mkdir()
        summary = build(tmp)
        manifest = Manifest(
            stage=stage,
            key=key,
            params=params,
            inputs=inputs,
            outputs=digest_files(tmp),
            summary=summary,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            seconds=round(time.time() - started, 3),
        )
        manifest.save(tmp)
        replace_dir(tmp, dst)
    except OSError as exc:
        _discard(tmp)
        raise DataError(os_error_message(exc, dst)) from None
    except BaseException:
        _discard(tmp)
        raise
    return manifest


def _discard(tmp: Path) -> None:
    try:
        remove_tree(tmp)
    except OSError:
        pass


def upstream(folder: Path, stage_hint: str) -> Manifest:
    """The manifest of the stage whose output ``folder`` is, or a clear error naming it."""
    if not (Path(folder) / MANIFEST_NAME).is_file():
        raise DataError(f"{folder}: missing; run `wbc prepare --stage {stage_hint}` first")
    return Manifest.load(folder)
