import errno
import zipfile

import pytest

from wbc.core.errors import DataError
from wbc.core.manifest import MANIFEST_NAME, Manifest, run_stage
from wbc.data.raw import locate_raw, safe_extract


def build_two_files(tmp):
    (tmp / "a.txt").write_text("a")
    (tmp / "sub").mkdir()
    (tmp / "sub" / "b.txt").write_text("b")
    return {"n": 2}


def test_run_stage_writes_manifest_and_skips_when_current(tmp_path):
    dst = tmp_path / "out"
    first = run_stage("demo", dst, {"p": 1}, {"in": "x"}, build_two_files)
    assert not first.skipped
    assert set(first.outputs) == {"a.txt", "sub/b.txt"}
    assert (dst / MANIFEST_NAME).is_file()
    calls = []
    second = run_stage("demo", dst, {"p": 1}, {"in": "x"}, lambda t: calls.append(t) or {})
    assert second.skipped and not calls
    assert second.digest == first.digest


def test_changed_params_inputs_or_missing_outputs_redo(tmp_path):
    dst = tmp_path / "out"
    run_stage("demo", dst, {"p": 1}, {"in": "x"}, build_two_files)
    assert not run_stage("demo", dst, {"p": 2}, {"in": "x"}, build_two_files).skipped
    assert not run_stage("demo", dst, {"p": 2}, {"in": "y"}, build_two_files).skipped
    (dst / "a.txt").unlink()
    assert not run_stage("demo", dst, {"p": 2}, {"in": "y"}, build_two_files).skipped
    assert not run_stage("demo", dst, {"p": 2}, {"in": "y"}, build_two_files, force=True).skipped


def test_failed_build_keeps_the_old_output_and_leaves_no_temp(tmp_path):
    dst = tmp_path / "out"
    good = run_stage("demo", dst, {"p": 1}, {}, build_two_files)

    def broken(tmp):
        (tmp / "partial.txt").write_text("half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        run_stage("demo", dst, {"p": 2}, {}, broken)
    assert Manifest.load(dst).digest == good.digest
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_disk_full_is_a_one_line_error(tmp_path):
    def full(tmp):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "x.jpg"))

    with pytest.raises(DataError, match="x.jpg: no space left on device"):
        run_stage("demo", tmp_path / "out", {}, {}, full)
    assert not (tmp_path / "out").exists()


def test_leftovers_of_a_killed_run_are_cleaned(tmp_path):
    (tmp_path / ".out.tmp").mkdir()
    (tmp_path / ".out.tmp" / "junk").write_text("x")
    (tmp_path / ".out.old").mkdir()
    manifest = run_stage("demo", tmp_path / "out", {}, {}, build_two_files)
    assert "junk" not in manifest.outputs
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def make_zip(path, entries):
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return path


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/abs/evil.txt"])
def test_safe_extract_refuses_escaping_entries(tmp_path, name):
    archive = make_zip(tmp_path / "bad.zip", {"ok.txt": "fine", name: "evil"})
    with pytest.raises(DataError, match="refused entry"):
        safe_extract(archive, tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not (tmp_path / "evil.txt").exists()


def test_truncated_zip_is_refused(tmp_path):
    archive = make_zip(tmp_path / "a.zip", {"x.txt": "x" * 1000})
    archive.write_bytes(archive.read_bytes()[:50])
    with pytest.raises(DataError):
        locate_raw(archive, tmp_path / "raw")


def test_nested_zip_layout_is_found(tiny_raw, tmp_path):
    entries = {}
    for path in tiny_raw.rglob("*"):
        if path.is_file():
            entries[f"dataset-master/dataset-master/{path.relative_to(tiny_raw).as_posix()}"] = (
                path.read_bytes()
            )
    archive = make_zip(tmp_path / "dataset-master.zip", entries)
    raw = locate_raw(archive, tmp_path / "raw")
    assert raw.labels.is_file() and raw.images.is_dir()
    assert raw.root == tmp_path / "raw" / "dataset-master" / "dataset-master" / "dataset-master"


def test_missing_images_folder_is_named(tmp_path):
    (tmp_path / "labels.csv").write_text(",Image,Category\n,1,NEUTROPHIL\n")
    with pytest.raises(DataError, match="JPEGImages: missing"):
        locate_raw(tmp_path)


def test_missing_raw_folder(tmp_path):
    with pytest.raises(DataError, match="not found"):
        locate_raw(tmp_path / "nope")
