"""``wbc train``, ``adapt``, ``plot``, ``cv`` and ``tune``: fitting, adapting and comparing
models."""

from __future__ import annotations

from pathlib import Path

import click

from wbc.cli.common import (
    config_options,
    echo_err,
    executor_options,
    handle_errors,
    input_option,
    load,
    ray_options_from,
)
from wbc.cli.group import cli
from wbc.workflows.adapt import DEFAULT_PRIORS, PRIOR_MODES


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
    from wbc.workflows.train import train as run_train

    config = load(config_path, overrides)
    # On --resume without --data-dir, the run's own recorded data folder is used.
    source = click.get_current_context().get_parameter_source("data_dir")
    explicit = source is not click.core.ParameterSource.DEFAULT
    if resume_dir is not None and (config_path or overrides):
        echo_err(
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


@cli.command()
@click.argument("run", type=click.Path(exists=True, path_type=Path), metavar="RUN")
@click.option(
    "--unlabelled",
    type=click.Path(path_type=Path),
    required=True,
    help="Folder of one lab's images (cell crops or whole smears, any nesting); folder names "
    "are never read as labels.",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="The adapted run folder to write (must not exist yet).",
)
@click.option(
    "--calibration",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Held-out source images in class folders, to calibrate the class-prior part on "
    "(default: the test side of RUN's subset, from its run.json).",
)
@click.option(
    "--priors",
    type=click.Choice(PRIOR_MODES),
    default=DEFAULT_PRIORS,
    show_default=True,
    help="Re-estimate the lab's class priors by EM: never = keep the model's own (the default: "
    "on every other lab measured EM lowered accuracy), auto = only if EM gains on held-out "
    "source data under simulated class mixes, always = even if not (to measure it).",
)
@click.option(
    "--balanced/--pooled",
    default=True,
    show_default=True,
    help="Weight the lab's cells so that each predicted class weighs the same when its "
    "statistics are re-estimated (balanced), or weigh every cell equally (pooled).",
)
@input_option
@handle_errors
def adapt(run, unlabelled, out, calibration, priors, balanced, input_kind):
    """Adapt a trained run to a lab from the lab's unlabelled cells.

    Writes a new run folder: RUN's model with its input statistics re-estimated on the lab's
    cells (the CNN: every BatchNorm layer's statistics, AdaBN; the features model: its feature
    standardisation, weighted so the lab's class mix does not move it; an ensemble: each member
    as its family adapts) and, with --priors auto and when it measures better on held-out
    source data, the lab's class priors (EM) as prior_correction.json, which predict, count,
    evaluate and compare apply. run.json records the folder, the number of images, their
    content digest and the method of each part. No label is read. Smears are cut to their main
    WBC as wbc predict --input auto does.

    Example: wbc adapt runs/20250101-120000-full --unlabelled lab_b/ --out runs/lab_b-adapted
    """
    from wbc.workflows.adapt import adapt as run_adapt

    adaptation = run_adapt(
        run,
        unlabelled,
        out,
        input_kind=input_kind,
        calibration=calibration,
        priors=priors,
        balanced=balanced,
        echo=echo_err,
    )
    for part in adaptation["parts"]:
        line = f"{part['part']}: {part['method'].split(':')[0].split(' (')[0]}"
        if "member" in part:  # an ensemble's members adapt one by one
            line = f"member {part['member']} {line}"
        if part.get("kept") is False or part["method"] in ("none", "skipped"):
            line += f" - not applied: {part.get('reason', 'not kept')}"
        click.echo(line)
    click.echo(
        f"adapted on {adaptation['cells']} cells of {adaptation['images']} images in "
        f"{adaptation['folder']}; run folder {out}"
    )


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

    from wbc.core.plots import caption, plot_confusion, plot_history
    from wbc.core.runfolder import read_history

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
        echo_err(f"wrote {target}")
    else:
        echo_err(f"{run_dir}: fitted in one step (no epochs), so no training curves")
    if output is None and metrics_path.is_file():
        try:
            metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
            matrix, classes = metrics["confusion_matrix"], metrics["classes"]
        except (OSError, ValueError, KeyError, TypeError):
            echo_err(f"{metrics_path}: unreadable; confusion_matrix.png not redrawn")
            return
        plot_confusion(
            matrix, classes, run_dir / "confusion_matrix.png", title=f"{run_dir.name}: test side"
        )
        echo_err(f"wrote {run_dir / 'confusion_matrix.png'}")


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
    type=click.Path(path_type=Path),
    default=None,
    help="Cross-validate a lab's own data instead of the prepared data: class folders, a CSV "
    "of file and label, read as wbc prepare reads them (smears cropped, crops kept whole; no "
    "augmentation); folds are stratified over images, groups kept together.",
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
    from wbc.workflows.cv import cross_validate
    from wbc.workflows.cv_report import format_table, headline

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
        echo=echo_err,
        train_echo=click.echo,
        repeats=repeats,
        executor=executor,
        ray_options=ray_options_from(address, cpus_per_trial, gpus_per_trial),
    )
    click.echo(format_table(report))
    click.echo(headline(report))
    echo_err(f"wrote {Path(report['out']) / 'cv.json'} and cv.md")


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
    from wbc.workflows.tune import tune as run_tune

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
        echo=echo_err,
        train_echo=click.echo,
        executor=executor,
        ray_options=ray_options_from(address, cpus_per_trial, gpus_per_trial),
    )
    click.echo(result["table"])
    echo_err(
        f"{result['trained']} cell(s) trained, {result['skipped']} done before; wrote "
        f"{result['out'] / 'results.csv'} and results.md"
    )
