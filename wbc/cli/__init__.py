"""The ``wbc`` command line: a thin click layer over the library, one module per command group.

Nothing heavy is imported at module level (TensorFlow takes seconds to load), so ``wbc --help``
answers at once. Library errors (``WbcError``) become one-line ``click.ClickException``s
(``common.handle_errors``).
"""

from __future__ import annotations

from wbc.cli import data, inference, shipping, training  # noqa: F401 - each adds its commands
from wbc.cli.group import cli


def main() -> None:
    cli(prog_name="wbc")


__all__ = ["cli", "main"]
