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
from wbc.manifest import write_atomic

STAGE_NAMES = ("rename", "crop", "augment", "split", "subsets")


def _echo_err(message: str) -> None:
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


def _ray_options(address, cpus_per_trial, gpus_per_trial):
    from wbc.executors import RayOptions

    return RayOptions(address=address, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial)


def _classifier_here_or_on_ray(run, engine, executor, address, cpus_per_trial, gpus_per_trial):
    """predict / count: ``(Predictor, None)`` here, or ``(None, RayOptions)`` with --executor
    ray (each Ray actor loads its own model)."""
    if executor == "ray":
        return None, _ray_options(address, cpus_per_trial, gpus_per_trial)
    return _predictor(run, engine), None


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
        _echo_err(f"{failed} of {total} images could not be {what}")
        click.get_current_context().exit(1)


def needs_tensorflow(func):
    """Load TensorFlow quietly before a command that uses it (its start-up chatter hidden)."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        from wbc.tfsetup import import_tensorflow

        import_tensorflow()
        return func(*args, **kwargs)

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
    from wbc.fetch import default_dest, fetch_dataset

    config = load(config_path, overrides)
    result = fetch_dataset(config, dest or default_dest(data_dir), force=force, echo=_echo_err)
    click.echo(result.summary())


@cli.command()
@config_options
@click.option(
    "--subset",
    type=click.Choice(["small", "medium", "full"]),
    default=None,
    help="Which prepared subset to train on (default: train.subset).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Number of epochs (default: train.epochs).",
)
@click.option(
    "--run-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Run folder (default: runs/<timestamp>-<subset>).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    metavar="RUN_DIR",
    help="Continue this run from its last finished epoch, with its own config.yaml "
    "(--epochs may raise the total).",
)
@click.option(
    "--strategy",
    type=click.Choice(["default", "mirrored", "multiworker"]),
    default="default",
    show_default=True,
    help="tf.distribute strategy: mirrored = all local GPUs (else all logical CPUs), "
    "multiworker = the workers in TF_CONFIG.",
)
@click.option(
    "--init",
    "init_model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="MODEL",
    help="Adapt a trained model (fine-tuning): a Keras model starts from its weights "
    "(same architecture); a features model (model.skops) is refitted on its own "
    "training crops plus these, weighted to equal totals.",
)
@handle_errors
@needs_tensorflow
def train(
    config_path, overrides, data_dir, subset, epochs, run_dir, resume_dir, strategy, init_model
):
    """Train a model (model.family; default: the features recipe) and evaluate it on the test side.

    Reads DATA_DIR/processed/SUBSET/{train,test}; the test side is also the validation data,
    as in the study. Writes the family's model file (model.skops; for the CNNs model.keras at
    the best val_loss, last.keras, history.csv, curves.png, backup/ and tensorboard/),
    config.yaml, classes.json, metrics.json, confusion_matrix.png and MODEL_CARD.md into the
    run folder, and ends with one summary line. A killed run continues with --resume RUN_DIR.

    Example: wbc train --config configs/study.yaml --subset small --epochs 30
    """
    from wbc.train import train as run_train

    config = load(config_path, overrides)
    # On --resume without --data-dir, the run's own recorded data folder is used.
    source = click.get_current_context().get_parameter_source("data_dir")
    explicit = source is not click.core.ParameterSource.DEFAULT
    if resume_dir is not None and (config_path or overrides):
        _echo_err(
            f"note: --config/--set are ignored with --resume; {resume_dir}/config.yaml "
            "is used (--epochs can still raise the total)"
        )
    run_train(
        config,
        data_dir=data_dir if explicit or resume_dir is None else None,
        subset=subset,
        epochs=epochs,
        run_dir=run_dir,
        resume_dir=resume_dir,
        strategy=strategy,
        init_model=init_model,
        echo=click.echo,
    )


MODEL_HELP = (
    "Trained model: a .keras file or a run folder (default: the newest runs/*/model.keras)."
)
INPUT_HELP = (
    "For models trained on cell crops: smear = whole-field photos (cut out the WBC first), "
    "crop = already cell crops, auto = square (or nearly: sides within 20%) images are taken "
    "as crops."
)
ENGINE_HELP = (
    "Inference runtime: litert (fast on CPU; the model is converted once and cached), "
    "tensorflow, or auto = litert, else tensorflow with a note."
)

# Options shared by the commands that run a trained model (one definition, the same help).
model_option = click.option(
    "--model", "model_path", type=click.Path(path_type=Path), default=None, help=MODEL_HELP
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


def _predictor(run, engine: str):
    """The run's model on ``engine``; a note on stderr when auto had to fall back."""
    from wbc.predict import Predictor

    predictor = Predictor.from_run(run, engine)
    if predictor.fallback:
        _echo_err(f"note: {predictor.fallback}")
    return predictor


def _progress(total: int, label: str):
    """wbc's one progress bar (``wbc.progress``): on stderr when it is a terminal."""
    from wbc.progress import bar

    return bar(total, label, unit="image")


def _write_output(text: str, output: Path | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    try:
        write_atomic(Path(output), text)
    except WbcError as exc:
        raise click.ClickException(str(exc)) from None
    _echo_err(f"wrote {output}")


@cli.command()
@click.argument(
    "paths", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="IMAGE_OR_FOLDER..."
)
@model_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
    help="Output format (csv and json are for other programs).",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the results to this file instead of stdout.",
)
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=3,
    show_default=True,
    help="How many of the most likely classes to list per image.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per inference batch.",
)
@input_option
@engine_option
@executor_options
@handle_errors
@needs_tensorflow
def predict(
    paths,
    model_path,
    fmt,
    output,
    top,
    batch_size,
    input_kind,
    engine,
    executor,
    address,
    cpus_per_trial,
    gpus_per_trial,
):
    """Name the white blood cell type in each image.

    Folders are searched for jpg, jpeg, png, bmp and tif images (not following symlinked
    folders). Each image is preprocessed as the model's training images were (image size and
    cropping come from the run's config.yaml). An unreadable image gets a row with an error and
    the others go on; the exit code is then 1. --executor ray classifies on a Ray cluster (Ray
    Data, one model load per worker), with the same rows in the same order.

    Example: wbc predict smears/ --format csv --output predictions.csv --top 2
    """
    from wbc.predict import format_predictions, predict_files, require_images
    from wbc.runs import load_run, resolve_model_path

    files = require_images(paths)
    run = load_run(resolve_model_path(model_path))
    predictor, on_ray = _classifier_here_or_on_ray(
        run, engine, executor, address, cpus_per_trial, gpus_per_trial
    )
    with _progress(len(files), "predicting") as bar:
        rows = predict_files(
            run,
            files,
            top=top,
            input_kind=input_kind,
            batch_size=batch_size,
            progress=bar.update if bar is not None else None,
            predictor=predictor,
            ray_options=on_ray,
        )
    text = format_predictions(rows, fmt, top, model=str(run.model_path), classes=run.classes)
    _write_output(text, output)
    exit_if_failed(sum(1 for row in rows if row["error"]), len(rows), "classified")


@cli.command()
@click.argument("folder", type=click.Path(path_type=Path))
@model_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Output format.",
)
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also save a bar chart of the differential to this PNG file.",
)
@click.option(
    "--report",
    "report",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write one self-contained HTML page: every smear with its "
    "cells boxed and labelled, then the differential.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Cells per inference batch.",
)
@input_option
@engine_option
@executor_options
@handle_errors
@needs_tensorflow
def count(
    folder,
    model_path,
    fmt,
    plot,
    report,
    batch_size,
    input_kind,
    engine,
    executor,
    address,
    cpus_per_trial,
    gpus_per_trial,
):
    """Count the white blood cells of one sample by type (a WBC differential).

    Classifies every image in FOLDER and prints the count and percentage per class. A model
    trained on cell crops (crop.mode boxes/detect) counts every WBC the detector finds in each
    image; otherwise each image is one cell. Unreadable images are listed and not counted (exit
    code 1).

    Example: wbc count sample-042/ --plot differential.png --report sample-042.html
    """
    from wbc.count import count_cells, format_count, plot_counts
    from wbc.predict import require_images
    from wbc.runs import load_run, resolve_model_path

    if not folder.is_dir():
        problem = "not a folder" if folder.exists() else "folder not found"
        raise click.ClickException(f"{folder}: {problem}")
    files = require_images([folder])
    run = load_run(resolve_model_path(model_path))
    predictor, on_ray = _classifier_here_or_on_ray(
        run, engine, executor, address, cpus_per_trial, gpus_per_trial
    )
    with _progress(len(files), "counting") as bar:
        result = count_cells(
            run,
            folder,
            files=files,
            input_kind=input_kind,
            batch_size=batch_size,
            predictor=predictor,
            progress=bar.update if bar is not None else None,
            details=report is not None,
            ray_options=on_ray,
        )
    if report is not None:
        from wbc.report import count_report

        count_report(result, report)
        del result["files"]  # the page has them; the table and JSON stay as they were
        _echo_err(f"wrote {report}")
    for item in result["failed"]:
        _echo_err(f"{item['file']}: {item['error']}")
    if result["no_cells"]:
        _echo_err(f"no white blood cell found in {len(result['no_cells'])} image(s)")
    if fmt == "table":
        if result["per"] == "cell":
            what = f"{result['cells']} cells in {result['classified_images']} images"
        else:
            what = f"{result['cells']} images (one cell each)"
        click.echo(f"{folder}: {what}; model {run.model_path}")
    click.echo(format_count(result, fmt), nl=False)
    if plot is not None:
        plot_counts(result, plot)
        _echo_err(f"wrote {plot}")
    exit_if_failed(len(result["failed"]), result["images"], "read")


@cli.command()
@click.argument("image", type=click.Path(path_type=Path))
@model_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="PNG file to write: the image with the heat map over it, same size.",
)
@input_option
@handle_errors
@needs_tensorflow
def explain(image, model_path, output, input_kind):
    """Show why the model chose its class for an image.

    A CNN (study, cnn) is explained with Grad-CAM: the gradient of the predicted class's score
    with respect to the last feature map, drawn as a heat map (red = most important) over the
    image. A features model lists the measurements (nucleus/cell ratio, lobe count, granule
    colour, ...) that moved its decision most, and draws the regions it measured (nucleus, the
    cytoplasm inside its hull, the band around it). For a model trained on cell crops, the map
    covers the WBC's crop square (outlined).

    Example: wbc explain smear.jpg --output smear-gradcam.png
    """
    from wbc.explain import explain_image
    from wbc.runs import load_run, resolve_model_path

    run = load_run(resolve_model_path(model_path))
    result = explain_image(run, image, output, input_kind=input_kind)
    click.echo(f"{result['file']}: {result['class']} ({result['probability']:.3f})")
    for item in result.get("features", []):
        click.echo(
            f"  {item['name']:<34} {item['value']:>9.4f}  (typical {item['typical']:.4f}, "
            f"moves {result['class']} by {item['effect']:+.3f})"
        )
    _echo_err(f"wrote {output}")


@cli.command()
@model_option
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of class folders (DATA/CLASS/*.jpg|png|bmp|tif), e.g. the test side "
    "data/processed/small/test.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="Print a readable table or JSON.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write the metrics as JSON to this file.",
)
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=64,
    show_default=True,
    help="Images per inference batch.",
)
@handle_errors
@needs_tensorflow
def evaluate(model_path, data, fmt, output, batch_size):
    """Score a trained model on a folder of class folders.

    Prints accuracy, macro-F1, per-class precision, recall, F1 and support, and the confusion
    matrix (rows: true class). Images are preprocessed exactly as the model's training images
    (settings from the run's config.yaml); a class folder the model does not know is an error,
    and unreadable images are skipped and listed.

    Example: wbc evaluate --model runs/20240101-120000-small --data data/processed/small/test
    """
    import json

    from wbc.evaluate import evaluate as run_evaluate
    from wbc.evaluate import format_table, write_metrics

    metrics = run_evaluate(model_path, data, batch_size=batch_size, echo=_echo_err)
    if fmt == "json":
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(format_table(metrics))
    if output is not None:
        try:
            write_metrics(metrics, output)
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from None
        _echo_err(f"wrote {output}")


@cli.command()
@click.argument("run_dir", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="PNG file to write (default: RUN_DIR/curves.png).",
)
@handle_errors
def plot(run_dir, output):
    """Draw a run's training curves from its history.csv.

    Two panels (accuracy and loss, train and validation, per epoch) under the study's caption
    line: acc=... (val_acc=...) | loss=... (val_loss=...) | lowest val_loss=... . Works while the
    run is still training. Also redraws confusion_matrix.png when metrics.json is there.

    Example: wbc plot runs/20240101-120000-small
    """
    import json

    from wbc.plots import caption, plot_confusion, plot_history, read_history

    if not run_dir.is_dir():
        raise click.ClickException(f"{run_dir}: folder not found")
    target = output or run_dir / "curves.png"
    metrics_path = run_dir / "metrics.json"
    trained_in_epochs = True
    if not (run_dir / "history.csv").is_file() and metrics_path.is_file():
        try:  # a family fitted in one step (features) has no epochs to draw
            trained_in_epochs = (
                json.loads(metrics_path.read_text(encoding="utf-8")).get("epochs_run", 1) > 0
            )
        except (OSError, ValueError, AttributeError):
            pass
    if trained_in_epochs:
        plot_history(run_dir / "history.csv", target, title=run_dir.name)
        click.echo(caption(read_history(run_dir / "history.csv")))
        _echo_err(f"wrote {target}")
    else:
        _echo_err(f"{run_dir}: fitted in one step (no epochs), so no training curves")
    if output is None and metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            matrix, classes = metrics["confusion_matrix"], metrics["classes"]
        except (OSError, ValueError, KeyError, TypeError):
            _echo_err(f"{metrics_path}: unreadable; confusion_matrix.png not redrawn")
            return
        plot_confusion(
            matrix, classes, run_dir / "confusion_matrix.png", title=f"{run_dir.name}: test side"
        )
        _echo_err(f"wrote {run_dir / 'confusion_matrix.png'}")


@cli.command()
@config_options
@click.option(
    "--folds",
    type=click.IntRange(min=2),
    default=5,
    show_default=True,
    help="Number of folds K (each trains one model).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs per fold (default: train.epochs).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: runs/cv-<timestamp>); rerun with the same --out to "
    "continue: finished folds are not retrained.",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="At most N training images per class per fold (a seeded draw spread evenly "
    "over the sources; default: all).",
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Cross-validate this plain folder of class folders (DATA/CLASS/*.jpg, no "
    "augmentation) instead of the prepared data; folds are stratified over files.",
)
@click.option(
    "--init",
    "init_model",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    metavar="MODEL",
    help="Adapt this trained model in every fold (fine-tuning, as wbc train --init: "
    "Keras weights, or a features model refitted with its training crops).",
)
@click.option(
    "--score",
    type=click.Choice(["last", "best"]),
    default="last",
    show_default=True,
    help="Which model the headline numbers score: last = the final epoch; best = the "
    "lowest val_loss epoch, chosen on the test fold itself (optimistic).",
)
@click.option(
    "--repeats",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Repeated CV: deal the folds this many times with different seeds "
    "(repeats x folds models), so that a few monocytes per fold do not decide.",
)
@executor_options
@handle_errors
@needs_tensorflow
def cv(
    config_path,
    overrides,
    data_dir,
    folds,
    epochs,
    out,
    per_class,
    data,
    init_model,
    score,
    repeats,
    executor,
    address,
    cpus_per_trial,
    gpus_per_trial,
):
    """Cross-validate: K models on grouped, stratified folds of the source images.

    Per class, the source images (same-field duplicates kept together) are dealt into K folds
    (scikit-learn's StratifiedGroupKFold); --repeats R deals them R times with other seeds.
    Fold k trains on every augmented image of the other folds' sources and is tested on the
    original images of its own sources only. Writes one run folder per fold, cv.json and cv.md
    (each fold's accuracy, macro-F1, per-class F1 and n_test; mean +/- std; the config) and
    prints the table. Needs `wbc prepare` (rename and augment; crop when crop.mode is set); an
    augment setting that differs from the prepared one is augmented into the output folder.

    With --executor ray each unfinished fold trains as one Ray task (docs/SCALING.md); the
    folds, seeds and numbers are those of the local executor.

    Example: wbc cv --folds 5 --repeats 3 --per-class 600 --out runs/cv-baseline
    """
    from wbc.cv import cross_validate, format_table, headline

    config = load(config_path, overrides)
    report = cross_validate(
        config,
        data_dir=data_dir,
        folds=folds,
        epochs=epochs,
        out=out,
        per_class=per_class,
        data=data,
        init_model=init_model,
        score=score,
        echo=_echo_err,
        train_echo=click.echo,
        repeats=repeats,
        executor=executor,
        ray_options=_ray_options(address, cpus_per_trial, gpus_per_trial),
    )
    click.echo(format_table(report))
    click.echo(headline(report))
    _echo_err(f"wrote {Path(report['out']) / 'cv.json'} and cv.md")


@cli.command()
@config_options
@click.option(
    "--grid",
    "grid_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("configs/grid.yaml"),
    show_default=True,
    help="YAML file mapping dotted config keys to lists of values to try.",
)
@click.option(
    "--subset",
    type=click.Choice(["small", "medium", "full"]),
    default=None,
    help="Prepared subset every cell trains on (default: train.subset).",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Epochs per run (default: train.epochs; a grid may list train.epochs).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Output folder (default: runs/tune-<grid name>); finished cells in it are not rerun.",
)
@click.option(
    "--cv",
    "cv_folds",
    type=click.IntRange(min=2),
    default=None,
    metavar="K",
    help="Score each cell by K-fold cross-validation instead of the single split "
    "(then augment.* keys may be tuned too).",
)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="With --cv: at most N training images per class per fold (default: all).",
)
@click.option(
    "--sort",
    "sort",
    default=None,
    metavar="COLUMN",
    help="Results column to rank by (default: val_acc_final; with --cv: "
    "cv_macro_f1). Losses, std, epochs and seconds rank ascending.",
)
@executor_options
@handle_errors
@needs_tensorflow
def tune(
    config_path,
    overrides,
    data_dir,
    grid_path,
    subset,
    epochs,
    out,
    cv_folds,
    per_class,
    sort,
    executor,
    address,
    cpus_per_trial,
    gpus_per_trial,
):
    """Train every combination of a grid of settings and rank them.

    Each cell of the cross product of the grid's values trains on the prepared subset (or,
    with --cv K, is cross-validated) with --config/--set as the base. Writes a run folder per
    cell (OUT/cell-<hash of its settings>) and results.csv and results.md, best first: the
    settings, final and best val accuracy, lowest val loss, epochs and seconds per run. A
    rerun skips finished cells.

    With --executor ray each unfinished cell (with --cv: each fold) trains as one Ray task.

    Example: wbc tune --grid configs/grid.yaml --subset small --epochs 10
    """
    from wbc.tune import tune as run_tune

    if per_class is not None and cv_folds is None:
        raise click.UsageError("--per-class needs --cv")
    config = load(config_path, overrides)
    result = run_tune(
        config,
        grid_path,
        data_dir=data_dir,
        subset=subset,
        epochs=epochs,
        out=out,
        cv=cv_folds,
        per_class=per_class,
        sort=sort,
        echo=_echo_err,
        train_echo=click.echo,
        executor=executor,
        ray_options=_ray_options(address, cpus_per_trial, gpus_per_trial),
    )
    click.echo(result["table"])
    _echo_err(
        f"{result['trained']} cell(s) trained, {result['skipped']} done before; wrote "
        f"{result['out'] / 'results.csv'} and results.md"
    )


@cli.command(hidden=True)  # a developer tool (`make bench`), kept out of the user's command list
@click.option(
    "--raw",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Measure on this dataset-master folder's JPEGs (default: generated 640x480 smears).",
)
@click.option("--quick", is_flag=True, help="Fewer repeats and images: a smoke run (< 2 min).")
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="JSON file to write (default: runs/bench-<timestamp>.json).",
)
@click.option(
    "--only",
    multiple=True,
    type=click.Choice(["cli", "matmul", "train", "augment", "predict", "families", "memory"]),
    help="Run only this section (repeatable; default: all).",
)
@handle_errors
def bench(raw, quick, json_path, only):
    """Measure training feeds, augmentation, predict and CLI speed on this machine.

    Prints a table (medians of several repeats after a warm-up, with the load average) and
    writes a JSON file. TF_ENABLE_ONEDNN_OPTS=0 in the environment measures without oneDNN.
    See docs/PERFORMANCE.md.

    Example: wbc bench --quick --only train
    """
    from wbc.bench import run as run_bench
    from wbc.bench import table

    results = run_bench(raw=raw, quick=quick, json_path=json_path, only=only, echo=_echo_err)
    click.echo(table(results))
    _echo_err(f"wrote {results['json_path']}")


@cli.command()
@click.argument("run_path", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="HTML file to write (default: RUN/report.html).",
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Test images (class folders) for the gallery of mistakes (default: the "
    "run's own test side, from run.json).",
)
@handle_errors
@needs_tensorflow
def report(run_path, output, data):
    """Write one self-contained HTML page about a run or a `wbc cv` folder.

    Images are inlined, there is no script and nothing is fetched, so the file opens anywhere.
    A run's page holds its settings and data, the curves with the study's caption, the
    confusion matrix and per-class table, and the most confident mistakes on the test side,
    each explained (Grad-CAM or the decisive measurements). A cv folder's page holds the fold
    table with mean and std.

    Example: wbc report runs/20240101-120000-full -o report.html
    """
    from wbc.report import run_report

    folder = run_path.parent if run_path.is_file() else run_path
    target = output or folder / "report.html"
    run_report(run_path, target, data)
    click.echo(f"wrote {target}")


@cli.command(name="export")
@click.argument("run_path", metavar="RUN", type=click.Path(path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "tflite", "savedmodel"]),
    required=True,
    help="onnx (onnxruntime), tflite (LiteRT) or savedmodel "
    "(TensorFlow Serving). The features family exports onnx only.",
)
@click.option(
    "--output",
    "-o",
    type=click.Path(path_type=Path),
    default=None,
    help="Where to write it (default: RUN/export/model.onnx, model.tflite or saved_model/).",
)
@click.option(
    "--check",
    "check",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Images (a folder, searched recursively, or one file) for the parity check: "
    "up to 20 are preprocessed as predict does (default: 8 random images).",
)
@handle_errors
@needs_tensorflow
def export(run_path, fmt, output, check):
    """Export a trained run for a deployment runtime, checked against the run's model.

    RUN is a run folder or its model file. Writes the model, its preprocessing and class order
    as PATH.json (ONNX: also in its metadata_props), and the run's MODEL_CARD.md beside it. The
    exported file is loaded in its own runtime and its probabilities compared with the run's
    (max |difference| <= 1e-5, else nothing is written). The Keras families take uint8 RGB
    pixels; the features family's ONNX graph takes the 62 measurements named in its metadata.

    Example: wbc export runs/20240101-120000-full --format onnx --check data/processed/full/test
    """
    from wbc.export import export_run
    from wbc.predict import find_images
    from wbc.runs import load_run

    run = load_run(run_path)
    images = find_images([check]) if check is not None else []
    result = export_run(run, fmt, output, check_images=images)
    click.echo(
        f"wrote {result.path} ({fmt}); preprocessing and classes in "
        f"{result.metadata_path}" + (f"; card {result.card_path}" if result.card_path else "")
    )
    click.echo(
        f"parity: max |difference| {result.max_difference:.2e} over "
        f"{result.checked_images} {'images' if images else 'random inputs'} "
        f"({result.runtime})"
    )


def main() -> None:
    cli(prog_name="wbc")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
