"""``wbc predict``, ``count``, ``explain`` and ``evaluate``: using a trained model."""

from __future__ import annotations

from pathlib import Path

import click

from wbc.cli.common import (
    adapt_option,
    batch_size_option,
    classifier_here_or_on_ray,
    echo_err,
    engine_option,
    executor_options,
    exit_if_failed,
    handle_errors,
    input_option,
    model_option,
    progress_bar,
    write_output,
)
from wbc.cli.group import cli


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
@batch_size_option
@input_option
@engine_option
@adapt_option("never", "the images given")
@executor_options
@handle_errors
def predict(
    paths,
    model_path,
    fmt,
    output,
    top,
    batch_size,
    input_kind,
    engine,
    adapt,
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
    Data, one model load per worker), with the same rows in the same order. --adapt auto or
    always adapts the model to the images given (another lab's, say) before answering: each
    answer then depends on the other images passed with it, and each row says adapted.

    Example: wbc predict smears/ --format csv --output predictions.csv --top 2
    """
    from wbc.models.runs import load_run, resolve_model_path
    from wbc.workflows.predict import format_predictions, predict_files, require_images

    files = require_images(paths)
    run = load_run(resolve_model_path(model_path))
    predictor, on_ray = classifier_here_or_on_ray(
        run, engine, executor, address, cpus_per_trial, gpus_per_trial
    )
    with progress_bar(len(files), "predicting") as bar:
        rows = predict_files(
            run,
            files,
            top=top,
            input_kind=input_kind,
            batch_size=batch_size,
            progress=bar.update if bar is not None else None,
            predictor=predictor,
            ray_options=on_ray,
            adapt=adapt,
            engine=engine,
            echo=echo_err,
        )
    text = format_predictions(rows, fmt, top, model=str(run.model_path), classes=run.classes)
    write_output(text, output)
    if run.domain is not None:
        from wbc.imaging.domain import saturation_summary, saturation_warning

        judged = [row["saturated_background"] for row in rows if not row["error"]]
        if warning := saturation_warning(saturation_summary(judged)):
            echo_err(warning)
    if any(row.get("adapted") for row in rows):
        echo_err(
            f"answered after adapting the model on these {len(rows)} images' cells (no labels); "
            "--adapt never answers with the run as it is"
        )
    elif run.domain is not None:
        from wbc.imaging.domain import adaptation_advice

        judged = [row for row in rows if row.get("out_of_domain") is not None]
        folder = paths[0] if len(paths) == 1 and Path(paths[0]).is_dir() else None
        advice = adaptation_advice(
            sum(bool(row["out_of_domain"]) for row in judged), len(judged), run.run_dir, folder
        )
        if advice:
            echo_err(advice)
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
@batch_size_option
@input_option
@engine_option
# auto: chosen by a rule written before its scores (docs/RESULTS.md, "Adapting on the sample")
@adapt_option("auto", "this sample")
@executor_options
@handle_errors
def count(
    folder,
    model_path,
    fmt,
    plot,
    report,
    batch_size,
    input_kind,
    engine,
    adapt,
    executor,
    address,
    cpus_per_trial,
    gpus_per_trial,
):
    """Count the white blood cells of one sample by type (a WBC differential).

    Classifies every image in FOLDER and prints the count and percentage per class. A model
    trained on cell crops (crop.mode boxes/detect) counts every WBC the detector finds in each
    image; otherwise each image is one cell. Unreadable images are listed and not counted (exit
    code 1). When many of the sample's cells have a stain unlike the training images (the
    out-of-domain flag on at least 10% of at least 20 cells), the model is first adapted to the
    sample from its own cells, in memory and without labels, as wbc adapt --priors never would
    (--adapt never: count with the run as it is).

    Example: wbc count sample-042/ --plot differential.png --report sample-042.html
    """
    from wbc.models.runs import load_run, resolve_model_path
    from wbc.workflows.count import count_cells, format_count, plot_counts
    from wbc.workflows.predict import require_images

    if not folder.is_dir():
        problem = "not a folder" if folder.exists() else "folder not found"
        raise click.ClickException(f"{folder}: {problem}")
    files = require_images([folder])
    run = load_run(resolve_model_path(model_path))
    predictor, on_ray = classifier_here_or_on_ray(
        run, engine, executor, address, cpus_per_trial, gpus_per_trial
    )
    with progress_bar(len(files), "counting") as bar:
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
            adapt=adapt,
            engine=engine,
            echo=echo_err,
        )
    if report is not None:
        from wbc.workflows.report import count_report

        count_report(result, report)
        del result["files"]  # the page has them; the table and JSON stay as they were
        echo_err(f"wrote {report}")
    for item in result["failed"]:
        echo_err(f"{item['file']}: {item['error']}")
    if result["no_cells"]:
        echo_err(f"no white blood cell found in {len(result['no_cells'])} image(s)")
    if fmt == "table":
        if result["per"] == "cell":
            what = f"{result['cells']} cells in {result['classified_images']} images"
        else:
            what = f"{result['cells']} images (one cell each)"
        click.echo(f"{folder}: {what}; model {run.model_path}")
    click.echo(format_count(result, fmt), nl=False)
    if plot is not None:
        plot_counts(result, plot)
        echo_err(f"wrote {plot}")
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
    from wbc.models.runs import load_run, resolve_model_path
    from wbc.workflows.explain import explain_image

    run = load_run(resolve_model_path(model_path))
    result = explain_image(run, image, output, input_kind=input_kind)
    click.echo(f"{result['file']}: {result['class']} ({result['probability']:.3f})")
    for item in result.get("features", []):
        click.echo(
            f"  {item['name']:<34} {item['value']:>9.4f}  (typical {item['typical']:.4f}, "
            f"moves {result['class']} by {item['effect']:+.3f})"
        )
    echo_err(f"wrote {output}")


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
@batch_size_option
@handle_errors
def evaluate(model_path, data, fmt, output, batch_size):
    """Score a trained model on a folder of class folders.

    Prints accuracy, macro-F1, per-class precision, recall, F1 and support, and the confusion
    matrix (rows: true class). Images are preprocessed exactly as the model's training images
    (settings from the run's config.yaml); a class folder the model does not know is an error,
    and unreadable images are skipped and listed.

    Example: wbc evaluate --model runs/20240101-120000-small --data data/processed/small/test
    """
    import json

    from wbc.core.runfolder import write_metrics
    from wbc.workflows.evaluate import evaluate as run_evaluate
    from wbc.workflows.evaluate import format_table

    metrics = run_evaluate(model_path, data, batch_size=batch_size, echo=echo_err)
    if fmt == "json":
        click.echo(json.dumps(metrics, indent=2))
    else:
        click.echo(format_table(metrics))
    if output is not None:
        try:
            write_metrics(metrics, output)
        except OSError as exc:
            raise click.ClickException(f"{output}: cannot write ({exc.strerror or exc})") from None
        echo_err(f"wrote {output}")


@cli.command()
@click.argument(
    "models", nargs=-1, required=True, type=click.Path(path_type=Path), metavar="RUN..."
)
@click.option(
    "--data",
    "data",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="Folder of class folders to score every run on, e.g. another lab's cells.",
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write every run's metrics to this JSON file.",
)
@batch_size_option
@handle_errors
def compare(models, data, json_path, batch_size):
    """Score several trained runs on one folder of class folders, side by side.

    One row per run: its colour settings, its own test accuracy, then on DATA: accuracy,
    macro-F1, each class's recall and the out-of-domain flag's share (with the accuracy of the
    flagged and of the other images); the last row is the majority-class baseline. Use it to
    see how runs carry over to another lab's cells, never to choose settings on them. A run
    that cannot be scored is its own error row and the exit status is 1.

    Example: wbc compare runs/default-42 runs/default-7 --data ../shared/data/tecom-crops
    """
    import json

    from wbc.core.manifest import write_atomic
    from wbc.workflows.evaluate import compare_runs, format_comparison

    result = compare_runs(models, data, batch_size=batch_size, echo=echo_err)
    click.echo(format_comparison(result), nl=False)
    if json_path is not None:
        write_atomic(json_path, json.dumps(result, indent=2) + "\n")
        echo_err(f"wrote {json_path}")
    failed = sum("error" in row for row in result["runs"])
    if failed:
        echo_err(f"{failed} of {len(result['runs'])} runs could not be scored")
        click.get_current_context().exit(1)
