"""How many threads should measure crops? Milliseconds per crop for each ``FEATURE_THREADS``.

Produced the figures behind ``wbc.models.features.FEATURE_THREADS`` (docs/PERFORMANCE.md,
"Twelfth pass of issue 23"). Two settings, each timed with the thread counts taking turns in
one process, so that a machine whose speed drifts hits every count alike:

- measuring alone (as ``wbc train`` and ``wbc adapt`` measure): ``--crops`` resized to the
  measuring side, measured in one call per pass;
- predicting (``wbc predict``'s ``predict_files``): a run's predictions of ``--crops``, whose
  decoding threads run beside the measuring.

Usage: python research/measuring_threads.py [--run RUN] [--crops ../shared/data/tecom-crops]
       [--threads 1 2 4] [--passes 8]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.imaging.preprocess import resize  # noqa: E402
from wbc.models import features  # noqa: E402
from wbc.models.nucleus import DEFAULT_NUCLEUS, WORK_SIDE  # noqa: E402
from wbc.workflows.predict import find_images  # noqa: E402


def timed_turns(work, counts: list[int], passes: int, cells: int) -> dict[int, list[float]]:
    """Milliseconds per cell of ``work()`` under each thread count, the counts taking turns."""
    work()  # warm-up: imports, caches, the first thread pool
    times: dict[int, list[float]] = {count: [] for count in counts}
    for _ in range(passes):
        for count in counts:
            features.FEATURE_THREADS = count
            start = time.perf_counter()
            work()
            times[count].append(1e3 * (time.perf_counter() - start) / cells)
    return times


def report(title: str, times: dict[int, list[float]]) -> None:
    print(title)
    for count, values in times.items():
        print(
            f"  {count} thread(s): median {statistics.median(values):.2f} ms, "
            f"min {min(values):.2f} ms ({len(values)} passes)"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, help="a features run folder: also time predicting")
    parser.add_argument("--crops", type=Path, default=Path("../shared/data/tecom-crops"))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--passes", type=int, default=8)
    args = parser.parse_args(argv)
    files = find_images([args.crops])
    crops = np.stack([resize(read_rgb(path), (WORK_SIDE, WORK_SIDE)) for path in files])
    print(f"{len(files)} crops from {args.crops}")

    def measure() -> None:
        features._measure(crops, "absolute", DEFAULT_NUCLEUS)

    report("measuring alone", timed_turns(measure, args.threads, args.passes, len(crops)))
    if args.run is not None:
        from wbc.models.runs import load_run
        from wbc.workflows.predict import predict_files

        run = load_run(args.run)
        times = timed_turns(
            lambda: predict_files(run, files), args.threads, args.passes, len(files)
        )
        report(f"predicting with {args.run}", times)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
