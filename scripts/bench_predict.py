#!/usr/bin/env python
"""Benchmark prediction: single-image latency and folder throughput vs decoding alone.

Prints two numbers (as a table, then JSON on the last line):

- single-image latency: median milliseconds for one preprocessed image through
  ``wbc.predict.Predictor`` after warm-up (target < 2 ms), on the engine ``wbc predict`` uses
  (LiteRT; ``--engine``), and for comparison through the ``tf.function`` engine and
  ``model.predict``.
- folder throughput: images/s of ``wbc.predict.predict_files`` (decode + resize + inference,
  decoding in a thread pool in parallel with inference) vs images/s of decoding + resizing the
  same files alone with the same thread pool and no model; and their ratio (target >= 0.8).
  On a shared machine wall-clock rates swing with the load, so three ratios are printed: best
  vs best, the median of back-to-back pairs, and the ratio of CPU seconds per pass (what to
  expect on an idle machine, where both sides are CPU-bound).

Defaults make everything in a temp folder: N synthetic 640x480 JPEG smears and a freshly built
(untrained) study model saved as a run folder (model.keras, config.yaml, classes.json).

Example: .venv/bin/python scripts/bench_predict.py --n 400 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.tfsetup import import_tensorflow  # noqa: E402

import_tensorflow()  # as `wbc predict` does: oneDNN on, start-up chatter silenced

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from wbc.config import CLASSES, dump_config, load_config  # noqa: E402
from wbc.imageio import read_rgb  # noqa: E402
from wbc.predict import (  # noqa: E402
    Predictor,
    default_workers,
    find_images,
    iter_loaded,
    model_inputs,
    predict_files,
)


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 640x480 smear-like JPEGs: pink noisy background, RBC discs, one purple WBC."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:480, :640]
    paths = []
    for index in range(n):
        image = np.empty((480, 640, 3), np.float32)
        image[:] = (228, 190, 200)
        image += rng.normal(0, 8, image.shape)
        for _ in range(25):
            cy, cx, r = rng.integers(0, 480), rng.integers(0, 640), rng.integers(25, 40)
            image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] -= (20, 45, 35)
        cy, cx, r = rng.integers(100, 380), rng.integers(120, 520), rng.integers(35, 70)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (95, 40, 140)
        path = folder / f"smear_{index:05d}.jpg"
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def make_run(folder: Path) -> Path:
    """A run folder with the study's model (untrained) at the default 120x160 input."""
    from wbc.models.study import build_model

    folder.mkdir(parents=True, exist_ok=True)
    config = load_config()
    model = build_model(config.model, config.train.image_size, len(CLASSES))
    model.save(folder / "model.keras")
    dump_config(config, folder / "config.yaml")
    (folder / "classes.json").write_text(json.dumps(list(CLASSES)))
    return folder / "model.keras"


def _latencies(predictor, image, calls: int) -> list[float]:
    for _ in range(20):  # warm-up: tracing, interpreter allocation, caches
        predictor(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor(image)
        times.append(time.perf_counter() - start)
    return times


def single_latency(run, calls: int, engine: str = "auto") -> dict:
    """One uint8 image through ``Predictor`` (``engine``), through the ``tf.function`` engine
    and through ``model.predict``: milliseconds per call after warm-up."""
    height, width = run.spec.image_size
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    predictor = Predictor.from_run(run, engine, cache=False)
    times = _latencies(predictor, image, calls)
    graph = _latencies(Predictor.from_run(run, "tensorflow", cache=False), image, calls)
    from wbc.preprocess import scale

    slow = []
    for _ in range(5):
        run.model.model.predict(scale(image), verbose=0)
    for _ in range(20):
        start = time.perf_counter()
        run.model.model.predict(scale(image), verbose=0)
        slow.append(time.perf_counter() - start)
    return {
        "engine": predictor.engine,
        "median_ms": statistics.median(times) * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "min_ms": min(times) * 1e3,
        "tf_function_median_ms": statistics.median(graph) * 1e3,
        "tf_function_min_ms": min(graph) * 1e3,
        "model_predict_median_ms": statistics.median(slow) * 1e3,
        "calls": calls,
    }


def decode_only(files, spec, crop_size, workers) -> None:
    """Read + (crop) + resize every file with the same thread pool as predict, no model."""

    def load(path):
        return model_inputs(read_rgb(path), spec, crop_size)

    for _path, _loaded in iter_loaded(files, load, workers, prefetch=2 * 64 + workers):
        pass


def timed(function) -> tuple[float, float, object]:
    """``(wall seconds, process CPU seconds, result)`` of ``function()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


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
        help="Trained model.keras (default: a fresh untrained study model).",
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

    from wbc.runs import load_run

    with tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp:
        tmp = Path(tmp)
        files = find_images([args.images]) if args.images else make_images(tmp / "images", args.n)
        if not files:
            parser.error(f"{args.images}: no images")
        run = load_run(args.model or make_run(tmp / "run"))
        workers = args.workers or default_workers()

        latency = single_latency(run, args.calls, args.engine)

        predictor = Predictor.from_run(run, args.engine, cache=False)

        def predict():
            return predict_files(
                run, files, predictor=predictor, batch_size=args.batch_size, workers=workers
            )

        def decode():
            return decode_only(files, run.spec, run.crop_size, workers)

        predict_files(run, files[: args.batch_size], predictor=predictor, workers=workers)
        decode()  # warm-up: trace, file cache
        pipeline, decoding = [], []
        for repeat in range(max(1, args.repeats)):
            # Alternate the order so that a change in machine load does not favour one side.
            if repeat % 2:
                pipeline.append(timed(predict))
                decoding.append(timed(decode))
            else:
                decoding.append(timed(decode))
                pipeline.append(timed(predict))
        serial_s = min(
            timed(lambda: decode_only(files, run.spec, run.crop_size, 1))[0] for _ in range(2)
        )
        rows = pipeline[-1][2]
        failed = sum(1 for r in rows if r["error"])
        pipeline_s = [p[0] for p in pipeline]
        decode_s = [d[0] for d in decoding]
        pair_ratios = [d / p for d, p in zip(decode_s, pipeline_s)]
        # CPU seconds per pass hardly depend on what else the machine runs: their ratio is the
        # throughput ratio to expect when both are CPU-bound on an otherwise idle machine.
        cpu_ratio = statistics.median(d[1] for d in decoding) / statistics.median(
            p[1] for p in pipeline
        )

    predict_rate = len(files) / min(pipeline_s)
    decode_rate = len(files) / min(decode_s)
    result = {
        "model": str(args.model or "fresh untrained study model"),
        "image_size": list(run.spec.image_size),
        "crop_mode": run.spec.crop_mode,
        "images": len(files),
        "failed": failed,
        "workers": workers,
        "batch_size": args.batch_size,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "engine": latency["engine"],
        "single_image_ms_median": round(latency["median_ms"], 3),
        "single_image_ms_p90": round(latency["p90_ms"], 3),
        "single_image_ms_min": round(latency["min_ms"], 3),
        "single_image_tf_function_ms_median": round(latency["tf_function_median_ms"], 3),
        "single_image_tf_function_ms_min": round(latency["tf_function_min_ms"], 3),
        "model_predict_ms_median": round(latency["model_predict_median_ms"], 3),
        "predict_images_per_s": round(predict_rate, 1),
        "decode_only_images_per_s": round(decode_rate, 1),
        "ratio": round(predict_rate / decode_rate, 3),
        "ratio_median_of_pairs": round(statistics.median(pair_ratios), 3),
        "ratio_cpu_time": round(cpu_ratio, 3),
        "decode_one_thread_images_per_s": round(len(files) / serial_s, 1),
        "repeats": len(pair_ratios),
    }
    engine = result["engine"]
    rows = [
        (
            f"single image, {engine} (median; target < 2 ms)",
            f"{result['single_image_ms_median']:.3f} ms",
        ),
        (f"single image, {engine} (p90)", f"{result['single_image_ms_p90']:.3f} ms"),
        (f"single image, {engine} (min)", f"{result['single_image_ms_min']:.3f} ms"),
        (
            "single image, tf.function (median)",
            f"{result['single_image_tf_function_ms_median']:.3f} ms",
        ),
        ("single image, model.predict (median)", f"{result['model_predict_ms_median']:.3f} ms"),
        (f"wbc predict on {len(files)} images ({engine})", f"{predict_rate:.1f} images/s"),
        ("decode + resize only (same threads)", f"{decode_rate:.1f} images/s"),
        ("ratio, best vs best (target >= 0.8)", f"{result['ratio']:.3f}"),
        ("ratio, median of back-to-back pairs", f"{result['ratio_median_of_pairs']:.3f}"),
        ("ratio, CPU seconds (decode / predict)", f"{result['ratio_cpu_time']:.3f}"),
        ("decode + resize, one thread", f"{result['decode_one_thread_images_per_s']:.1f} images/s"),
        ("machine load average (1 min)", f"{result['load_average_1min']:.2f}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name.ljust(width)}  {value}")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
