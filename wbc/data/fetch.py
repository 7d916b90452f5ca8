"""``wbc fetch``: assemble the public dataset in the Kaggle ``dataset-master`` layout.

The Kaggle "Blood Cell Images" ``dataset-master`` folder is two public sources put side by side:
the BCCD dataset (MIT licence; ``BCCD/JPEGImages`` and ``BCCD/Annotations``) and the study's
``labels.csv``. Both are pinned to commits in ``config.fetch`` (so a mirror can be named with
``--set fetch.bccd_url=...``), downloaded with ``urllib`` and checked: the labels' SHA-256 (and the
archive's when ``fetch.bccd_sha256`` is set), the byte count against ``Content-Length``, and that
every JPEG decodes.

Nothing half-written is ever left behind: each download goes to a ``.part`` file, everything is
assembled in a hidden folder beside the destination, and the finished folder is renamed into place
with a small marker (``.wbc-fetch.json``) that records the sources and their hashes. A rerun whose
marker matches the configured sources answers "already fetched" without touching the network.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config, FetchConfig
from wbc.data.labels import read_labels
from wbc.data.raw import ANNOTATIONS_DIR, IMAGES_DIR, LABELS_NAME, safe_extract
from wbc.core.errors import BadImage, DataError
from wbc.core.manifest import os_error_message, remove_tree, replace_dir, sha256_file
from wbc.core.progress import bar

MARKER_NAME = ".wbc-fetch.json"
MARKER_FORMAT = 1
LICENSE_NAME = "LICENSE"
DEFAULT_DEST = Path("raw") / "dataset-master"  # relative to DATA_DIR
MAX_DOWNLOAD_BYTES = 2 << 30  # the BCCD archive is a few MB; refuse a runaway mirror
ALTERNATIVE = (
    "alternatively, download dataset-master.zip from the Kaggle 'Blood Cell Images' page "
    "and run `wbc prepare --raw dataset-master.zip`"
)
_CHUNK = 1 << 16
_SEARCH_DEPTH = 4

Echo = Callable[[str], None]


@dataclass(frozen=True)
class FetchResult:
    """What ``fetch_dataset`` left at ``dest`` (or found there already, when ``reused``)."""

    dest: Path
    images: int
    annotations: int
    label_rows: int
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    reused: bool = False

    def summary(self) -> str:
        verb = "already fetched" if self.reused else "fetched"
        return (
            f"{self.dest}: {verb}: {self.images} images, {self.annotations} annotations, "
            f"{self.label_rows} label rows"
        )


def default_dest(data_dir: Path) -> Path:
    """``DATA_DIR/raw/dataset-master``: where ``wbc prepare`` looks when ``--raw`` is not given."""
    return Path(data_dir) / DEFAULT_DEST


def _fetch_config(config: Config | FetchConfig) -> FetchConfig:
    return config if isinstance(config, FetchConfig) else config.fetch


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _fail(url: str, reason: str) -> DataError:
    return DataError(f"{url}: {_one_line(reason)}; {ALTERNATIVE}")


# --------------------------------------------------------------------------------------------
# progress


# --------------------------------------------------------------------------------------------
# downloading


def _reason(exc: BaseException, timeout: float) -> str:
    """A few words for why a request failed (what the user can act on)."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}" + (f" {exc.reason}" if exc.reason else "")
    if isinstance(exc, urllib.error.URLError):
        inner = exc.reason
        if isinstance(inner, BaseException):
            return _reason(inner, timeout)
        return f"cannot reach host ({inner})"
    if isinstance(exc, socket.gaierror):
        return "cannot reach host (name not resolved; offline?)"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"timed out (no data for {timeout:g} s)"
    if isinstance(exc, ConnectionRefusedError):
        return "cannot reach host (connection refused)"
    if isinstance(exc, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return "connection lost during download"
    if isinstance(exc, ssl.SSLError):
        return f"TLS error ({exc.reason or exc})"
    if isinstance(exc, http.client.HTTPException):
        return f"bad HTTP response ({type(exc).__name__})"
    if isinstance(exc, OSError):
        if exc.errno is not None and exc.filename is None and exc.strerror:
            return f"cannot reach host ({exc.strerror})"
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc) or type(exc).__name__


def download(
    url: str,
    target: Path,
    *,
    timeout: float = 60.0,
    expected_sha256: str = "",
    label: str = "",
    progress: Optional[bool] = None,
) -> str:
    """Download ``url`` to ``target`` (via ``target.part``); return its SHA-256.

    Raises a one-line ``DataError`` naming the URL and the reason (unreachable host, HTTP status,
    truncated body, hash mismatch); no ``.part`` file is left behind on failure.
    """
    target = Path(target)
    part = target.with_name(target.name + ".part")
    try:
        with bar(
            None, label or target.name, unit="B", scale=True, leave=True, show=progress
        ) as shown:
            actual = _stream(url, part, timeout, shown)
        if expected_sha256 and actual != expected_sha256.strip().lower():
            raise _fail(url, f"sha256 mismatch (got {actual}, expected {expected_sha256.strip()})")
        os.replace(part, target)
        return actual
    except OSError as exc:
        _unlink(part)
        raise DataError(os_error_message(exc, part)) from None
    except BaseException:
        _unlink(part)
        raise


def _network(url: str, timeout: float, call: Callable[[], Any]) -> Any:
    """Run one network step; turn its failure into the one-line error naming ``url``."""
    try:
        return call()
    except (OSError, http.client.HTTPException, ValueError) as exc:
        if isinstance(exc, urllib.error.HTTPError):
            exc.close()  # it holds the open response
        raise _fail(url, _reason(exc, timeout)) from None


def _stream(url: str, part: Path, timeout: float, bar) -> str:
    """Write the body of ``url`` to ``part``, checking its length; return its SHA-256."""
    request = urllib.request.Request(url, headers={"User-Agent": "wbc-fetch"})
    response = _network(url, timeout, lambda: urllib.request.urlopen(request, timeout=timeout))
    digest = hashlib.sha256()
    got = 0
    with response, open(part, "wb") as out:
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None and length.strip().isdigit() else None
        if expected is not None and expected > MAX_DOWNLOAD_BYTES:
            raise _fail(
                url, f"download too large ({expected:,} bytes, limit {MAX_DOWNLOAD_BYTES:,})"
            )
        bar.total = expected or None
        bar.refresh()
        while True:
            try:
                block = response.read(_CHUNK)
            except http.client.IncompleteRead as exc:
                raise _fail(url, _truncated(got + len(exc.partial), expected)) from None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                raise _fail(url, _reason(exc, timeout)) from None
            if not block:
                break
            out.write(block)
            digest.update(block)
            got += len(block)
            if got > MAX_DOWNLOAD_BYTES:
                raise _fail(url, f"download too large (over {MAX_DOWNLOAD_BYTES:,} bytes)")
            if expected is not None and got > expected:
                raise _fail(url, f"server sent more than its Content-Length ({expected:,} bytes)")
            bar.update(len(block))
    if expected is not None and got != expected:
        raise _fail(url, _truncated(got, expected))
    return digest.hexdigest()


def _truncated(got: int, expected: Optional[int]) -> str:
    if expected is None:
        return "download truncated: connection closed before the end of the body"
    return f"download truncated: got {got:,} of {expected:,} bytes"


def _unlink(path: Path) -> None:
    try:
        path.unlink(missing_ok=True)
    except OSError:
        pass


# --------------------------------------------------------------------------------------------
# marker (reuse of an earlier complete fetch)


def _count(folder: Path, suffix: str) -> int:
    if not folder.is_dir():
        return 0
    return sum(1 for p in folder.iterdir() if p.is_file() and p.suffix.lower() == suffix)


def read_marker(dest: Path) -> Optional[dict[str, Any]]:
    """The marker ``wbc fetch`` left in ``dest``, or None (absent or unreadable)."""
    path = Path(dest) / MARKER_NAME
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _marker_current(dest: Path, marker: dict[str, Any], fc: FetchConfig) -> bool:
    """True when ``dest`` is a complete fetch of exactly the configured sources."""
    try:
        sources = marker["sources"]
        counts = marker["counts"]
        bccd, labels = sources["bccd"], sources["labels"]
        if marker.get("format") != MARKER_FORMAT:
            return False
        if bccd["url"] != fc.bccd_url or labels["url"] != fc.labels_url:
            return False
        if fc.bccd_sha256 and bccd["sha256"] != fc.bccd_sha256.strip().lower():
            return False
        if fc.labels_sha256 and labels["sha256"] != fc.labels_sha256.strip().lower():
            return False
        if sha256_file(dest / LABELS_NAME) != labels["sha256"]:
            return False
        return (
            _count(dest / IMAGES_DIR, ".jpg") == counts["images"]
            and _count(dest / ANNOTATIONS_DIR, ".xml") == counts["annotations"]
        )
    except (KeyError, TypeError, OSError):
        return False


# --------------------------------------------------------------------------------------------
# assembling


def _find_images_dir(root: Path) -> Optional[Path]:
    """The archive's ``JPEGImages`` folder (``BCCD_Dataset-<commit>/BCCD/JPEGImages``)."""
    hits: list[Path] = []
    for depth in range(_SEARCH_DEPTH + 1):
        pattern = "/".join(["*"] * depth + [IMAGES_DIR])
        hits = sorted(p for p in root.glob(pattern) if p.is_dir())
        if hits:
            break
    with_annotations = [p for p in hits if (p.parent / ANNOTATIONS_DIR).is_dir()]
    return (with_annotations or hits or [None])[0]


def _find_license(images_dir: Path, root: Path) -> Optional[Path]:
    folder = images_dir.parent
    while True:
        for name in (LICENSE_NAME, "LICENSE.txt", "LICENSE.md"):
            if (folder / name).is_file():
                return folder / name
        if folder == root or root not in folder.parents:
            return None
        folder = folder.parent


def _verify_images(url: str, images: Path) -> int:
    """Decode every JPEG fully (a truncated file fails here); return how many there are."""
    from wbc.core.imageio import open_checked

    count = 0
    for path in sorted(images.iterdir()):
        if not (path.is_file() and path.suffix.lower() == ".jpg"):
            continue
        try:
            image = open_checked(path)
            try:
                image.load()
            finally:
                image.close()
        except BadImage as exc:
            raise _fail(url, f"{path.name} in the archive: {exc.reason}") from None
        except (OSError, ValueError, SyntaxError) as exc:
            raise _fail(url, f"{path.name} in the archive does not decode ({exc})") from None
        count += 1
    if count == 0:
        raise _fail(url, f"the archive's {IMAGES_DIR} folder holds no .jpg images")
    return count


def _assemble(
    fc: FetchConfig, work: Path, timeout: float, progress: Optional[bool], echo: Echo
) -> tuple[Path, dict[str, Any]]:
    """Download and check both sources inside ``work``; return the finished folder + marker."""
    labels_file = work / LABELS_NAME
    echo(f"downloading {LABELS_NAME} from {fc.labels_url}")
    labels_sha = download(
        fc.labels_url,
        labels_file,
        timeout=timeout,
        expected_sha256=fc.labels_sha256,
        label=LABELS_NAME,
        progress=progress,
    )
    try:
        label_rows = len(read_labels(labels_file))
    except DataError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise _fail(fc.labels_url, f"not a usable labels file ({message})") from None

    archive = work / "bccd.zip"
    echo(f"downloading the BCCD archive from {fc.bccd_url}")
    bccd_sha = download(
        fc.bccd_url,
        archive,
        timeout=timeout,
        expected_sha256=fc.bccd_sha256,
        label="BCCD archive",
        progress=progress,
    )
    bccd_bytes = archive.stat().st_size

    unpacked = work / "unpacked"
    try:
        safe_extract(archive, unpacked)
    except DataError as exc:
        message = str(exc).split(": ", 1)[-1]
        raise _fail(fc.bccd_url, message) from None
    _unlink(archive)

    images_src = _find_images_dir(unpacked)
    if images_src is None:
        raise _fail(
            fc.bccd_url, f"no {IMAGES_DIR} folder in the archive (expected BCCD/{IMAGES_DIR})"
        )
    annotations_src = images_src.parent / ANNOTATIONS_DIR
    if not annotations_src.is_dir():
        raise _fail(fc.bccd_url, f"no {ANNOTATIONS_DIR} folder beside {IMAGES_DIR} in the archive")
    license_src = _find_license(images_src, unpacked)

    out = work / "dataset-master"
    out.mkdir()
    os.replace(images_src, out / IMAGES_DIR)
    os.replace(annotations_src, out / ANNOTATIONS_DIR)
    os.replace(labels_file, out / LABELS_NAME)
    if license_src is not None:
        shutil.copyfile(license_src, out / LICENSE_NAME)
    else:
        echo(
            f"warning: {fc.bccd_url}: no {LICENSE_NAME} file in the archive (BCCD is MIT-licensed)"
        )
    remove_tree(unpacked)

    echo("checking that every image decodes")
    images = _verify_images(fc.bccd_url, out / IMAGES_DIR)
    annotations = _count(out / ANNOTATIONS_DIR, ".xml")
    marker = {
        "format": MARKER_FORMAT,
        "tool": "wbc fetch",
        "sources": {
            "bccd": {"url": fc.bccd_url, "sha256": bccd_sha, "bytes": bccd_bytes},
            "labels": {"url": fc.labels_url, "sha256": labels_sha},
        },
        "counts": {"images": images, "annotations": annotations, "label_rows": label_rows},
    }
    (out / MARKER_NAME).write_text(json.dumps(marker, indent=2) + "\n", encoding="utf-8")
    return out, marker


def _result(dest: Path, marker: dict[str, Any], reused: bool) -> FetchResult:
    counts = marker["counts"]
    return FetchResult(
        dest=dest,
        images=int(counts["images"]),
        annotations=int(counts["annotations"]),
        label_rows=int(counts.get("label_rows", 0)),
        sources=marker["sources"],
        reused=reused,
    )


def fetch_dataset(
    config: Config | FetchConfig,
    dest: Path,
    *,
    force: bool = False,
    progress: Optional[bool] = None,
    echo: Optional[Echo] = None,
) -> FetchResult:
    """Download BCCD + ``labels.csv`` into ``dest`` in the dataset-master layout.

    ``dest`` ends up holding ``JPEGImages/``, ``Annotations/``, ``labels.csv``, ``LICENSE`` and
    the marker ``.wbc-fetch.json``, or is left as it was. A complete earlier fetch of the same
    sources is reused without any network access unless ``force``. A ``dest`` that exists but was
    not made by ``wbc fetch`` is never replaced. ``progress`` (default: when stderr is a terminal)
    draws a progress bar on stderr; ``echo`` receives one line per step.
    """
    fc = _fetch_config(config)
    dest = Path(dest)
    say = echo or (lambda _message: None)
    if dest.exists() or dest.is_symlink():
        marker = read_marker(dest) if dest.is_dir() else None
        if marker is None:
            raise DataError(
                f"{dest}: already exists and was not made by `wbc fetch`; "
                "use it with `wbc prepare --raw`, or pick another --dest"
            )
        if not force and _marker_current(dest, marker, fc):
            return _result(dest, marker, reused=True)
    if fc.timeout <= 0:
        raise DataError(f"fetch.timeout: must be positive, got {fc.timeout:g}")

    work = dest.parent / f".{dest.name}.fetch"
    created = _missing_folders(dest.parent)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        remove_tree(work)
        work.mkdir()
        out, marker = _assemble(fc, work, fc.timeout, progress, say)
        replace_dir(out, dest)
    except OSError as exc:
        _discard(work, created)
        raise DataError(os_error_message(exc, dest)) from None
    except BaseException:
        _discard(work, created)
        raise
    _discard(work)
    return _result(dest, marker, reused=False)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _discard(path: Path, created: list[Path] = ()) -> None:
    """Remove the work folder, then the (still empty) parent folders this fetch created."""
    try:
        remove_tree(path)
        for folder in created:
            folder.rmdir()
    except OSError:
        pass
