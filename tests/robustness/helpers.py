"""Running a command on one bad input and judging the outcome, for tests and the report."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner

from tests.conftest import tree_hash  # noqa: F401  (re-exported for the suite)
from wbc.cli import cli


@dataclass
class Outcome:
    exit_code: int
    output: str  # stdout and stderr, as a terminal shows them
    stdout: str = ""

    @property
    def lines(self) -> list[str]:
        return [line for line in self.output.splitlines() if line.strip()]

    @property
    def traceback(self) -> bool:
        return "Traceback" in self.output


def run(args: list[str]) -> Outcome:
    result = CliRunner().invoke(cli, [str(a) for a in args])
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        import traceback

        text += "".join(traceback.format_exception(result.exception))
    return Outcome(result.exit_code, text, result.stdout)


def clean_error(outcome: Outcome, names: str) -> bool:
    """Non-zero exit, one 'Error:' line naming ``names``, no traceback."""
    errors = [line for line in outcome.lines if line.startswith("Error:")]
    return (
        outcome.exit_code != 0 and len(errors) == 1 and names in errors[0] and not outcome.traceback
    )


def manifest_digests(data: Path) -> dict[str, str]:
    found = {}
    for path in sorted(Path(data).rglob("manifest.json")):
        found[str(path.parent.relative_to(data))] = json.loads(path.read_text())["digest"]
    return found


def copy_raw(raw: Path, dest: Path) -> Path:
    shutil.copytree(raw, dest, symlinks=True)
    return dest


@contextlib.contextmanager
def small_filesystem(path: Path, size: str = "256k", read_only: bool = False):
    """A real tiny (or read-only) tmpfs at ``path`` when this machine lets us mount; else None."""
    path.mkdir(parents=True, exist_ok=True)
    options = f"size={size}" + (",ro" if read_only else "")
    mounted = (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True
        ).returncode
        == 0
    )
    try:
        yield path if mounted else None
    finally:
        if mounted:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
