"""``wbc export``, ``report`` and ``bench``: shipping a model and measuring wbc."""

from __future__ import annotations

from pathlib import Path

import click

from wbc.cli.common import echo_err, handle_errors
from wbc.cli.group import cli


@cli.command(hidden=True)  # a developer tool (`make bench`), kept out of the user's command list
@click.option(
    "--raw",
    type=click.Path(exists=True, path_type=Path),
    default=None,
    help="Measure on this dataset-master folder's JPEGs (default: generated 640x480 smears).",
)
@click.option("--quick", is_flag=True, help="Fewer repeats and images: a smoke run (< 2 min).")
@click.option(
    "--tiny",
    is_flag=True,
    help="Every section on a handful of small inputs in seconds: a smoke test, not a measurement.",
)
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
    type=click.Choice(
        [
            "cli",
            "matmul",
            "train",
            "checkpoint",
            "augment",
            "predict",
            "families",
            "memory",
            "duplicates",
            "scale",
        ]
    ),
    help="Run only this section (repeatable; default: all).",
)
@handle_errors
def bench(raw, quick, tiny, json_path, only):
    """Measure training feeds, augmentation, predict and CLI speed on this machine.

    Prints a table (medians of several repeats after a warm-up, with the load average) and
    writes a JSON file. TF_ENABLE_ONEDNN_OPTS=0 in the environment measures without oneDNN.
    See docs/PERFORMANCE.md.

    Example: wbc bench --quick --only train
    """
    from benchmarks.bench import run as run_bench
    from benchmarks.bench import table

    results = run_bench(
        raw=raw, quick=quick, tiny=tiny, json_path=json_path, only=only, echo=echo_err
    )
    click.echo(table(results))
    echo_err(f"wrote {results['json_path']}")


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
def report(run_path, output, data):
    """Write one self-contained HTML page about a run or a `wbc cv` folder.

    Images are inlined, there is no script and nothing is fetched, so the file opens anywhere.
    A run's page holds its settings and data, the curves with the study's caption, the
    confusion matrix and per-class table, and the most confident mistakes on the test side,
    each explained (Grad-CAM or the decisive measurements). A cv folder's page holds the fold
    table with mean and std.

    Example: wbc report runs/20240101-120000-full -o report.html
    """
    from wbc.workflows.report import run_report

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
def export(run_path, fmt, output, check):
    """Export a trained run for a deployment runtime, checked against the run's model.

    RUN is a run folder or its model file. Writes the model, its preprocessing and class order
    as PATH.json (ONNX: also in its metadata_props), and the run's MODEL_CARD.md beside it. The
    exported file is loaded in its own runtime and its probabilities compared with the run's
    (max |difference| <= 1e-5, else nothing is written). The Keras families take uint8 RGB
    pixels; the features family's ONNX graph takes the 62 measurements named in its metadata.

    Example: wbc export runs/20240101-120000-full --format onnx --check data/processed/full/test
    """
    from wbc.models.runs import load_run
    from wbc.workflows.export import export_run
    from wbc.workflows.predict import find_images

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
