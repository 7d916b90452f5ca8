"""Every bad input, through every command that reads it: a clean outcome, and nothing lost.

A clean outcome is either the item skipped or reported with its reason while the run goes on, or
a one-line error naming the file with a non-zero exit; never a traceback; and the raw folder
byte-identical afterwards.
"""

from __future__ import annotations

import errno
import json
import os

import pytest

from tests.conftest import make_raw_folder
from tests.robustness import corpus
from tests.robustness.helpers import clean_error, run, small_filesystem, tree_hash

COUNTS = {"NEUTROPHIL": 3, "EOSINOPHIL": 2, "LYMPHOCYTE": 2, "MONOCYTE": 2}
RENAME_ONLY = ["--stage", "rename", "--set", "rename.find_duplicates=false"]


@pytest.fixture(scope="module")
def pristine_raw(tmp_path_factory):
    return make_raw_folder(tmp_path_factory.mktemp("raw") / "dataset-master", COUNTS)


@pytest.fixture
def raw(pristine_raw, tmp_path):
    from tests.robustness.helpers import copy_raw

    return copy_raw(pristine_raw, tmp_path / "dataset-master")


def skipped(data):
    lines = (data / "interim/renamed/skipped.csv").read_text().splitlines()[1:]
    return {line.split(",")[0]: line for line in lines}


@pytest.mark.parametrize("case", corpus.IMAGE_CASES, ids=lambda c: c.name)
def test_prepare_survives_bad_image(raw, tmp_path, case):
    (raw / "JPEGImages" / corpus.TARGET).write_bytes(case.make())
    before = tree_hash(raw)
    data = tmp_path / "data"
    outcome = run(["prepare", "--raw", raw, "--data-dir", data, *RENAME_ONLY])
    assert outcome.exit_code == 0 and not outcome.traceback, outcome.output
    kept = data / "interim/renamed/NEUTROPHIL.0.jpg"
    if case.prepare == "converted":
        assert kept.is_file()
        manifest = json.loads((data / "interim/renamed/manifest.json").read_text())
        assert 0 in manifest["summary"]["converted"]
    else:
        assert not kept.exists()
        assert case.reason in skipped(data)["0"]
    assert tree_hash(raw) == before


@pytest.mark.parametrize("case", corpus.LABELS_CASES, ids=lambda c: c.name)
def test_prepare_survives_bad_labels(raw, tmp_path, case):
    (raw / "labels.csv").write_bytes(case.data)
    before = tree_hash(raw)
    data = tmp_path / "data"
    outcome = run(["prepare", "--raw", raw, "--data-dir", data, *RENAME_ONLY])
    if case.exit_code:
        assert clean_error(outcome, "labels.csv"), outcome.output
        assert case.phrase in outcome.output
        assert not (data / "interim/renamed").exists()
    else:
        assert outcome.exit_code == 0 and not outcome.traceback, outcome.output
        if case.phrase:
            assert any(case.phrase in line for line in skipped(data).values())
    assert tree_hash(raw) == before


@pytest.mark.parametrize("name", sorted(corpus.ZIP_CASES))
def test_prepare_refuses_escaping_zip_entries(pristine_raw, tmp_path, name):
    entries = {
        f"dataset-master/{p.relative_to(pristine_raw).as_posix()}": p.read_bytes()
        for p in pristine_raw.rglob("*")
        if p.is_file()
    }
    entries[corpus.ZIP_CASES[name]] = b"escaped"
    archive = corpus.zip_with(entries, tmp_path / "dataset-master.zip")
    before = archive.read_bytes()
    outcome = run(["prepare", "--raw", archive, "--data-dir", tmp_path / "data", *RENAME_ONLY])
    assert clean_error(outcome, "dataset-master.zip"), outcome.output
    assert "refused entry" in outcome.output
    assert not (tmp_path / "escape.txt").exists() and not (tmp_path / "data/escape.txt").exists()
    assert not os.path.exists(corpus.ZIP_CASES["absolute-entry"])
    assert archive.read_bytes() == before


def test_prepare_ignores_a_symlink_loop(raw, tmp_path):
    corpus.make_symlink_loop(raw / "JPEGImages")
    before = tree_hash(raw)
    outcome = run(["prepare", "--raw", raw, "--data-dir", tmp_path / "data", *RENAME_ONLY])
    assert outcome.exit_code == 0 and not outcome.traceback, outcome.output
    assert tree_hash(raw) == before


def test_read_only_output_folder(raw, tmp_path):
    before = tree_hash(raw)
    with small_filesystem(tmp_path / "ro", read_only=True) as mounted:
        if mounted is None:  # no mount permission: make the writer fail as a read-only disk does
            from unittest import mock

            def refuse(*args, **kwargs):
                raise OSError(errno.EROFS, "Read-only file system", str(tmp_path / "ro"))

            with mock.patch("pathlib.Path.mkdir", refuse):
                outcome = run(
                    ["prepare", "--raw", raw, "--data-dir", tmp_path / "ro", *RENAME_ONLY]
                )
        else:
            outcome = run(["prepare", "--raw", raw, "--data-dir", mounted / "data", *RENAME_ONLY])
    assert clean_error(outcome, str(tmp_path / "ro")), outcome.output
    assert "not writable" in outcome.output
    assert tree_hash(raw) == before


def test_full_disk(raw, tmp_path):
    before = tree_hash(raw)
    with small_filesystem(tmp_path / "full", size="16k") as mounted:
        if mounted is None:
            from unittest import mock

            def full(src, dst, *a, **k):
                raise OSError(errno.ENOSPC, "No space left on device", str(dst))

            with mock.patch("shutil.copyfile", full):
                outcome = run(
                    ["prepare", "--raw", raw, "--data-dir", tmp_path / "full", *RENAME_ONLY]
                )
        else:
            outcome = run(["prepare", "--raw", raw, "--data-dir", mounted / "data", *RENAME_ONLY])
            leftovers = [p for p in (mounted / "data").rglob("*") if ".tmp" in p.name]
            assert not leftovers
    assert clean_error(outcome, "no space left on device"), outcome.output
    assert tree_hash(raw) == before
