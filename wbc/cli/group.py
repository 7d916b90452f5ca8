"""The ``wbc`` command group; the command modules add their commands to it."""

from __future__ import annotations

import click

from wbc import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wbc")
def cli():
    """wbc: learn to name white blood cell types from blood-smear photographs.

    Typical use: `wbc prepare --raw dataset-master`, then `wbc train`, then
    `wbc predict image.jpg`. Every command takes --config, --set and --data-dir.

    Example: wbc prepare --raw ../shared/data/dataset-master
    """
