"""``wbc fetch`` against a local HTTP server that serves an archive and labels the tests make.

No test touches the outside network: every URL points at 127.0.0.1 (a server in a thread, or a
port that was just closed).
"""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import socket
import threading
import zipfile
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.config import load_config
from wbc.core.errors import DataError
from wbc.data.fetch import (
    ALTERNATIVE,
    MARKER_NAME,
    default_dest,
    download,
    fetch_dataset,
    read_marker,
)
from wbc.data.labels import read_labels
from wbc.data.raw import locate_raw

from conftest import make_raw_folder

TOP = "BCCD_Dataset-0123456789abcdef0123456789abcdef01234567"
COUNTS = {"NEUTROPHIL": 3, "EOSINOPHIL": 2, "LYMPHOCYTE": 2, "MONOCYTE": 1}  # 8 images
LICENSE_TEXT = "MIT License\n\nCopyright (c) 2017 shenggan\n"


# --------------------------------------------------------------------------------------------
# the dataset the tests serve


def bccd_zip(src: Path, *, bad_image: bool = False, extra: dict[str, bytes] | None = None) -> bytes:
    """A zip in the BCCD archive layout:
    TOP/{LICENSE, README.md, BCCD/JPEGImages, BCCD/Annotations}."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(f"{TOP}/", b"")
        zf.writestr(f"{TOP}/LICENSE", LICENSE_TEXT)
        zf.writestr(f"{TOP}/README.md", "# BCCD Dataset\n")
        zf.writestr(f"{TOP}/BCCD/ImageSets/Main/test.txt", "BloodImage_00000\n")
        for folder in ("JPEGImages", "Annotations"):
            for path in sorted((src / folder).iterdir()):
                data = path.read_bytes()
                if bad_image and path.name == "BloodImage_00003.jpg":
                    data = data[: len(data) // 2]  # a truncated JPEG: opens, does not decode
                zf.writestr(f"{TOP}/BCCD/{folder}/{path.name}", data)
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> dict[str, bytes]:
    src = make_raw_folder(tmp_path_factory.mktemp("bccd") / "src", COUNTS)
    return {
        "zip": bccd_zip(src),
        "bad_zip": bccd_zip(src, bad_image=True),
        "unsafe_zip": bccd_zip(src, extra={"../escape.txt": b"x"}),
        "labels": (src / "labels.csv").read_bytes(),
    }


# --------------------------------------------------------------------------------------------
# the local server


class Server:
    """Routes path -> (status, body, mode); records every request path."""

    def __init__(self):
        self.routes: dict[str, tuple[int, bytes, str]] = {}
        self.requests: list[str] = []
        self.release = threading.Event()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                server.requests.append(self.path)
                self.close_connection = True
                status, body, mode = server.routes.get(self.path, (404, b"not found", "ok"))
                self.send_response(status)
                self.send_header("Connection", "close")
                if mode == "chunked":  # a chunked body cut off before its last chunk
                    self.send_header("Transfer-Encoding", "chunked")
                    self.end_headers()
                    half = body[: len(body) // 2]
                    self.wfile.write(b"%x\r\n" % len(body) + half)
                    return
                extra = 1000 if mode == "short" else 0  # claims more bytes than it sends
                self.send_header("Content-Length", str(len(body) + extra))
                self.end_headers()
                if mode == "stall":  # headers and a little data, then silence
                    self.wfile.write(body[:10])
                    self.wfile.flush()
                    server.release.wait(10)
                    return
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def url(self, path: str) -> str:
        return self.base + path

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(dataset):
    with Server() as srv:
        srv.routes["/bccd.zip"] = (200, dataset["zip"], "ok")
        srv.routes["/labels.csv"] = (200, dataset["labels"], "ok")
        yield srv


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def overrides(
    server: Server, dataset, bccd="/bccd.zip", labels="/labels.csv", **extra
) -> list[str]:
    sets = {
        "fetch.bccd_url": server.url(bccd) if bccd.startswith("/") else bccd,
        "fetch.labels_url": server.url(labels) if labels.startswith("/") else labels,
        "fetch.labels_sha256": sha(dataset["labels"]),
        "fetch.timeout": 5,
        **extra,
    }
    return [f"{key}={value}" for key, value in sets.items()]


def config_for(server, dataset, **kwargs):
    return load_config(None, overrides(server, dataset, **kwargs))


def closed_port_url(path: str) -> str:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}{path}"


def assert_nothing_left(parent: Path, before: set[str]) -> None:
    """Only what was there before: no destination, no hidden work folder, no .part files."""
    left = {p.name for p in parent.iterdir()} if parent.exists() else set()
    assert left == before, f"left behind: {sorted(left - before)}"
    if parent.exists():
        assert not list(parent.rglob("*.part"))


def expect_failure(config, dest: Path, *words: str, force: bool = False) -> str:
    before = {p.name for p in dest.parent.iterdir()} if dest.parent.exists() else set()
    with pytest.raises(DataError) as info:
        fetch_dataset(config, dest, force=force, progress=False)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message, message
    assert ALTERNATIVE in message
    assert "wbc prepare --raw dataset-master.zip" in message
    assert_nothing_left(dest.parent, before)
    return message


# --------------------------------------------------------------------------------------------
# success and reuse


def test_fetch_builds_the_dataset_master_layout(tmp_path, server, dataset):
    dest = default_dest(tmp_path / "data")
    assert dest == tmp_path / "data" / "raw" / "dataset-master"
    config = config_for(server, dataset, **{"fetch.bccd_sha256": sha(dataset["zip"])})
    result = fetch_dataset(config, dest, progress=False)

    assert not result.reused
    assert (result.images, result.annotations, result.label_rows) == (8, 8, 8)
    assert "8 images, 8 annotations, 8 label rows" in result.summary()
    assert sorted(p.name for p in dest.iterdir()) == sorted(
        ["Annotations", "JPEGImages", "LICENSE", "labels.csv", MARKER_NAME]
    )
    assert (dest / "labels.csv").read_bytes() == dataset["labels"]
    assert (dest / "LICENSE").read_text() == LICENSE_TEXT
    assert len(list((dest / "JPEGImages").glob("*.jpg"))) == 8
    assert sorted(p.name for p in tmp_path.joinpath("data", "raw").iterdir()) == ["dataset-master"]

    marker = read_marker(dest)
    assert marker["sources"]["bccd"] == {
        "url": server.url("/bccd.zip"),
        "sha256": sha(dataset["zip"]),
        "bytes": len(dataset["zip"]),
    }
    assert marker["sources"]["labels"]["sha256"] == sha(dataset["labels"])

    raw = locate_raw(dest)  # what `wbc prepare` sees
    assert raw.root == dest and raw.annotations == dest / "Annotations"
    assert raw.image_path(0).is_file() and raw.annotation_path(7).is_file()
    assert len(read_labels(raw.labels)) == 8


def test_rerun_reuses_a_complete_fetch_without_network(tmp_path, server, dataset):
    dest = tmp_path / "dataset-master"
    config = config_for(server, dataset)
    fetch_dataset(config, dest, progress=False)
    assert sorted(server.requests) == ["/bccd.zip", "/labels.csv"]

    again = fetch_dataset(config, dest, progress=False)
    assert again.reused and again.images == 8
    assert "already fetched" in again.summary()
    assert len(server.requests) == 2  # no new request

    # --force downloads again; a changed source (another labels URL) does too.
    fetch_dataset(config, dest, force=True, progress=False)
    assert len(server.requests) == 4
    server.routes["/mirror/labels.csv"] = server.routes["/labels.csv"]
    fetch_dataset(config_for(server, dataset, labels="/mirror/labels.csv"), dest, progress=False)
    assert server.requests[-2:] == ["/mirror/labels.csv", "/bccd.zip"]
    assert read_marker(dest)["sources"]["labels"]["url"] == server.url("/mirror/labels.csv")


def test_incomplete_earlier_fetch_is_redone(tmp_path, server, dataset):
    dest = tmp_path / "dataset-master"
    config = config_for(server, dataset)
    fetch_dataset(config, dest, progress=False)
    (dest / "JPEGImages" / "BloodImage_00002.jpg").unlink()  # someone deleted an image
    result = fetch_dataset(config, dest, progress=False)
    assert not result.reused and len(server.requests) == 4
    assert (dest / "JPEGImages" / "BloodImage_00002.jpg").is_file()


def test_refuses_to_replace_a_folder_it_did_not_make(tmp_path, server, dataset):
    dest = tmp_path / "dataset-master"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(DataError, match="not made by `wbc fetch`"):
        fetch_dataset(config_for(server, dataset), dest, force=True, progress=False)
    assert (dest / "mine.txt").read_text() == "keep me"
    assert server.requests == []


def test_progress_bar_goes_to_stderr(tmp_path, server, dataset, capsys):
    messages = []
    fetch_dataset(config_for(server, dataset), tmp_path / "dm", progress=True, echo=messages.append)
    err = capsys.readouterr().err
    assert "100%" in err and "BCCD archive" in err and "labels.csv" in err
    assert any("downloading the BCCD archive" in m for m in messages)


# --------------------------------------------------------------------------------------------
# failures: one line naming the URL and the reason, the alternative, nothing left behind


def test_labels_hash_mismatch(tmp_path, server, dataset):
    config = config_for(server, dataset, **{"fetch.labels_sha256": "ab" * 32})
    expect_failure(
        config, tmp_path / "raw" / "dataset-master", server.url("/labels.csv"), "sha256 mismatch"
    )


def test_archive_hash_mismatch_when_pinned(tmp_path, server, dataset):
    config = config_for(server, dataset, **{"fetch.bccd_sha256": "f" * 64})
    expect_failure(config, tmp_path / "dataset-master", server.url("/bccd.zip"), "sha256 mismatch")


@pytest.mark.parametrize(
    "mode, words",
    [
        ("short", ["download truncated: got", "of"]),
        ("chunked", ["download truncated"]),
    ],
)
def test_truncated_download(tmp_path, server, dataset, mode, words):
    server.routes["/bccd.zip"] = (200, dataset["zip"], mode)
    message = expect_failure(
        config_for(server, dataset), tmp_path / "dataset-master", server.url("/bccd.zip"), *words
    )
    if mode == "short":
        assert f"of {len(dataset['zip']) + 1000:,} bytes" in message


def test_server_error(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (500, b"oops", "ok")
    expect_failure(
        config_for(server, dataset),
        tmp_path / "dataset-master",
        server.url("/bccd.zip"),
        "HTTP 500",
    )


def test_unreachable_host(tmp_path, server, dataset):
    url = closed_port_url("/labels.csv")
    expect_failure(
        config_for(server, dataset, labels=url),
        tmp_path / "dataset-master",
        url,
        "cannot reach host",
    )


def test_stalled_server_times_out(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (200, dataset["zip"], "stall")
    config = config_for(server, dataset, **{"fetch.timeout": 0.3})
    expect_failure(config, tmp_path / "dataset-master", server.url("/bccd.zip"), "timed out")


def test_image_that_does_not_decode(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (200, dataset["bad_zip"], "ok")
    expect_failure(config_for(server, dataset), tmp_path / "dataset-master", "BloodImage_00003.jpg")


def test_unsafe_archive_is_refused(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (200, dataset["unsafe_zip"], "ok")
    expect_failure(
        config_for(server, dataset),
        tmp_path / "dataset-master",
        server.url("/bccd.zip"),
        "refused entry",
    )


def test_not_a_zip(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (200, b"<html>login page</html>", "ok")
    expect_failure(
        config_for(server, dataset), tmp_path / "dataset-master", "not a valid zip archive"
    )


def test_failed_refetch_keeps_the_earlier_fetch(tmp_path, server, dataset):
    dest = tmp_path / "dataset-master"
    fetch_dataset(config_for(server, dataset), dest, progress=False)
    server.routes["/bccd.zip"] = (500, b"oops", "ok")
    expect_failure(config_for(server, dataset), dest, "HTTP 500", force=True)
    assert read_marker(dest) is not None and len(list((dest / "JPEGImages").iterdir())) == 8


def test_download_leaves_no_part_file(tmp_path, server, dataset):
    target = tmp_path / "labels.csv"
    digest = download(server.url("/labels.csv"), target, progress=False)
    assert digest == sha(dataset["labels"]) and target.read_bytes() == dataset["labels"]
    server.routes["/labels.csv"] = (200, dataset["labels"], "short")
    with pytest.raises(DataError, match="download truncated"):
        download(server.url("/labels.csv"), tmp_path / "again.csv", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["labels.csv"]


# --------------------------------------------------------------------------------------------
# the command


def test_cli_fetch(tmp_path, server, dataset):
    runner = CliRunner()
    data = tmp_path / "data"
    args = ["fetch", "--data-dir", str(data)]
    for item in overrides(server, dataset):
        args += ["--set", item]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert "8 images, 8 annotations, 8 label rows" in result.stdout
    assert (data / "raw" / "dataset-master" / "labels.csv").is_file()

    again = runner.invoke(cli, args)
    assert again.exit_code == 0 and "already fetched" in again.stdout
    assert len(server.requests) == 2


def test_cli_fetch_failure_is_one_line(tmp_path, server, dataset):
    server.routes["/bccd.zip"] = (500, b"oops", "ok")
    dest = tmp_path / "elsewhere" / "dataset-master"
    args = ["fetch", "--dest", str(dest)]
    for item in overrides(server, dataset):
        args += ["--set", item]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert errors[0] == result.stderr.rstrip("\n").splitlines()[-1]
    assert server.url("/bccd.zip") in errors[0] and "HTTP 500" in errors[0]
    assert "wbc prepare --raw dataset-master.zip" in errors[0]
    assert "Traceback" not in result.output
    assert not dest.exists() and not dest.parent.exists()  # nor the parent it had to create


def test_marker_is_plain_json(tmp_path, server, dataset):
    dest = tmp_path / "dm"
    fetch_dataset(config_for(server, dataset), dest, progress=False)
    data = json.loads((dest / MARKER_NAME).read_text())
    assert data["counts"] == {"images": 8, "annotations": 8, "label_rows": 8}
