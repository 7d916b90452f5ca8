#!/usr/bin/env python
"""Benchmark prediction: single-image latency and folder throughput vs decoding alone.

Prints two numbers (as a table, then JSON on the last line):

- single-image latency: median milliseconds for one preprocessed image through
  ``wbc.workflows.predict.Predictor`` after warm-up (target < 2 ms), on the engine ``wbc predict``
  uses
  (LiteRT; ``--engine``), and for comparison (a Keras model) through the ``tf.function`` engine
  and ``model.predict``.
- folder throughput: images/s of ``wbc.workflows.predict.predict_files`` (decode + resize +
inference,
  decoding in a thread pool in parallel with inference) vs images/s of decoding + resizing the
  same files alone with the same thread pool and no model; and their ratio (target >= 0.8).
  On a shared machine wall-clock rates swing with the load, so three ratios are printed: best
  vs best, the median of back-to-back pairs, and the ratio of CPU seconds per pass (what to
  expect on an idle machine, where both sides are CPU-bound).

Defaults make everything in a temp folder: N synthetic 640x480 JPEG smears and a study-recipe
run folder that ``wbc.workflows.train.train`` trains for one epoch on 16 of them (the cost of a
prediction
does not depend on the weights). The code is ``benchmarks.bench.predict_figures`` (``wbc bench
--only
predict`` runs the same); models converted for LiteRT are cached in the temp folder only.

Example: .venv/bin/python benchmarks/bench_predict.py --n 400 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.tfsetup import import_tensorflow  # noqa: E402

import_tensorflow()  # as `wbc predict` does: oneDNN on, start-up chatter silenced

from benchmarks.bench import make_images, make_run, predict_figures, private_cache  # noqa: E402
from wbc.models.runs import load_run  # noqa: E402
from wbc.workflows.predict import find_images  # noqa: E402


def rows(result: dict) -> list[tuple[str, str]]:
    """The printed table: (figure, value)."""
    engine = result["engine"]
    out = [
        (
            f"single image, {engine} (median; target < 2 ms)",
            f"{result['single_image_ms_median']:.3f} ms",
        ),
        (f"single image, {engine} (p90)", f"{result['single_image_ms_p90']:.3f} ms"),
        (f"single image, {engine} (min)", f"{result['single_image_ms_min']:.3f} ms"),
    ]
    if "single_image_tf_function_ms_median" in result:  # a Keras model
        out += [
            (
                "single image, tf.function (median)",
                f"{result['single_image_tf_function_ms_median']:.3f} ms",
            ),
            ("single image, model.predict (median)", f"{result['model_predict_ms_median']:.3f} ms"),
        ]
    out += [
        (
            f"wbc predict on {result['images']} images ({engine})",
            f"{result['predict_images_per_s']:.1f} images/s",
        ),
        (
            "decode + resize only (same threads)",
            f"{result['decode_only_images_per_s']:.1f} images/s",
        ),
        ("ratio, best vs best (target >= 0.8)", f"{result['ratio']:.3f}"),
        ("ratio, median of back-to-back pairs", f"{result['ratio_median_of_pairs']:.3f}"),
        ("ratio, CPU seconds (decode / predict)", f"{result['ratio_cpu_time']:.3f}"),
        ("decode + resize, one thread", f"{result['decode_one_thread_images_per_s']:.1f} images/s"),
        ("machine load average (1 min)", f"{result['load_average_1min']:.2f}"),
    ]
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--images",
        type=Path,
        default=None,
        help="Folder of images (default: N synthetic 640x480 JPEGs in a temp dir).",
    )
    parser.add_argument(
        "--n", type=int, default=300, help="Synthetic images to make (default 300)."
    )
    parser.add_argument(
        "--model",
        type=Path,
        default=None,
        help="Trained model file or run folder (default: a study-recipe run trained for one "
        "epoch on 16 of the images).",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="Timed passes over the folder; the best of each is kept (default 5).",
    )
    parser.add_argument(
        "--calls",
        type=int,
        default=500,
        help="Single-image calls to time after warm-up (default 500).",
    )
    parser.add_argument("--batch-size", type=int, default=64, help="Inference batch (default 64).")
    parser.add_argument(
        "--engine",
        choices=["auto", "litert", "tensorflow"],
        default="auto",
        help="Inference engine of the headline figures (default auto, as wbc predict).",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Decoding threads (default 0 = wbc's default: one per core).",
    )
    args = parser.parse_args(argv)

    with (
        tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp,
        private_cache(Path(tmp) / "cache"),
    ):
        tmp = Path(tmp)
        files = find_images([args.images]) if args.images else make_images(tmp / "images", args.n)
        if not files:
            parser.error(f"{args.images}: no images")
        run = load_run(args.model or make_run(tmp / "run", files))
        result = predict_figures(
            run,
            files,
            repeats=args.repeats,
            calls=args.calls,
            batch_size=args.batch_size,
            engine=args.engine,
            workers=args.workers,
            model=str(
                args.model
                or "study recipe, trained one epoch on 16 images (wbc.workflows.train.train)"
            ),
        )

    table = rows(result)
    width = max(len(name) for name, _ in table)
    for name, value in table:
        print(f"{name.ljust(width)}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
