"""``wbc prepare`` and ``wbc fetch``: raw data to prepared folders."""

from __future__ import annotations

from pathlib import Path

import click

from wbc.cli.common import config_options, echo_err, handle_errors, load
from wbc.cli.group import cli

STAGE_NAMES = ("rename", "crop", "augment", "split", "subsets")


@cli.command()
@config_options
@click.option(
    "--raw",
    type=click.Path(path_type=Path),
    default=None,
    help="The raw images: a lab's class folders (ROOT/CLASS/* or ROOT/train|val|test/CLASS/*), "
    "a CSV of file and label (or a folder holding one), the dataset-master folder or the "
    "Kaggle zip (default: DATA_DIR/raw/dataset-master). The layout found is named first.",
)
@click.option("--stage", type=click.Choice(STAGE_NAMES), default=None, help="Run only this stage.")
@click.option("--force", is_flag=True, help="Redo stages even when their manifest matches.")
@handle_errors
def prepare(config_path, overrides, data_dir, raw, stage, force):
    """Run the data stages: rename, crop, augment, split, subsets.

    Each stage reads the previous one's folder under DATA_DIR and writes its own, with a
    manifest.json; a stage whose manifest matches its inputs and parameters is skipped. A lab's
    classes come from its data (rename.classes filters and orders them); files that cannot be
    used are listed with their reason in DATA_DIR/interim/renamed/skipped.csv.

    Example: wbc prepare --raw ../shared/data/tecom-crops --data-dir lab
    """
    from wbc.data.pipeline import prepare as run_prepare

    config = load(config_path, overrides)
    run_prepare(config, data_dir, raw=raw, only=stage, force=force, echo=echo_err)


@cli.command()
@config_options
@click.option(
    "--dest",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder to assemble the dataset-master layout in (default: DATA_DIR/raw/dataset-master).",
)
@click.option(
    "--force",
    is_flag=True,
    help="Download again even when DEST already holds a complete earlier fetch.",
)
@handle_errors
def fetch(config_path, overrides, data_dir, dest, force):
    """Download the public dataset into the dataset-master layout.

    Fetches the BCCD images and VOC annotations (MIT licence) and the study's labels.csv from
    the commits pinned in config.fetch, checks them (labels SHA-256, sizes, every JPEG decodes)
    and writes JPEGImages/, Annotations/, labels.csv and LICENSE into DEST. A complete earlier
    fetch of the same sources is reused without network access. Name a mirror with
    --set fetch.bccd_url=... / fetch.labels_url=...

    Example: wbc fetch && wbc prepare
    """
    from wbc.data.fetch import default_dest, fetch_dataset

    config = load(config_path, overrides)
    result = fetch_dataset(config, dest or default_dest(data_dir), force=force, echo=echo_err)
    click.echo(result.summary())
