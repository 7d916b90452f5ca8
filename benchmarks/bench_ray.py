"""What Ray costs (and gains) here: a 4-fold CV and a folder predict, local vs --executor ray.

Why: docs/SCALING.md's table. Measures, on this machine, with the committed code:

1. ``wbc cv`` of ``--config`` (4 folds, ``--per-class``), once with the local executor and once
   on a local Ray instance with ``--workers`` tasks of ``--cpus-per-trial`` each: wall time of
   each and the ratio; the same fold numbers are checked.
2. Ray's per-task overhead: ``--tasks`` no-op tasks on warm workers (submit to result), and a
   cold worker's start (a new process importing TensorFlow), which a CV pays once per worker.
3. ``wbc predict`` throughput over ``--images`` files (the folder's images repeated), local vs
   Ray Data on ``--workers`` actors, with the same rows checked.

Usage: python benchmarks/bench_ray.py --data-dir D --model RUN [--config configs/default.yaml]
       [--per-class 300] [--workers 2] [--images 2000] [--predict-folder ../shared/data/tecom-crops]
       [--out /tmp/bench-ray]
Prints one markdown table. Run it on an otherwise idle machine: every number is wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--config", type=Path, default=Path("configs/default.yaml"))
    parser.add_argument("--per-class", type=int, default=300)
    parser.add_argument("--epochs", type=int, default=None, help="epochs per fold (Keras families)")
    parser.add_argument("--skip-predict", action="store_true")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpus-per-trial", type=float, default=1.0)
    parser.add_argument("--tasks", type=int, default=20)
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--predict-folder", type=Path, default=Path("../shared/data/tecom-crops"))
    parser.add_argument("--out", type=Path, default=Path("/tmp/bench-ray"))
    args = parser.parse_args(argv)

    import ray

    from wbc.core.config import load_config
    from wbc.models.runs import load_run
    from wbc.workflows.cv import cross_validate
    from wbc.workflows.executors import RayOptions, connect
    from wbc.workflows.predict import find_images, predict_files

    shutil.rmtree(args.out, ignore_errors=True)
    args.out.mkdir(parents=True)
    config = load_config(args.config)
    quiet = lambda _m: None  # noqa: E731
    rows = []

    start = time.perf_counter()
    local = cross_validate(
        config,
        data_dir=args.data_dir,
        folds=4,
        per_class=args.per_class,
        epochs=args.epochs,
        out=args.out / "cv-local",
        echo=quiet,
    )
    local_s = time.perf_counter() - start
    options = RayOptions(
        cpus_per_trial=args.cpus_per_trial, local_cpus=int(args.workers * args.cpus_per_trial)
    )
    connect(options, echo=print)
    start = time.perf_counter()
    remote = cross_validate(
        config,
        data_dir=args.data_dir,
        folds=4,
        per_class=args.per_class,
        epochs=args.epochs,
        out=args.out / "cv-ray",
        echo=quiet,
        executor="ray",
        ray_options=options,
    )
    ray_s = time.perf_counter() - start
    same = [f["accuracy"] for f in local["folds"]] == [f["accuracy"] for f in remote["folds"]]
    rows.append(("4-fold CV, local executor (one fold after the other)", f"{local_s:.1f} s", ""))
    rows.append(
        (
            f"4-fold CV, Ray: {args.workers} workers x {args.cpus_per_trial:g} CPU",
            f"{ray_s:.1f} s",
            f"{ray_s / local_s:.2f}x local; same fold numbers: {same}",
        )
    )

    @ray.remote(num_cpus=args.cpus_per_trial)
    def noop():
        return time.perf_counter()

    ray.get([noop.remote() for _ in range(args.workers)])  # warm
    times = []
    for _ in range(args.tasks):
        begin = time.perf_counter()
        ray.get(noop.remote())
        times.append(time.perf_counter() - begin)
    times.sort()
    rows.append(
        (
            "Ray per-task overhead, warm worker (median of "
            f"{args.tasks} no-op tasks, submit to result)",
            f"{times[len(times) // 2] * 1e3:.1f} ms",
            "",
        )
    )

    # Another runtime environment than the job's: Ray must start a new worker process for it.
    @ray.remote(num_cpus=args.cpus_per_trial, runtime_env={"env_vars": {"WBC_COLD_WORKER": "1"}})
    def cold():
        begin = time.perf_counter()
        import tensorflow  # noqa: F401

        import wbc.workflows.train  # noqa: F401

        return time.perf_counter() - begin

    begin = time.perf_counter()
    inside = ray.get(cold.remote())
    rows.append(
        (
            "Ray cold worker: new process + import TensorFlow and wbc (once per worker)",
            f"{time.perf_counter() - begin:.1f} s",
            f"of which imports {inside:.1f} s",
        )
    )

    if args.skip_predict:
        args.images = 0
    found = find_images([args.predict_folder])
    files = (found * (args.images // max(1, len(found)) + 1))[: args.images]
    if not files:
        ray.shutdown()
        return _print(args, rows)
    run = load_run(args.model)
    begin = time.perf_counter()
    local_rows = predict_files(run, files)
    local_p = time.perf_counter() - begin
    predict_files(run, files[: 4 * args.workers], ray_options=options)  # start the actors
    begin = time.perf_counter()
    ray_rows = predict_files(run, files, ray_options=options)
    ray_p = time.perf_counter() - begin
    rows.append((f"predict {len(files)} images, local", f"{len(files) / local_p:.0f} images/s", ""))
    same_rows = json.dumps(local_rows) == json.dumps(ray_rows)
    rows.append(
        (
            f"predict {len(files)} images, Ray Data on {args.workers} actors",
            f"{len(files) / ray_p:.0f} images/s",
            f"{local_p / ray_p:.2f}x local; same rows: {same_rows}",
        )
    )
    ray.shutdown()
    return _print(args, rows)


def _print(args, rows) -> int:
    print(f"\nmachine: {os.cpu_count()} CPUs; config {args.config}, --per-class {args.per_class}\n")
    print("| measurement | value | note |\n|---|---|---|")
    for name, value, note in rows:
        print(f"| {name} | {value} | {note} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
