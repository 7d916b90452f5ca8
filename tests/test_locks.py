"""One writer per folder: a second wbc process on a folder in use stops with a clear error."""

import subprocess
import sys
import textwrap

import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.errors import DataError
from wbc.core.locks import LOCK_NAME, folder_lock, holds_folder_lock


def hold_in_another_process(folder):
    """A child process that takes ``folder``'s lock and keeps it until its stdin closes."""
    code = textwrap.dedent(f"""
        import sys
        from wbc.core.locks import folder_lock
        with folder_lock({str(folder)!r}, "testing"):
            print("locked", flush=True)
            sys.stdin.read()
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert child.stdout.readline().strip() == "locked"
    return child


def release(child):
    child.stdin.close()
    assert child.wait(timeout=60) == 0


def test_a_second_holder_is_refused_with_the_pid_and_the_lock_file_goes_away(tmp_path):
    folder = tmp_path / "run"
    child = hold_in_another_process(folder)
    try:
        with pytest.raises(
            DataError,
            match=rf"another wbc process \(pid {child.pid}\) is "
            r"training in this folder",
        ):
            with folder_lock(folder, "training"):
                pass
    finally:
        release(child)
    assert not folder.exists()  # the holder made the folder for its lock, and cleaned it up
    folder.mkdir()
    with folder_lock(folder, "training"):  # free again once the holder has finished
        assert (folder / LOCK_NAME).read_text().strip().isdigit()
    assert folder.is_dir() and not (folder / LOCK_NAME).exists()


def test_a_killed_holder_leaves_the_folder_free(tmp_path):
    folder = tmp_path / "run"
    child = hold_in_another_process(folder)
    child.kill()
    child.wait(timeout=60)
    assert (folder / LOCK_NAME).exists()  # a SIGKILL cannot clean up, but the kernel unlocks
    with folder_lock(folder, "training"):
        pass
    assert not (folder / LOCK_NAME).exists()


def test_a_folder_made_only_for_the_lock_is_removed_when_the_work_fails(tmp_path):
    folder = tmp_path / "new-run"
    with pytest.raises(RuntimeError):
        with folder_lock(folder, "training"):
            raise RuntimeError("bad config")
    assert not folder.exists()


def test_the_decorator_locks_the_first_folder_given(tmp_path):
    seen = []

    @holds_folder_lock("working", "resume_dir", "run_dir")
    def work(run_dir=None, resume_dir=None):
        seen.append(sorted(p.name for p in (resume_dir or run_dir).iterdir()))

    work(run_dir=tmp_path / "a")
    work(run_dir=tmp_path / "a", resume_dir=tmp_path / "b")
    assert seen == [[LOCK_NAME], [LOCK_NAME]]
    assert not (tmp_path / "b" / LOCK_NAME).exists()


def test_train_and_prepare_refuse_a_folder_in_use(tmp_path, tiny_raw):
    run_dir, data_dir = tmp_path / "run", tmp_path / "data"
    holders = [hold_in_another_process(run_dir), hold_in_another_process(data_dir)]
    try:
        runner = CliRunner()
        trained = runner.invoke(
            cli, ["train", "--data-dir", str(data_dir), "--run-dir", str(run_dir), "--epochs", "1"]
        )
        prepared = runner.invoke(
            cli, ["prepare", "--raw", str(tiny_raw), "--data-dir", str(data_dir)]
        )
    finally:
        for child in holders:
            release(child)
    assert trained.exit_code == 1
    assert f"{run_dir}: another wbc process (pid {holders[0].pid}) is training" in trained.output
    assert prepared.exit_code == 1
    assert f"(pid {holders[1].pid}) is preparing data" in prepared.output
    assert "Traceback" not in trained.output + prepared.output
