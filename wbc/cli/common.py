"""What the ``wbc`` commands share: the common options (config, model, input, engine, executor),
the error boundary (``WbcError`` -> one-line ``click.ClickException``) and output helpers.

Nothing heavy is imported at module level (TensorFlow takes seconds to load), so ``wbc --help``
answers at once. Library errors (``WbcError``) become one-line ``click.ClickException``s.
"""

from __future__ import annotations

import functools
from pathlib import Path

import click

from wbc.core.errors import WbcError
from wbc.core.manifest import write_atomic


def echo_err(message: str) -> None:
    click.echo(message, err=True)


def executor_options(func):
    """--executor, --address, --cpus-per-trial, --gpus-per-trial (cv and tune)."""
    options = [
        click.option(
            "--executor",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local: train here, one after the other; ray: each one a Ray task "
            "(pip install 'wbc[ray]'; --out must be a folder every node sees).",
        ),
        click.option(
            "--address",
            default=None,
            metavar="ADDR",
            help="Ray cluster to use (default: $RAY_ADDRESS if set, else a local Ray "
            "instance started for this command).",
        ),
        click.option(
            "--cpus-per-trial",
            type=click.FloatRange(min=0.1),
            default=1.0,
            show_default=True,
            help="CPUs Ray reserves for each task; TensorFlow's threads are capped to it.",
        ),
        click.option(
            "--gpus-per-trial",
            type=click.FloatRange(min=0),
            default=0.0,
            show_default=True,
            help="GPUs Ray reserves for each task.",
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def ray_options_from(address, cpus_per_trial, gpus_per_trial):
    from wbc.workflows.executors import RayOptions

    return RayOptions(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)


def classifier_here_or_on_ray(run, engine, executor, address, cpus_per_trial, gpus_per_trial):
    """predict / count: ``(Predictor, None)`` here, or ``(None, RayOptions)`` with --executor
    ray (each Ray actor loads its own model)."""
    if executor == "ray":
        return None, ray_options_from(address, cpus_per_trial, gpus_per_trial)
    return predictor_for(run, engine), None


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


def exit_if_failed(failed: int, total: int, what: str) -> None:
    """A batch goes on past bad items, then says how many and exits 1."""
    if failed:
        echo_err(f"{failed} of {total} images could not be {what}")
        click.get_current_context().exit(1)


def load(config_path: Path | None, overrides: tuple[str, ...]):
    import wbc.models  # noqa: F401 - the families register themselves: model.family's choices
    from wbc.core.config import load_config

    return load_config(config_path, overrides)


MODEL_HELP = (
    "Trained model: a .keras file or a run folder (default: the newest runs/*/model.keras)."
)
INPUT_HELP = (
    "For models trained on cell crops: smear = whole-field photos (cut out the WBC first), "
    "crop = already cell crops, auto = square (or nearly: sides within 20%) images are taken "
    "as crops. A crop with a much wider margin than wbc's (its padded cell box at most half "
    "its side) is re-cut around its cell, as the crop stage does."
)
ENGINE_HELP = (
    "Inference runtime: litert (fast on CPU; the model is converted once and cached), "
    "tensorflow, or auto = litert, else tensorflow with a note."
)

# Options shared by the commands that run a trained model (one definition, the same help).
model_option = click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None, help=MODEL_HELP
)
batch_size_option = click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images (or cells) per inference batch.",
)
input_option = click.option(
    "--input",
    "input_kind",
    type=click.Choice(["auto", "smear", "crop"]),
    default="auto",
    show_default=True,
    help=INPUT_HELP,
)
engine_option = click.option(
    "--engine",
    type=click.Choice(["auto", "litert", "tensorflow"]),
    default="auto",
    show_default=True,
    help=ENGINE_HELP,
)


def adapt_option(default: str, what: str):
    """``--adapt``: adapt a copy of the run on the cells being classified
    (``wbc.workflows.predict.adapt_on_sample``); ``what`` names them in the help."""
    return click.option(
        "--adapt",
        type=click.Choice(["auto", "always", "never"]),
        default=default,
        show_default=True,
        help=f"First adapt the model, in memory, to the cells of {what} (no labels; as wbc "
        "adapt --priors never does; nothing written): auto = only when the "
        "out-of-domain flag advises it (at least 10% of at least 20 cells), always, or never "
        "(the run as it is).",
    )


def predictor_for(run, engine: str):
    """The run's model on ``engine``; a note on stderr when auto had to fall back."""
    from wbc.workflows.predict import Predictor

    predictor = Predictor.from_run(run, engine)
    if predictor.fallback:
        echo_err(f"note: {predictor.fallback}")
    return predictor


def progress_bar(total: int, label: str):
    """wbc's one progress bar (``wbc.core.progress``): on stderr when it is a terminal."""
    from wbc.core.progress import bar

    return bar(total, label, unit="image")


def write_output(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        write_atomic(Path(output), text)
    except WbcError as exc:
        raise click.ClickException(str(exc)) from None
    echo_err(f"wrote {output}")
