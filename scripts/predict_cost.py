"""Milliseconds per cell of ``wbc predict`` for run folders, in one warm process.

Why: issue 23 asks the default with adaptation to cost <= 10 ms per cell on 2 cores. This times
``wbc.workflows.predict.predict_files`` (decode, crop rule, stain normalisation, features or
network, the out-of-domain flag, an adapted run's prior correction) over the same images for each
run: one warm-up pass, then the median of ``--repeats`` passes. ``--adapt always`` times
``wbc predict --adapt always`` / ``wbc count``'s adaptation on the sample instead: the run adapted
in memory on the images, which are then classified again.

Usage: python scripts/predict_cost.py RUN [RUN ...] --images ../shared/data/tecom-crops
       [--adapt always]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.models.runs import load_run  # noqa: E402
from wbc.workflows.predict import find_images, predict_files  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--images", type=Path, default=Path("../shared/data/tecom-crops"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--adapt", choices=("never", "auto", "always"), default="never")
    args = parser.parse_args(argv)
    files = find_images([args.images])
    print(f"{len(files)} images from {args.images}")
    for path in args.runs:
        run = load_run(path)
        predict_files(run, files, adapt=args.adapt)  # warm-up: model load, caches, thread pools
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            rows = predict_files(run, files, adapt=args.adapt)
            times.append(time.perf_counter() - start)
        failed = sum(1 for r in rows if r["error"])
        ms = 1e3 * statistics.median(times) / len(files)
        print(
            f"{path}: {ms:.2f} ms per cell (median of {args.repeats}; {failed} failed; "
            f"--adapt {args.adapt})"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
