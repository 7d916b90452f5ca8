"""The ``wbc`` command line: a thin click layer over the library.

Nothing heavy is imported at module level (TensorFlow takes seconds to load), so ``wbc --help``
answers at once. Library errors (``WbcError``) become one-line ``click.ClickException``s.
"""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from wbc import __version__
from wbc.errors import WbcError

STAGE_NAMES = ("rename", "crop", "augment", "split", "subsets")


def _echo_err(message: str) -> None:
    click.echo(message, err=True)


def config_options(func):
    """--config, --set and --data-dir, shared by every command."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="YAML config file (default: built-in defaults = configs/default.yaml).",
    )
    @click.option(
        "--set",
        "overrides",
        multiple=True,
        metavar="SECTION.KEY=VALUE",
        help="Override one config key, e.g. --set augment.per_class=300 (repeatable).",
    )
    @click.option(
        "--data-dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=Path("data"),
        show_default=True,
        help="Folder that holds raw/, interim/ and processed/.",
    )
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        return func(*args, **kwargs)

    return wrapper


def handle_errors(func):
    """Turn library errors into clean one-line CLI errors (exit 1, no traceback)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except WbcError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            raise click.ClickException("interrupted; rerun the same command to continue") from None
        except MemoryError:
            raise click.ClickException("out of memory; try a smaller subset or batch") from None

    return wrapper


def load(config_path: Path | None, overrides: tuple[str, ...]):
    from wbc.config import load_config

    return load_config(config_path, overrides)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="wbc")
def cli():
    """wbc: learn to name white blood cell types from blood-smear photographs.

    Typical use: `wbc prepare --raw dataset-master`, then `wbc train`, then
    `wbc predict image.jpg`. Every command takes --config, --set and --data-dir.

    Example: wbc prepare --raw ../shared/data/dataset-master
    """


@cli.command()
@config_options
@click.option(
    "--raw",
    type=click.Path(path_type=Path),
    default=None,
    help="The dataset-master folder or the Kaggle zip (default: DATA_DIR/raw/dataset-master).",
)
@click.option("--stage", type=click.Choice(STAGE_NAMES), default=None, help="Run only this stage.")
@click.option("--force", is_flag=True, help="Redo stages even when their manifest matches.")
@handle_errors
def prepare(config_path, overrides, data_dir, raw, stage, force):
    """Run the data stages: rename, crop, augment, split, subsets.

    Each stage reads the previous one's folder under DATA_DIR and writes its own, with a
    manifest.json; a stage whose manifest matches its inputs and parameters is skipped.

    Example: wbc prepare --raw ../shared/data/dataset-master --set augment.per_class=300
    """
    from wbc.pipeline import prepare as run_prepare

    config = load(config_path, overrides)
    run_prepare(config, data_dir, raw=raw, only=stage, force=force, echo=_echo_err)


@cli.command()
@config_options
@click.option("--subset", type=click.Choice(["small", "medium", "full"]), default=None,
              help="Which prepared subset to train on (default: train.subset).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Number of epochs (default: train.epochs).")
@click.option("--run-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Run folder (default: runs/<timestamp>-<subset>).")
@click.option("--resume", "resume_dir", type=click.Path(file_okay=False, path_type=Path),
              default=None, help="Continue a killed run from its last finished epoch.")
@click.option("--strategy", type=click.Choice(["default", "mirrored", "multiworker"]),
              default="default", show_default=True,
              help="tf.distribute strategy: mirrored = all local GPUs, multiworker = TF_CONFIG.")
@click.option("--init", "init_model", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Start from this trained model's weights (fine-tuning).")
@handle_errors
def train(config_path, overrides, data_dir, subset, epochs, run_dir, resume_dir, strategy,
          init_model):
    """Train the study's CNN on a prepared subset and evaluate it on the test side.

    Writes model.keras (best val_loss), last.keras, history.csv, config.yaml, classes.json,
    metrics.json, curves.png and confusion_matrix.png into the run folder.

    Example: wbc train --subset small --epochs 30
    """
    from wbc.train import train as run_train

    config = load(config_path, overrides)
    run_train(
        config,
        data_dir=data_dir,
        subset=subset,
        epochs=epochs,
        run_dir=run_dir,
        resume_dir=resume_dir,
        strategy=strategy,
        init_model=init_model,
        echo=click.echo,
    )


def main() -> None:
    cli(prog_name="wbc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
