"""``wbc bench``: how fast training, augmentation, prediction and the CLI are on this machine.

One run measures, on the same machine and one after the other (issue 6):

1. training images/s at batch 16 for the study's model (``build_model``, the study recipe
   ``STUDY_RECIPE`` = configs/study.yaml, 120x160) with
   three feeds over the same class folders of 640x480 JPEGs (augmented copies at JPEG quality 95,
   as a prepared subset holds them): an in-memory float32 array through
   ``from_tensor_slices`` (the compute bound), the project's ``tfdata`` feed
   (``wbc.imaging.feeds.make_feed``, cached) and the study's ``flow_from_directory``
   (``train.feed: imagedatagenerator``). Each epoch is one pass over the folder (``steps`` batches,
   as ``train.steps_per_epoch: auto`` trains); after one warm-up epoch per feed, the feeds take
   turns epoch by epoch (so a change in machine load hits all three alike), and each figure is the
   median of the timed epochs;
2. augmentation copies/s at 640x480 (read, transform, JPEG write, as ``augment_chunk`` does):
   the ImageDataGenerator engine in one process, the augment stage's process pool with all
   cores (workers started and warmed up first), and the OpenCV engine both ways;
3. prediction (``predict_figures``, also behind ``benchmarks/bench_predict.py``): single-image
   latency and folder throughput vs decoding alone, on the same images, with a study-recipe run
   that ``wbc.workflows.train.train`` made (one epoch on a few of the images);
4. ``families``: milliseconds per cell of ``wbc predict`` on 256-pixel cell crops for each recipe
   in ``RECIPES`` (the built-in defaults plus the recipe's overrides: stain normalisation, the
   out-of-domain flag, TTA and every ensemble member included), each run folder trained by
   ``wbc.workflows.train.train`` (one epoch) on crops whose labels are dealt round-robin;
5. ``wbc --help`` wall time (subprocesses);
6. the peak RSS of ``wbc train`` (the study recipe) on a full-size subset (10,800 + 1,200 120x160
   JPEGs made from the images; ``--quick``: a quarter of that, and no goal check);
7. the float32 matmul peak of the machine (numpy and TensorFlow), to put the training rate in
   GFLOP/s and in a share of what the CPU can do;
8. ``duplicates``: ``find_duplicates`` (the rename stage's same-field search) on generated class
   folders of 120x120 crops (``benchmarks.crops``, 1% planted copies) of 5,000 and 20,000
   images, each in a fresh process: wall and CPU seconds, the peak RSS the call adds, whether
   every planted copy was found, and the 20k / 5k ratios (linear: 4; all pairs: 16).
9. ``scale``: ``wbc prepare --raw`` + ``wbc train`` (the default recipe) on a lab's generated
   class folders of 20,000 120x120 crops: wall and CPU minutes and the peak RSS of the largest
   process (goals: <= 10 minutes, <= 3 GB on 2 cores).

Images are generated smear-like 640x480 JPEGs, or the real ones with ``--raw``. The machine is
shared: every section records the load average before and after it, and the output says how many
repeats each median has. ``TF_ENABLE_ONEDNN_OPTS`` is left as the caller set it (default: on, as
every wbc command runs), so ``TF_ENABLE_ONEDNN_OPTS=0 wbc bench --only train`` measures without.
Models converted for LiteRT while benchmarking are cached in the temporary folder, never in the
user's cache. ``tiny`` (``python -m benchmarks.bench --tiny``) runs every section on a handful of
small
inputs in seconds: a smoke test that each section still produces its figures (tests/test_bench.py),
not a measurement.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import DataError, WbcError

SECTIONS = (
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
)
STUDY_EPOCHS = 150
STUDY_TRAIN_IMAGES = 10_800  # the full subset's training side: 3,000 per class x 4 x 90%
MEMORY_LIMIT_GIB = 4.0
GOALS = {  # name -> (minimum or maximum, value); checked in ``goal_rows``
    "project_vs_in_memory": (">=", 0.95),
    "project_vs_flow_from_directory": (">=", 3.5),
    "parallel_idg_vs_one_process": (">=", 1.8),
    "opencv_vs_idg": (">=", 10.0),
    "help_seconds": ("<=", 0.3),
    "peak_rss_gib": ("<", MEMORY_LIMIT_GIB),
    "slowest_recipe_ms_per_cell": ("<=", 5.0),
    # the default recipe adapted to a lab's unlabelled cells by `wbc adapt` (issue 23)
    "adapted_default_ms_per_cell": ("<=", 10.0),
    "checkpoint_extra_share_small": ("<=", 0.05),  # crash-safe writes: at most 5% of an epoch
    # duplicate search on 4x the images: linear is 4, all pairs 16 (issue 22); CPU seconds
    "duplicates_cpu_ratio": ("<=", 6.0),
    "duplicates_planted_found": (">=", 1.0),  # share of the planted copies found
    # wbc prepare + wbc train (default recipe) on a lab's 20,000 crops in class folders (issue 22)
    "scale_minutes": ("<=", 10.0),
    "scale_peak_rss_gib": ("<=", 3.0),
}
DUPLICATE_SHARE = 0.01  # planted copies among the generated crops of the duplicates section
# The model recipes whose predict cost per cell the families section measures: config overrides.
RECIPES = {
    "features": ["model.family=features"],
    "cnn": ["model.family=cnn"],
    "cnn + TTA": ["model.family=cnn", "model.tta=true"],
    "mean of cnn + features": ["model.ensemble=[cnn, features]"],
    "mean of cnn + features, TTA": ["model.ensemble=[cnn, features]", "model.tta=true"],
}
DEFAULT_RECIPE = "features"  # the built-in defaults' family: the one measured adapted as well

# The study's recipe (configs/study.yaml, which a source checkout only has): the built-in defaults
# with these overrides. The train, predict and memory sections measure the study's CNN, whatever
# the default family is (tests/test_bench.py checks this against configs/study.yaml).
STUDY_RECIPE = (
    "model.family=study",
    "crop.mode=none",
    "color.normalize=none",
    "color.scale_jitter=0.0",
    "augment.engine=imagedatagenerator",
    "model.features.max_train=4000",
)

Echo = Callable[[str], None]


def _quiet(_message: str) -> None:
    pass


def study_config(overrides: Sequence[str] = ()):
    """The study's recipe as a ``Config`` (``STUDY_RECIPE``, then ``overrides``)."""
    from wbc.core.config import load_config

    return load_config(overrides=[*STUDY_RECIPE, *overrides])


@dataclass(frozen=True)
class Plan:
    """How much work each section does (``--quick`` shrinks it; ``--tiny``: a smoke run)."""

    name: str
    train_steps: int  # batches of 16 per epoch = images in the training folder / 16
    train_repeats: int  # timed epochs per feed, after one warm-up epoch
    augment_idg_copies: int
    augment_cv_copies: int
    augment_repeats: int
    transform_calls: int  # in-process transform-only calls per engine
    predict_images: int
    predict_calls: int
    predict_repeats: int
    cli_repeats: int
    memory_steps: int  # training steps in the peak-RSS run (the whole cache is loaded anyway)
    memory_fraction: float  # of the full subset (10,800 + 1,200 images); the goal needs 1.0
    matmul_size: int
    matmul_repeats: int
    sources: int  # distinct generated 640x480 images (the others are hard links to them)
    family_train_images: int  # training crops of each families run (the SVM's support vectors)
    family_recipes: tuple[str, ...]  # names in RECIPES that the families section measures
    augment_workers: int  # processes of the augment pool; 0 = one per core (as the stage)
    checkpoint_repeats: int = 15  # epochs of per-epoch writes timed, each way
    duplicate_sizes: tuple[int, ...] = (5000, 20000)  # generated crops, smallest first
    scale_crops: int = 20000  # a lab's class folders that `scale` prepares and trains on
    scale_overrides: tuple[str, ...] = ()  # --set options of the scale run (tiny: small targets)


FULL = Plan(
    "full",
    train_steps=50,
    train_repeats=5,
    augment_idg_copies=48,
    augment_cv_copies=192,
    augment_repeats=3,
    transform_calls=20,
    predict_images=256,
    predict_calls=300,
    predict_repeats=5,
    cli_repeats=7,
    memory_steps=40,
    memory_fraction=1.0,
    matmul_size=2048,
    matmul_repeats=7,
    sources=32,
    family_train_images=1000,
    family_recipes=tuple(RECIPES),
    augment_workers=0,
)
QUICK = Plan(
    "quick",
    train_steps=15,
    train_repeats=3,
    augment_idg_copies=16,
    augment_cv_copies=64,
    augment_repeats=3,
    transform_calls=6,
    predict_images=48,
    predict_calls=100,
    predict_repeats=3,
    cli_repeats=3,
    memory_steps=10,
    memory_fraction=0.25,
    matmul_size=2048,
    matmul_repeats=3,
    sources=8,
    family_train_images=1000,
    family_recipes=tuple(RECIPES),
    augment_workers=0,
    duplicate_sizes=(1000, 4000),
    scale_crops=4000,
)
TINY = Plan(  # every section's code path in seconds; the figures mean nothing
    "tiny",
    train_steps=2,
    train_repeats=1,
    augment_idg_copies=2,
    augment_cv_copies=4,
    augment_repeats=1,
    transform_calls=2,
    predict_images=8,
    predict_calls=5,
    predict_repeats=1,
    cli_repeats=1,
    memory_steps=2,
    memory_fraction=0.005,
    matmul_size=256,
    matmul_repeats=2,
    sources=4,
    family_train_images=16,
    # the default recipe only: a CNN's training and LiteRT conversions would take most of a
    # minute on 2 cores (`wbc bench --quick --only families` runs them all)
    family_recipes=("features",),
    augment_workers=1,
    checkpoint_repeats=3,
    duplicate_sizes=(40, 160),
    scale_crops=40,
    scale_overrides=("augment.per_class=12", "subsets.full=12", "model.features.max_train=10"),
)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def _median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


# --------------------------------------------------------------------------- machine


def machine_info() -> dict[str, Any]:
    """CPU model and flags, core counts, memory, OS and Python (imports nothing heavy)."""
    model = platform.processor() or platform.machine()
    flags: list[str] = []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and model in ("", platform.machine()):
                model = value.strip()
            elif key.strip() == "flags" and not flags:
                flags = [f for f in value.split() if f.startswith(("avx", "fma", "amx"))]
    except OSError:
        pass
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        usable = os.cpu_count() or 1
    memory_gib = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_gib = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    return {
        "cpu_model": model,
        "cpu_flags": flags,
        "nproc": usable,
        "cpu_count": os.cpu_count(),
        "memory_gib": memory_gib,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
    }


def versions() -> dict[str, str]:
    """Library versions (imports TensorFlow: call after the machine's CLI timings)."""
    import cv2
    import numpy

    from wbc.core.tfsetup import import_tensorflow

    tf = import_tensorflow()
    import keras

    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": numpy.__version__,
        "opencv": cv2.__version__,
    }


# --------------------------------------------------------------------------- images


def make_images(folder: Path, n: int, seed: int = 0) -> list[Path]:
    """``n`` 640x480 smear-like JPEGs: pink noisy background, RBC discs, one purple WBC."""
    from PIL import Image

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


@contextlib.contextmanager
def private_cache(folder: Path):
    """``WBC_CACHE_DIR`` = ``folder`` inside the block (also for the subprocesses started in it):
    the LiteRT conversions of the bench's throwaway models stay out of the user's cache."""
    saved = os.environ.get("WBC_CACHE_DIR")
    os.environ["WBC_CACHE_DIR"] = str(folder)
    try:
        yield folder
    finally:
        if saved is None:
            os.environ.pop("WBC_CACHE_DIR", None)
        else:
            os.environ["WBC_CACHE_DIR"] = saved


def _link(src: Path, dst: Path) -> None:
    """A hard link (no disk, no copy time); a copy where the file system cannot link."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def source_images(tmp: Path, raw: Optional[Path], count: int, echo: Echo) -> tuple[list[Path], str]:
    """640x480 JPEGs to work on, staged under ``tmp/src``: the real ones, or ``count`` generated."""
    folder = tmp / "src"
    folder.mkdir(parents=True)
    if raw is None:
        echo(f"making {count} smear-like 640x480 JPEGs")
        return make_images(folder, count), "generated 640x480 smears"
    from wbc.data.raw import list_images, locate_raw

    found = locate_raw(Path(raw), raw_dir=tmp / "raw")
    images = [p for p in list_images(found.images) if p.suffix.lower() in (".jpg", ".jpeg")]
    if not images:
        raise DataError(f"{found.images}: no JPEG images")
    paths = []
    for index, path in enumerate(images):  # read-only source: copied (or linked) into tmp only
        target = folder / f"raw_{index:05d}.jpg"
        _link(path, target)
        paths.append(target)
    return paths, f"real JPEGs from {found.images} ({len(paths)})"


def fill_class_folders(root: Path, sources: Sequence[Path], n: int, classes: Sequence[str]) -> None:
    """``root/CLASS/*.jpg``: ``n`` images dealt over ``classes``, cycling through ``sources``."""
    for cls in classes:
        (root / cls).mkdir(parents=True, exist_ok=True)
    for index in range(n):
        cls = classes[index % len(classes)]
        _link(sources[index % len(sources)], root / cls / f"{cls}.{index:05d}.jpg")


def augmented_copies(folder: Path, sources: Sequence[Path], n: int, config) -> list[Path]:
    """One augmented copy of each source (at most ``n``), as the augment stage writes them.

    A prepared subset holds such copies (OpenCV engine here, for speed; JPEG quality
    ``augment.jpeg_quality``): ~50 KB for a real smear, more than twice the original's size, so
    decoding them (what flow_from_directory does every epoch) costs what it costs in training.
    """
    import dataclasses

    from wbc.core.imageio import read_rgb, write_jpeg
    from wbc.data.augmenters import make_augmenter

    folder.mkdir(parents=True)
    augmenter = make_augmenter(dataclasses.replace(config.augment, engine="opencv"))
    paths = []
    for index, source in enumerate(sources[:n]):
        image = read_rgb(source)
        target = folder / f"copy_{index:05d}.jpg"
        write_jpeg(
            augmenter.apply(image, augmenter.random_params(image.shape, index)),
            target,
            quality=config.augment.jpeg_quality,
        )
        paths.append(target)
    return paths


def train_run(
    config,
    train_dir: Path,
    test_dir: Path,
    run_dir: Path,
    epochs: int = 1,
) -> Path:
    """A run folder made by ``wbc.workflows.train.train`` itself (what ``wbc train`` calls): the
    family's
    model file, config.yaml, classes.json, the stain reference when ``color.normalize`` is set,
    domain.json, metrics. Its echo and Keras' epoch lines are dropped."""
    from wbc.core.tfsetup import import_tensorflow
    from wbc.workflows.train import train

    import_tensorflow()  # first, as `wbc train` does: without TF's start-up chatter

    with contextlib.redirect_stdout(io.StringIO()):  # Keras' per-epoch lines (verbose=2)
        return Path(
            train(
                config,
                epochs=epochs,
                run_dir=run_dir,
                folders=(train_dir, test_dir),
                echo=_quiet,
            )
        )


# --------------------------------------------------------------------------- FLOPs


def model_flops(model) -> dict[str, Any]:
    """Forward multiply-adds of every Conv2D and Dense layer, from the layer shapes.

    A 'valid' Conv2D costs out_h * out_w * filters * (k_h * k_w * in_channels) multiply-adds, a
    Dense in * out; one multiply-add = 2 FLOP. Pooling, ReLU, bias and softmax (~0.1%) are left
    out. Training ~ 3x forward (backward = gradients w.r.t. inputs + w.r.t. weights).
    """
    layers = []
    total = 0
    for layer in model.layers:
        kind = type(layer).__name__
        if kind not in ("Conv2D", "Dense"):
            continue
        out_shape = tuple(int(d) for d in layer.output.shape[1:])
        in_shape = tuple(int(d) for d in layer.input.shape[1:])
        if kind == "Conv2D":
            kh, kw = layer.kernel_size
            per_output = kh * kw * in_shape[-1]
            macs = out_shape[0] * out_shape[1] * out_shape[2] * per_output
            formula = (
                f"{out_shape[0]}x{out_shape[1]}x{out_shape[2]} outputs x "
                f"({kh}x{kw}x{in_shape[-1]}={per_output})"
            )
        else:
            macs = in_shape[-1] * out_shape[-1]
            formula = f"{in_shape[-1]} x {out_shape[-1]}"
        total += macs
        layers.append({"layer": layer.name, "multiply_adds": macs, "formula": formula})
    return {
        "layers": layers,
        "forward_multiply_adds": total,
        "forward_mflop": round(2 * total / 1e6, 2),
        "training_mflop": round(6 * total / 1e6, 2),
    }


# --------------------------------------------------------------------------- sections


def bench_cli(plan: Plan, echo: Echo) -> dict[str, Any]:
    """Wall seconds of ``wbc --help`` in a fresh process (and of a bare interpreter)."""
    exe = Path(sys.executable).with_name("wbc")
    command = [str(exe), "--help"] if exe.is_file() else [sys.executable, "-m", "wbc", "--help"]
    echo(f"timing {' '.join(command)} x{plan.cli_repeats}")

    def once(cmd):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        return time.perf_counter() - start

    once(command)  # warm-up: file cache, .pyc
    help_s = [once(command) for _ in range(plan.cli_repeats)]
    bare_s = [once([sys.executable, "-c", "pass"]) for _ in range(plan.cli_repeats)]
    return {
        "command": " ".join(command),
        "help_seconds": _median(help_s),
        "help_seconds_all": help_s,
        "python_startup_seconds": _median(bare_s),
        "repeats": plan.cli_repeats,
    }


def bench_matmul(plan: Plan, echo: Echo) -> dict[str, Any]:
    """float32 GFLOP/s of an n x n matmul: numpy (its BLAS) and TensorFlow; the best is 'peak'."""
    import numpy as np

    from wbc.core.tfsetup import import_tensorflow

    tf = import_tensorflow()
    n = plan.matmul_size
    echo(f"float32 matmul {n}x{n}, numpy and TensorFlow")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    flop = 2.0 * n**3

    def rate(function) -> tuple[list[float], float]:
        """GFLOP/s of each call, and GFLOP per CPU-second (all threads) over all calls."""
        function()
        times = []
        cpu = time.process_time()
        for _ in range(plan.matmul_repeats):
            start = time.perf_counter()
            function()
            times.append(time.perf_counter() - start)
        cpu = time.process_time() - cpu
        return [flop / t / 1e9 for t in times], flop * len(times) / max(cpu, 1e-9) / 1e9

    ta, tb = tf.constant(a), tf.constant(b)
    numpy_rates, numpy_cpu = rate(lambda: a @ b)
    tf_rates, tf_cpu = rate(lambda: tf.linalg.matmul(ta, tb).numpy())
    result = {
        "size": n,
        "repeats": plan.matmul_repeats,
        "numpy_gflops": _median(numpy_rates),
        "tensorflow_gflops": _median(tf_rates),
        "numpy_gflops_best": max(numpy_rates),
        "tensorflow_gflops_best": max(tf_rates),
        "numpy_gflops_per_cpu_s": numpy_cpu,
        "tensorflow_gflops_per_cpu_s": tf_cpu,
    }
    # Peak: the best call seen (wall), and per CPU-second (what one busy core does; x nproc
    # = the machine's peak when nothing else runs).
    result["peak_gflops"] = max(result["numpy_gflops_best"], result["tensorflow_gflops_best"])
    result["peak_gflops_per_cpu_s"] = max(numpy_cpu, tf_cpu)
    return result


class _EpochTimer:
    """A Keras callback factory: wall and process-CPU seconds of each epoch."""

    def __new__(cls):
        import keras

        class Timer(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.epochs: list[tuple[float, float]] = []

            def on_epoch_begin(self, epoch, logs=None):
                self.start = (time.perf_counter(), time.process_time())

            def on_epoch_end(self, epoch, logs=None):
                wall, cpu = self.start
                self.epochs.append((time.perf_counter() - wall, time.process_time() - cpu))

        return Timer()


FEEDS = ("in_memory", "project", "flow_from_directory")
FEED_LABELS = {
    "in_memory": "in-memory float32 array, from_tensor_slices (compute bound)",
    "project": "project tfdata feed (make_feed, cached)",
    "flow_from_directory": "study flow_from_directory (train.feed imagedatagenerator)",
}


def bench_train(tmp: Path, sources: Sequence[Path], plan: Plan, echo: Echo) -> dict[str, Any]:
    """Training images/s with the three feeds over the same class folders (see module doc)."""
    import numpy as np

    from wbc.core.tfsetup import import_tensorflow

    tf = import_tensorflow()
    import keras

    from wbc.core.config import CLASSES
    from wbc.imaging.feeds import list_class_files, load_images, make_feed
    from wbc.models.study import build_model, make_optimizer

    config = study_config()
    tc = config.train
    size = tuple(tc.image_size)
    batch = tc.batch_size
    n = plan.train_steps * batch
    folder = tmp / "train"
    fill_class_folders(folder, augmented_copies(tmp / "train-src", sources, n, config), n, CLASSES)
    echo(
        f"training feeds: {n} images of 640x480 in {len(CLASSES)} class folders, "
        f"{plan.train_steps} batches of {batch} per epoch, "
        f"1 warm-up + {plan.train_repeats} timed epochs per feed"
    )

    start = time.perf_counter()
    classes, files, labels = list_class_files(folder)
    images, _kept, _bad = load_images(files, size)
    x = images.astype(np.float32) / 255.0
    y = np.eye(len(classes), dtype=np.float32)[labels]
    memory = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).prefetch(tf.data.AUTOTUNE)
    in_memory_setup = time.perf_counter() - start
    start = time.perf_counter()
    project = make_feed(folder, size, batch, config.seed, training=True, cache=True)
    project_setup = time.perf_counter() - start
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):  # Keras prints "Found N images ..."
        study = make_feed(
            folder, size, batch, config.seed, training=True, feed="imagedatagenerator"
        )
    study_setup = time.perf_counter() - start
    data = {"in_memory": memory, "project": project.data, "flow_from_directory": study.data}

    # One model for the three feeds: the same compute per step, and one trace instead of three.
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.model, size, len(classes))
    model.compile(
        optimizer=make_optimizer(tc.optimizer, tc.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    timers = {name: _EpochTimer() for name in FEEDS}
    flops = model_flops(model)

    def epoch(name: str) -> None:
        model.fit(data[name], epochs=1, shuffle=False, verbose=0, callbacks=[timers[name]])

    for name in FEEDS:  # warm-up: tracing, thread pools, file cache
        epoch(name)
    for repeat in range(plan.train_repeats):
        order = FEEDS[repeat % 3 :] + FEEDS[: repeat % 3]  # rotate who goes first
        for name in order:
            epoch(name)
            echo(f"  {name}: {n / timers[name].epochs[-1][0]:.0f} images/s")

    feeds: dict[str, Any] = {}
    for name in FEEDS:
        timed = timers[name].epochs[1:]
        walls = [w for w, _ in timed]
        feeds[name] = {
            "label": FEED_LABELS[name],
            "images_per_s": n / _median(walls),
            "images_per_s_all": [n / w for w in walls],
            "images_per_cpu_s": n / _median([c for _, c in timed]),
            "warmup_epoch_s": timers[name].epochs[0][0],
            "full_recipe_hours": STUDY_EPOCHS * STUDY_TRAIN_IMAGES / (n / _median(walls)) / 3600,
            "full_recipe_cpu_hours": (
                STUDY_EPOCHS * STUDY_TRAIN_IMAGES / (n / _median([c for _, c in timed])) / 3600
            ),
        }
    feeds["in_memory"]["setup_s"] = in_memory_setup
    feeds["project"]["setup_s"] = project_setup
    feeds["flow_from_directory"]["setup_s"] = study_setup

    def ratio(a: str, b: str) -> dict[str, float]:
        pairs = [
            ra / rb for ra, rb in zip(feeds[a]["images_per_s_all"], feeds[b]["images_per_s_all"])
        ]
        return {
            "of_medians": feeds[a]["images_per_s"] / feeds[b]["images_per_s"],
            "median_of_rounds": _median(pairs),
            "cpu": feeds[a]["images_per_cpu_s"] / feeds[b]["images_per_cpu_s"],
        }

    return {
        "images": n,
        "batch_size": batch,
        "steps_per_epoch": plan.train_steps,
        "image_size": list(size),
        "warmup_epochs": 1,
        "repeats": plan.train_repeats,
        "parameters": int(model.count_params()),
        "feeds": feeds,
        "project_vs_in_memory": ratio("project", "in_memory"),
        "project_vs_flow_from_directory": ratio("project", "flow_from_directory"),
        "flops": flops,
    }


def bench_checkpoint(tmp: Path, plan: Plan, echo: Echo) -> dict[str, Any]:
    """What ``wbc train`` writes after every epoch of the study family, timed: the crash-safe
    backup commit (weights, digest, record; each fsynced and renamed), the history.csv row and
    the two models, against what it wrote before (Keras' ``BackupAndRestore`` with
    ``double_checkpoint``: the weights rewritten in place after copying the previous ones, the
    two models renamed into place without fsync). For scale, one epoch of ``plan.train_steps``
    batches of 16 in-memory images, from which the extra share of a real epoch is derived."""
    import numpy as np

    from wbc.core.tfsetup import import_tensorflow

    import_tensorflow()
    import keras

    from wbc.core.runfolder import append_history
    from wbc.models.checkpoint import commit
    from wbc.models.study import build_model, make_optimizer
    from wbc.models.training import save_model

    config = study_config()
    tc = config.train
    size = tuple(tc.image_size)
    keras.utils.set_random_seed(config.seed)
    model = build_model(config.model, size, 4)
    model.compile(
        optimizer=make_optimizer(tc.optimizer, tc.learning_rate),
        loss="categorical_crossentropy",
        metrics=["accuracy"],
    )
    n = plan.train_steps * tc.batch_size
    rng = np.random.default_rng(config.seed)
    x = rng.random((n, *size, 3), dtype=np.float32)
    y = np.eye(4, dtype=np.float32)[np.arange(n) % 4]
    model.fit(x, y, batch_size=tc.batch_size, epochs=1, verbose=0)  # warm-up: trace, optimizer
    start = time.perf_counter()
    model.fit(x, y, batch_size=tc.batch_size, epochs=1, verbose=0)
    epoch_seconds = time.perf_counter() - start
    echo(
        f"checkpoint: per-epoch writes of the study model ({model.count_params():,} parameters), "
        f"{plan.checkpoint_repeats} epochs each way; one epoch of {n} images for scale"
    )
    run_dir, before_dir = tmp / "checkpoint-run", tmp / "checkpoint-before"
    before_dir.mkdir(parents=True)
    row = {"loss": 1.0, "accuracy": 0.5, "val_loss": 1.0, "val_accuracy": 0.5, "lr": 0.001}
    rows: list[dict[str, Any]] = []
    now, before = [], []
    for epoch in range(plan.checkpoint_repeats):
        rows.append({"epoch": epoch, **row, "seconds": 1.0})
        start = time.perf_counter()
        commit(model, run_dir, rows)
        append_history(run_dir / "history.csv", rows[-1])
        save_model(model, run_dir / "model.keras")
        save_model(model, run_dir / "last.keras")
        now.append(time.perf_counter() - start)
        start = time.perf_counter()
        weights = before_dir / "latest.weights.h5"
        if weights.exists():
            shutil.copyfile(weights, f"{weights}.bkp")
        model.save_weights(str(weights))
        (before_dir / "training_metadata.json").write_text(json.dumps({"epoch": epoch + 1}))
        for name in ("model", "last"):
            partial = before_dir / f".{name}.tmp.keras"
            model.save(partial)
            os.replace(partial, before_dir / f"{name}.keras")
        before.append(time.perf_counter() - start)
    extra = statistics.median(now) - statistics.median(before)
    per_image = epoch_seconds / n
    # An epoch of a prepared subset: its training side, plus validation on its test side (~1/3
    # of a training step's cost per image: a forward pass only).
    small, full = 1080 + 120 / 3, 10800 + 1200 / 3
    return {
        "now_ms": statistics.median(now) * 1000,
        "before_ms": statistics.median(before) * 1000,
        "extra_ms": extra * 1000,
        "epoch_images": n,
        "epoch_seconds": epoch_seconds,
        "extra_share_small": extra / (per_image * small),
        "extra_share_full": extra / (per_image * full),
        "repeats": plan.checkpoint_repeats,
    }


def _warm_worker(configs, seed: int) -> None:
    """Augment pool initializer: the stage's set-up (one OpenCV thread per worker process, as
    ``wbc.data.stages.augment`` starts its workers), then build each engine (quietly): an
    ``augment_chunk`` with no jobs builds the process's engine for that config and keeps it."""
    from wbc.core.tfsetup import import_tensorflow
    from wbc.data.stages.augment import augment_chunk, init_worker

    init_worker()
    import_tensorflow()  # what the Keras engine imports, without TF's start-up chatter
    for config in configs:
        augment_chunk([], Path(tempfile.gettempdir()), config, seed)


def _timed_chunk(jobs, out, config, seed) -> tuple[int, float]:
    """``augment_chunk`` and the CPU seconds it took in its process."""
    from wbc.data.stages.augment import augment_chunk

    cpu = time.process_time()
    written = augment_chunk(jobs, out, config, seed)
    return written, time.process_time() - cpu


def augment_jobs(sources: Sequence[Path], copies: int, per_source: int = 8):
    """``copies`` copies, ``per_source`` from each source read (the stage makes ~33 per source)."""
    from wbc.data.stages.augment import SourceJob

    jobs, done, source = [], 0, 0
    while done < copies:
        count = min(per_source, copies - done)
        path = sources[source % len(sources)]
        jobs.append(SourceJob("NEUTROPHIL", source, path, tuple(range(done, done + count))))
        done += count
        source += 1
    return jobs


def bench_augment(tmp: Path, sources: Sequence[Path], plan: Plan, echo: Echo) -> dict[str, Any]:
    """Copies/s of the augment stage's work (read, transform, write JPEG) per engine and mode.

    One process = the stage's ``workers: 1`` path (``augment_chunk`` in this process). All cores =
    its spawned process pool and chunking, with the workers started (and the engines built) by a
    warm-up run first; the warm-up's extra seconds are the pool's start-up, paid once per stage.
    Besides wall-clock rates, copies per CPU-second: on a shared machine the pool cannot beat one
    process when no core is free, but its CPU cost per copy shows whether the work parallelises.
    """
    import dataclasses
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from wbc.core.config import load_config
    from wbc.core.imageio import read_rgb
    from wbc.data.augmenters import make_augmenter

    config = load_config()
    workers = plan.augment_workers or os.cpu_count() or 1
    out_root = tmp / "augmented"
    result: dict[str, Any] = {
        "workers": workers,
        "repeats": plan.augment_repeats,
        "image_size": "640x480",
        "engines": {},
    }
    image = read_rgb(sources[0])
    engines = {"imagedatagenerator": plan.augment_idg_copies, "opencv": plan.augment_cv_copies}
    configs = {e: dataclasses.replace(config.augment, engine=e) for e in engines}

    from wbc.data.stages import augment as augment_stage

    def run_once(run: Callable[[Path], list[tuple[int, float]]]) -> tuple[float, float, float]:
        """(copies/s, copies per CPU-second, seconds) of one run into a fresh folder."""
        out = out_root / f"r{time.monotonic_ns()}"
        (out / "NEUTROPHIL").mkdir(parents=True)
        start = time.perf_counter()
        parts = run(out)
        elapsed = time.perf_counter() - start
        shutil.rmtree(out)
        written = sum(w for w, _ in parts)
        return written / elapsed, written / max(sum(c for _, c in parts), 1e-9), elapsed

    for engine, copies in engines.items():
        aug = configs[engine]
        jobs = augment_jobs(sources, copies)
        echo(
            f"augment, {engine}: transform only, then {copies} copies in one process, "
            f"1 warm-up + {plan.augment_repeats} timed repeats"
        )
        augmenter = make_augmenter(aug)  # transform only (no file I/O), in this process
        params = [
            augmenter.random_params(image.shape, seed) for seed in range(plan.transform_calls)
        ]
        augmenter.apply(image, params[0])
        times = []
        for p in params:
            start = time.perf_counter()
            augmenter.apply(image, p)
            times.append(time.perf_counter() - start)
        warm = augment_jobs(sources, min(4, copies))
        run_once(lambda out: [_timed_chunk(warm, out, aug, config.seed)])
        one = [
            run_once(lambda out: [_timed_chunk(jobs, out, aug, config.seed)])
            for _ in range(plan.augment_repeats)
        ]
        result["engines"][engine] = {
            "copies": copies,
            "transform_only_per_s": 1 / _median(times),
            "transform_calls": len(times),
            "one_process_per_s": _median([r for r, _, _ in one]),
            "one_process_per_s_all": [r for r, _, _ in one],
            "one_process_per_cpu_s": _median([c for _, c, _ in one]),
        }

    echo(f"augment: the stage's pool of {workers} spawned workers, both engines")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers,
        mp_context=context,
        initializer=_warm_worker,
        initargs=(tuple(configs.values()), config.seed),
    ) as pool:
        for engine, copies in engines.items():
            aug = configs[engine]
            jobs = augment_jobs(sources, copies)
            chunks = augment_stage.chunk_jobs(
                jobs, math.ceil(copies / (workers * 4))
            )  # as run_jobs does

            def parallel(out: Path) -> list[tuple[int, float]]:
                futures = [pool.submit(_timed_chunk, c, out, aug, config.seed) for c in chunks]
                return [f.result() for f in futures]

            first = run_once(parallel)  # warm-up; the first engine's also starts the workers
            many = [run_once(parallel) for _ in range(plan.augment_repeats)]
            entry = result["engines"][engine]
            entry.update(
                parallel_per_s=_median([r for r, _, _ in many]),
                parallel_per_s_all=[r for r, _, _ in many],
                parallel_per_cpu_s=_median([c for _, c, _ in many]),
                warmup_run_s=first[2],
            )
            if engine == "imagedatagenerator":
                result["pool_startup_s"] = max(0.0, first[2] - _median([t for _, _, t in many]))
    idg, cv = result["engines"]["imagedatagenerator"], result["engines"]["opencv"]
    result["parallel_idg_vs_one_process"] = idg["parallel_per_s"] / idg["one_process_per_s"]
    # What the pool would give with its cores free: workers x its CPU efficiency vs one process.
    result["parallel_idg_vs_one_process_cpu_bound"] = (
        workers * idg["parallel_per_cpu_s"] / idg["one_process_per_cpu_s"]
    )
    result["parallel_opencv_vs_one_process"] = cv["parallel_per_s"] / cv["one_process_per_s"]
    result["opencv_vs_idg"] = cv["parallel_per_s"] / idg["parallel_per_s"]
    result["opencv_vs_idg_one_process"] = cv["one_process_per_s"] / idg["one_process_per_s"]
    result["opencv_vs_idg_cpu"] = cv["parallel_per_cpu_s"] / idg["parallel_per_cpu_s"]
    result["opencv_vs_idg_transform_only"] = (
        cv["transform_only_per_s"] / idg["transform_only_per_s"]
    )
    return result


# --------------------------------------------------------------------------- predict


def make_run(folder: Path, images: Sequence[Path], per_class: int = 4) -> Path:
    """The model file of a study-recipe run folder (``folder``) that ``wbc.workflows.train.train``
    made:
    one epoch on ``per_class`` of ``images`` per class (labels dealt round-robin: the cost of a
    prediction does not depend on the weights), validated on one image per class."""
    from wbc.core.config import CLASSES
    from wbc.models.runs import resolve_model_path

    data = folder.with_name(f"{folder.name}-data")
    fill_class_folders(data / "train", images, per_class * len(CLASSES), CLASSES)
    fill_class_folders(data / "test", list(images)[::-1], len(CLASSES), CLASSES)
    return resolve_model_path(train_run(study_config(), data / "train", data / "test", folder))


def _latencies(predictor, image, calls: int) -> list[float]:
    for _ in range(min(20, calls)):  # warm-up: tracing, interpreter allocation, caches
        predictor(image)
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predictor(image)
        times.append(time.perf_counter() - start)
    return times


def single_latency(run, calls: int, engine: str = "auto", predictor=None) -> dict[str, Any]:
    """One uint8 image through ``Predictor`` (``engine``), and for a Keras model through the
    ``tf.function`` engine and ``model.predict``: milliseconds per call after warm-up."""
    from wbc.imaging.preprocess import scale
    from wbc.models.keras_family import KerasClassifier
    from wbc.workflows.predict import Predictor

    height, width = run.spec.image_size
    image = np.random.default_rng(0).integers(0, 256, (1, height, width, 3), dtype=np.uint8)
    predictor = predictor or Predictor.from_run(run, engine)
    times = _latencies(predictor, image, calls)
    result = {
        "engine": predictor.engine,
        "median_ms": statistics.median(times) * 1e3,
        "p90_ms": float(np.percentile(times, 90)) * 1e3,
        "min_ms": min(times) * 1e3,
        "calls": calls,
    }
    if not isinstance(run.model, KerasClassifier):
        return result
    graph = _latencies(Predictor.from_run(run, "tensorflow"), image, calls)
    model = run.model.model
    slow = []
    for _ in range(min(5, calls)):
        model.predict(scale(image), verbose=0)
    for _ in range(min(20, calls)):
        start = time.perf_counter()
        model.predict(scale(image), verbose=0)
        slow.append(time.perf_counter() - start)
    result.update(
        tf_function_median_ms=statistics.median(graph) * 1e3,
        tf_function_min_ms=min(graph) * 1e3,
        model_predict_median_ms=statistics.median(slow) * 1e3,
    )
    return result


def decode_only(files, spec, crop_size, workers) -> None:
    """Read + (crop) + resize every file with the same thread pool as predict, no model."""
    from wbc.core.imageio import read_rgb
    from wbc.workflows.predict import iter_loaded, model_inputs

    def load(path):
        return model_inputs(read_rgb(path), spec, crop_size)

    for _path, _loaded in iter_loaded(files, load, workers, prefetch=2 * 64 + workers):
        pass


def timed_call(function) -> tuple[float, float, Any]:
    """``(wall seconds, process CPU seconds, result)`` of ``function()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    result = function()
    return time.perf_counter() - wall, time.process_time() - cpu, result


def predict_figures(
    run,
    files: Sequence[Path],
    *,
    repeats: int = 5,
    calls: int = 500,
    batch_size: int = 64,
    engine: str = "auto",
    workers: int = 0,
    model: str = "",
) -> dict[str, Any]:
    """Single-image latency and folder throughput of ``run`` (a ``wbc.models.runs.Run``) on
    ``files``
    vs decoding + resizing them alone (see benchmarks/bench_predict.py for what each figure is)."""
    from wbc.workflows.predict import Predictor, default_workers, predict_files

    workers = workers or default_workers()
    predictor = Predictor.from_run(run, engine)
    latency = single_latency(run, calls, engine, predictor)

    def predict():
        return predict_files(
            run, files, predictor=predictor, batch_size=batch_size, workers=workers
        )

    def decode():
        return decode_only(files, run.spec, run.crop_size, workers)

    predict_files(run, files[:batch_size], predictor=predictor, workers=workers)
    decode()  # warm-up: trace, file cache
    pipeline, decoding = [], []
    for repeat in range(max(1, repeats)):
        # Alternate the order so that a change in machine load does not favour one side.
        if repeat % 2:
            pipeline.append(timed_call(predict))
            decoding.append(timed_call(decode))
        else:
            decoding.append(timed_call(decode))
            pipeline.append(timed_call(predict))
    serial_s = min(
        timed_call(lambda: decode_only(files, run.spec, run.crop_size, 1))[0] for _ in range(2)
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
        "model": model or str(run.model_path),
        "image_size": list(run.spec.image_size),
        "crop_mode": run.spec.crop_mode,
        "images": len(files),
        "failed": failed,
        "workers": workers,
        "batch_size": batch_size,
        "cpu_count": os.cpu_count(),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "engine": latency["engine"],
        "single_image_ms_median": round(latency["median_ms"], 3),
        "single_image_ms_p90": round(latency["p90_ms"], 3),
        "single_image_ms_min": round(latency["min_ms"], 3),
    }
    if "tf_function_median_ms" in latency:
        result.update(
            single_image_tf_function_ms_median=round(latency["tf_function_median_ms"], 3),
            single_image_tf_function_ms_min=round(latency["tf_function_min_ms"], 3),
            model_predict_ms_median=round(latency["model_predict_median_ms"], 3),
        )
    result.update(
        predict_images_per_s=round(predict_rate, 1),
        decode_only_images_per_s=round(decode_rate, 1),
        ratio=round(predict_rate / decode_rate, 3),
        ratio_median_of_pairs=round(statistics.median(pair_ratios), 3),
        ratio_cpu_time=round(cpu_ratio, 3),
        decode_one_thread_images_per_s=round(len(files) / serial_s, 1),
        repeats=len(pair_ratios),
    )
    return result


def bench_predict(tmp: Path, sources: Sequence[Path], plan: Plan, echo: Echo) -> dict[str, Any]:
    """``predict_figures`` on ``plan.predict_images`` of the same 640x480 images, with a
    study-recipe run folder that ``wbc.workflows.train.train`` made (``make_run``)."""
    from wbc.models.runs import load_run

    folder = tmp / "predict"
    folder.mkdir()
    files = []
    for index in range(plan.predict_images):
        files.append(folder / f"smear_{index:05d}.jpg")
        _link(sources[index % len(sources)], files[-1])
    echo("predict: training a study-recipe run for one epoch (wbc.workflows.train.train)")
    run = load_run(make_run(tmp / "predict-run", sources))
    echo(
        f"predict: {plan.predict_images} images, {plan.predict_calls} single-image calls, "
        f"{plan.predict_repeats} folder passes"
    )
    return predict_figures(
        run,
        files,
        repeats=plan.predict_repeats,
        calls=plan.predict_calls,
        model="study recipe, trained one epoch on 16 images (wbc.workflows.train.train)",
    )


def bench_families(tmp: Path, sources: Sequence[Path], plan: Plan, echo: Echo) -> dict[str, Any]:
    """Milliseconds per cell of ``wbc predict`` on a folder of 256-pixel cell crops for each
    recipe in ``RECIPES``: decoding, stain normalisation, features, the out-of-domain flag, TTA
    and every ensemble member included.

    Each recipe's run folder is made by ``wbc.workflows.train.train`` (one epoch; the built-in
    defaults,
    ``crop.mode=detect``, then the recipe's overrides) on ``plan.family_train_images`` crops whose
    labels are dealt round-robin: a CNN costs the same whatever its weights, and the SVM keeps
    nearly every such crop as a support vector (the cost of a large trained one). ``model.tta``
    only changes prediction, so a recipe that differs from another only by it reuses its run.
    """
    from wbc.core.config import CLASSES, load_config
    from wbc.core.imageio import read_rgb, write_jpeg
    from wbc.models.runs import load_run
    from wbc.workflows.predict import Predictor, predict_files

    crops = tmp / "crops"
    crops.mkdir()
    files = []
    for index in range(plan.predict_images):
        rgb = read_rgb(sources[index % len(sources)])
        top, left = (rgb.shape[0] - 256) // 2, (rgb.shape[1] - 256) // 2
        files.append(crops / f"cell_{index:05d}.jpg")
        write_jpeg(np.ascontiguousarray(rgb[top : top + 256, left : left + 256]), files[-1])
    data = tmp / "families-data"
    fill_class_folders(data / "train", files, plan.family_train_images, CLASSES)
    fill_class_folders(data / "test", files[::-1], 2 * len(CLASSES), CLASSES)
    result: dict[str, Any] = {
        "cells": len(files),
        "train_images": plan.family_train_images,
        "recipes": {},
    }
    trained: dict[tuple[str, ...], Path] = {}
    for name in plan.family_recipes:
        overrides = RECIPES[name]
        config = load_config(overrides=["crop.mode=detect", *overrides])
        key = tuple(o for o in overrides if not o.replace(" ", "").startswith("model.tta="))
        if key not in trained:
            echo(
                f"families: {name}: training ({', '.join(key)}) for one epoch on "
                f"{plan.family_train_images} crops (wbc.workflows.train.train)"
            )
            trained[key] = train_run(
                load_config(overrides=["crop.mode=detect", *key]),
                data / "train",
                data / "test",
                tmp / f"run-{len(trained)}",
            )
        run = load_run(trained[key])
        predictor = Predictor.from_run(run, tta=config.model.tta)
        ms = _ms_per_cell(lambda: predict_files(run, files, predictor=predictor), files, plan)
        result["recipes"][name] = {
            "ms_per_cell": round(ms, 3),
            "engine": predictor.engine,
            "tta": config.model.tta,
            "repeats": plan.predict_repeats,
        }
        echo(f"families: {name}: {ms:.2f} ms per cell ({predictor.engine})")
        if name == DEFAULT_RECIPE:
            result["adapted"] = adapted_costs(trained[key], crops, files, tmp, plan, echo)
    result["slowest_ms_per_cell"] = max(r["ms_per_cell"] for r in result["recipes"].values())
    return result


def _ms_per_cell(predict: Callable[[], Any], files: Sequence[Path], plan: Plan) -> float:
    """The fastest of ``plan.predict_repeats`` timed calls of ``predict`` over ``files``, after
    one untimed call (warm-up: loading, a conversion, the first thread pool), in ms per file."""
    predict()
    times = []
    for _ in range(plan.predict_repeats):
        start = time.perf_counter()
        predict()
        times.append(time.perf_counter() - start)
    return 1e3 * min(times) / len(files)


def adapted_costs(
    run_dir: Path, crops: Path, files: Sequence[Path], tmp: Path, plan: Plan, echo: Echo
) -> dict[str, Any]:
    """The default recipe adapted without labels (issue 23), in ms per cell of ``wbc predict``:

    - ``run``: the run that ``wbc adapt RUN --unlabelled CROPS`` writes (the library call, its
      default ``--priors auto``), predicted like any run: the issue's goal, <= 10 ms;
    - ``on_sample``: ``wbc predict --adapt always`` with the run as trained: a copy adapted in
      memory on the files themselves, which are read and classified again (what ``wbc count``
      pays, once per count, when the out-of-domain flag fires).
    """
    from wbc.models.runs import load_run
    from wbc.workflows.adapt import adapt
    from wbc.workflows.predict import Predictor, predict_files

    echo(f"families: {DEFAULT_RECIPE}: adapting on the {len(files)} crops (wbc adapt)")
    adapted_dir = tmp / "run-adapted"
    record = adapt(run_dir, crops, adapted_dir, echo=_quiet)
    adapted = load_run(adapted_dir)
    predictor = Predictor.from_run(adapted)
    run_ms = _ms_per_cell(lambda: predict_files(adapted, files, predictor=predictor), files, plan)
    run = load_run(run_dir)
    sample_ms = _ms_per_cell(lambda: predict_files(run, files, adapt="always"), files, plan)
    echo(
        f"families: {DEFAULT_RECIPE}: adapted run {run_ms:.2f} ms per cell, adapted on the "
        f"sample {sample_ms:.2f} ms per cell"
    )
    return {
        "recipe": DEFAULT_RECIPE,
        "parts": [part["part"] for part in record["parts"]],
        "run_ms_per_cell": round(run_ms, 3),
        "on_sample_ms_per_cell": round(sample_ms, 3),
        "repeats": plan.predict_repeats,
    }


def make_memory_subset(data: Path, sources: Sequence[Path], train: int, test: int) -> None:
    """``data/processed/full/{train,test}/CLASS/`` of 120x160 JPEGs (links to resized sources)."""
    import cv2

    from wbc.core.config import CLASSES
    from wbc.core.imageio import read_rgb, write_jpeg

    small = []
    for index, path in enumerate(sources):
        target = data / "small-sources" / f"{index:05d}.jpg"
        target.parent.mkdir(parents=True, exist_ok=True)
        write_jpeg(cv2.resize(read_rgb(path), (160, 120), interpolation=cv2.INTER_AREA), target)
        small.append(target)
    fill_class_folders(data / "processed" / "full" / "train", small, train, CLASSES)
    fill_class_folders(data / "processed" / "full" / "test", small[::-1], test, CLASSES)


def bench_memory(tmp: Path, sources: Sequence[Path], plan: Plan, echo: Echo) -> dict[str, Any]:
    """Peak RSS of ``wbc train`` (a subprocess) on a full-size subset at 120x160."""
    train = round(STUDY_TRAIN_IMAGES * plan.memory_fraction)
    test = round((12_000 - STUDY_TRAIN_IMAGES) * plan.memory_fraction)
    data = tmp / "memory-data"
    make_memory_subset(data, sources, train, test)
    from wbc.core.config import dump_config

    recipe = tmp / "study.yaml"  # the study's CNN, whatever the built-in default family is
    dump_config(study_config(), recipe)
    exe = Path(sys.executable).with_name("wbc")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "wbc"]
    command += [
        "train",
        "--config",
        str(recipe),
        "--data-dir",
        str(data),
        "--subset",
        "full",
        "--epochs",
        "1",
        "--run-dir",
        str(tmp / "memory-run"),
        "--set",
        f"train.steps_per_epoch={plan.memory_steps}",
    ]
    echo(
        f"peak RSS: wbc train (study recipe) on {train} + {test} 120x160 JPEGs (resized copies "
        f"of the images) ({plan.memory_steps} steps; the whole training side is cached and "
        "shuffled)"
    )
    log = tmp / "memory-train.log"
    start = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    elapsed = time.perf_counter() - start
    if process.returncode != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise DataError(f"{log}: wbc train failed ({process.returncode}): {' | '.join(tail)}")
    peak = usage.ru_maxrss * 1024 if sys.platform != "darwin" else usage.ru_maxrss
    cache = train * 120 * 160 * 3
    return {
        "command": " ".join(command),
        "train_images": train,
        "test_images": test,
        "peak_rss_gib": peak / 2**30,
        "uint8_cache_gib": cache / 2**30,
        "full_size": plan.memory_fraction == 1.0,
        "wall_s": elapsed,
        "repeats": 1,
    }


# --------------------------------------------------------------------------- report


def duplicates_child(folder: str, out: str) -> None:
    """``find_duplicates`` on every image under ``folder``, ids = relative paths; the figures
    go to the JSON file ``out``. Run in a fresh process, so that its peak RSS is this call's."""
    import resource

    import wbc.data.cells  # noqa: F401  (find_duplicates imports it: before the baseline)
    from wbc.core.imageio import is_image_name
    from wbc.data.duplicates import find_duplicates

    root = Path(folder)
    images = {
        p.relative_to(root).as_posix(): p
        for p in sorted(root.rglob("*"))
        if p.is_file() and is_image_name(p)
    }
    base_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    cpu, start = time.process_time(), time.perf_counter()
    pairs = find_duplicates(images)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    figures = {
        "images": len(images),
        "wall_s": wall,
        "cpu_s": cpu,
        "rss_before_mib": base_kib / 1024,
        "rss_peak_mib": peak_kib / 1024,
        "rss_growth_mib": (peak_kib - base_kib) / 1024,
        "pairs": [[a, b] for a, b, _ in pairs],
    }
    Path(out).write_text(json.dumps(figures), encoding="utf-8")


def bench_duplicates(tmp: Path, plan: Plan, echo: Echo) -> dict[str, Any]:
    """``find_duplicates`` on generated class folders of crops (``benchmarks.crops``, 1% planted
    copies) at each of ``plan.duplicate_sizes``: wall and CPU seconds, the peak RSS it adds
    (a fresh process each), the planted copies found, and the largest / smallest ratios."""
    from benchmarks.crops import write_crop_folders
    from wbc.data.duplicates import group_ids

    runs: dict[str, Any] = {}
    for n in plan.duplicate_sizes:
        root = tmp / f"crops-{n}"
        echo(f"duplicates: writing {n:,} generated 120x120 crops")
        start = time.perf_counter()
        share = max(DUPLICATE_SHARE, 8 / n)  # a few copies even in a tiny set
        made = write_crop_folders(root, n, seed=0, duplicates=share)
        written_s = time.perf_counter() - start
        echo(f"duplicates: find_duplicates on {n:,} crops")
        out = tmp / f"duplicates-{n}.json"
        code = "import sys; from benchmarks.bench import duplicates_child as f; f(*sys.argv[1:])"
        subprocess.run([sys.executable, "-c", code, str(root), str(out)], check=True)
        child = json.loads(out.read_text(encoding="utf-8"))

        def key(path: Path) -> str:
            return path.relative_to(root).as_posix()

        planted = {tuple(sorted((key(a), key(b)))) for a, b, _ in made.pairs}
        found = {tuple(p) for p in child.pop("pairs")}
        # Two copies of one crop are a pair too: only a pair across planted groups is wrong.
        groups = group_ids([key(p) for p in made.paths], planted)
        wrong = sorted(p for p in found if groups[p[0]] != groups[p[1]])
        runs[str(n)] = {
            **child,
            "write_s": written_s,
            "planted": len(planted),
            "planted_found": len(planted & found),
            "found": len(found),
            "wrong_pairs": len(wrong),
            "wrong_examples": [list(p) for p in wrong[:5]],
            "ms_per_image": 1e3 * child["wall_s"] / n,
            "cpu_ms_per_image": 1e3 * child["cpu_s"] / n,
        }
        shutil.rmtree(root, ignore_errors=True)
    small = runs[str(plan.duplicate_sizes[0])]
    large = runs[str(plan.duplicate_sizes[-1])]
    planted = sum(r["planted"] for r in runs.values())
    return {
        "sizes": list(plan.duplicate_sizes),
        "runs": runs,
        "images_ratio": large["images"] / small["images"],
        "time_ratio": large["wall_s"] / small["wall_s"],
        "cpu_ratio": large["cpu_s"] / small["cpu_s"],
        "memory_ratio": large["rss_growth_mib"] / max(small["rss_growth_mib"], 1.0),
        "planted_found_share": (
            sum(r["planted_found"] for r in runs.values()) / planted if planted else 1.0
        ),
        "wrong_pairs": sum(r["wrong_pairs"] for r in runs.values()),
    }


def _timed_wbc(args: Sequence[str], log: Path) -> dict[str, float]:
    """Run ``wbc ARGS`` as a subprocess: wall and CPU seconds, and the peak RSS of the largest
    process (itself or a worker it waited for, e.g. the augment pool), from ``wait4``."""
    exe = Path(sys.executable).with_name("wbc")
    command = [str(exe)] if exe.is_file() else [sys.executable, "-m", "wbc"]
    start = time.perf_counter()
    with log.open("wb") as sink:
        process = subprocess.Popen([*command, *args], stdout=sink, stderr=subprocess.STDOUT)
        _pid, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    if os.waitstatus_to_exitcode(status) != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-5:]
        raise DataError(f"{log}: wbc {args[0]} failed: {' | '.join(tail)}")
    peak = usage.ru_maxrss * 1024 if sys.platform != "darwin" else usage.ru_maxrss
    return {
        "wall_s": wall,
        "cpu_s": usage.ru_utime + usage.ru_stime,
        "peak_rss_gib": peak / 2**30,
    }


def bench_scale(tmp: Path, plan: Plan, echo: Echo) -> dict[str, Any]:
    """``wbc prepare --raw`` + ``wbc train`` (the default recipe) on a lab's generated class
    folders of ``plan.scale_crops`` 120x120 crops (``benchmarks.crops``, 1% planted copies): each
    command's wall and CPU time and peak RSS, and the rename stage's share (decoding, hashing,
    the duplicate search)."""
    from benchmarks.crops import write_crop_folders
    from wbc.core.manifest import Manifest

    root, data, run = tmp / "scale-lab", tmp / "scale-data", tmp / "scale-run"
    n = plan.scale_crops
    echo(f"scale: writing {n:,} generated 120x120 crops in class folders")
    write_crop_folders(root, n, seed=1, duplicates=max(DUPLICATE_SHARE, 8 / n))
    sets = [x for o in plan.scale_overrides for x in ("--set", o)]
    echo(f"scale: wbc prepare --raw {root} (default recipe)")
    prepare = _timed_wbc(
        ["prepare", "--raw", str(root), "--data-dir", str(data), *sets], tmp / "scale-prepare.log"
    )
    echo("scale: wbc train (default recipe)")
    train = _timed_wbc(
        ["train", "--data-dir", str(data), "--run-dir", str(run), *sets], tmp / "scale-train.log"
    )
    stages = {}
    for stage, folder in (
        ("rename", data / "interim" / "renamed"),
        ("crop", data / "interim" / "cropped"),
        ("augment", data / "interim" / "augmented"),
        ("split", data / "processed" / "split"),
    ):
        stages[stage] = round(Manifest.load(folder).seconds, 1)
    renamed = Manifest.load(data / "interim" / "renamed").summary
    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    total = prepare["wall_s"] + train["wall_s"]
    shutil.rmtree(root, ignore_errors=True)
    return {
        "crops": n,
        "prepare": prepare,
        "train": train,
        "stage_seconds": stages,
        "kept": renamed.get("kept"),
        "duplicate_pairs": renamed.get("duplicate_pairs"),
        "train_images": metrics.get("train_images"),
        "minutes": total / 60,
        "cpu_minutes": (prepare["cpu_s"] + train["cpu_s"]) / 60,
        "peak_rss_gib": max(prepare["peak_rss_gib"], train["peak_rss_gib"]),
        "full_size": n >= 20000,
        "overrides": list(plan.scale_overrides),
        "repeats": 1,
    }


def _fmt(value: float, digits: int = 1) -> str:
    return f"{value:,.{digits}f}"


def goal_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each goal of issue 6 with the measured value and whether it is met.

    ``value`` is the wall-clock figure the goal names; ``value_cpu`` (where there is one) the same
    ratio from CPU seconds, which holds better when other work shares the cores.
    """
    sections = results["sections"]
    values: dict[str, tuple[float, Optional[float]]] = {}
    if "train" in sections:
        for key in ("project_vs_in_memory", "project_vs_flow_from_directory"):
            ratio = sections["train"][key]
            values[key] = (ratio["of_medians"], ratio["cpu"])
    if "augment" in sections:
        a = sections["augment"]
        values["parallel_idg_vs_one_process"] = (
            a["parallel_idg_vs_one_process"],
            a["parallel_idg_vs_one_process_cpu_bound"],
        )
        values["opencv_vs_idg"] = (a["opencv_vs_idg"], a["opencv_vs_idg_cpu"])
    if "checkpoint" in sections:
        values["checkpoint_extra_share_small"] = (sections["checkpoint"]["extra_share_small"], None)
    if "cli" in sections:
        values["help_seconds"] = (sections["cli"]["help_seconds"], None)
    if "families" in sections:
        values["slowest_recipe_ms_per_cell"] = (sections["families"]["slowest_ms_per_cell"], None)
        if "adapted" in sections["families"]:
            values["adapted_default_ms_per_cell"] = (
                sections["families"]["adapted"]["run_ms_per_cell"],
                None,
            )
    if "duplicates" in sections:
        d = sections["duplicates"]
        values["duplicates_cpu_ratio"] = (d["cpu_ratio"], None)
        values["duplicates_planted_found"] = (d["planted_found_share"], None)
    if "scale" in sections and sections["scale"]["full_size"]:
        c = sections["scale"]
        values["scale_minutes"] = (c["minutes"], None)
        values["scale_peak_rss_gib"] = (c["peak_rss_gib"], None)
    if "memory" in sections and sections["memory"]["full_size"]:  # --quick: a smaller subset
        values["peak_rss_gib"] = (sections["memory"]["peak_rss_gib"], None)
    checks = {">=": lambda v, t: v >= t, "<=": lambda v, t: v <= t, "<": lambda v, t: v < t}
    rows = []
    for name, (value, cpu) in values.items():
        op, target = GOALS[name]
        row = {
            "goal": name,
            "value": value,
            "target": f"{op} {target:g}",
            "met": checks[op](value, target),
        }
        if cpu is not None:
            row.update(value_cpu=cpu, met_cpu=checks[op](cpu, target))
        rows.append(row)
    return rows


def table(results: dict[str, Any]) -> str:
    """The human-readable report: one row per figure, with its repeats and the load average."""
    rows: list[tuple[str, str, str, str]] = []  # figure, value, goal, n / load
    s = results["sections"]

    def add(figure, value, goal="", n=""):
        rows.append((figure, value, goal, str(n)))

    def load(section):
        before, after = s[section]["load_before"], s[section]["load_after"]
        return f"load {before[0]:.2f}->{after[0]:.2f}"

    if "matmul" in s:
        m = s["matmul"]
        add(
            f"matmul float32 {m['size']}^2, numpy (median / best)",
            f"{_fmt(m['numpy_gflops'])} / {_fmt(m['numpy_gflops_best'])} GFLOP/s",
            "",
            f"{m['repeats']}x, {load('matmul')}",
        )
        add(
            f"matmul float32 {m['size']}^2, TensorFlow (median / best)",
            f"{_fmt(m['tensorflow_gflops'])} / {_fmt(m['tensorflow_gflops_best'])} GFLOP/s",
            "",
            f"{m['repeats']}x",
        )
        add(
            "matmul per CPU-second, numpy / TensorFlow",
            f"{_fmt(m['numpy_gflops_per_cpu_s'])} / {_fmt(m['tensorflow_gflops_per_cpu_s'])} "
            "GFLOP/CPU-s",
        )
    if "train" in s:
        t = s["train"]
        n = f"{t['repeats']}x{t['steps_per_epoch']} steps, {load('train')}"
        for name in FEEDS:
            feed = t["feeds"][name]
            add(
                f"train b{t['batch_size']}: {feed['label']}",
                f"{_fmt(feed['images_per_s'])} img/s ({_fmt(feed['images_per_cpu_s'])}/CPU-s)",
                "",
                n,
            )
        for key, goal in (
            ("project_vs_in_memory", ">= 0.95"),
            ("project_vs_flow_from_directory", ">= 3.5"),
        ):
            r = t[key]
            add(
                f"  ratio {key.replace('_', ' ')} (medians; rounds; CPU)",
                f"{r['of_medians']:.2f}x; {r['median_of_rounds']:.2f}x; {r['cpu']:.2f}x",
                goal,
            )
        flops = t["flops"]
        add(
            "model FLOPs per image: forward / training (3x)",
            f"{flops['forward_mflop']:.1f} / {flops['training_mflop']:.1f} MFLOP",
        )
        if "derived" in t:
            d = t["derived"]
            share = f" = {d['share_of_peak']:.0%} of matmul peak" if "share_of_peak" in d else ""
            add(
                "training compute reached (project feed), wall",
                f"{_fmt(d['project_gflops'])} GFLOP/s{share}",
            )
            share = (
                f" = {d['share_of_peak_cpu']:.0%} of matmul's" if "share_of_peak_cpu" in d else ""
            )
            add(
                "training compute per CPU-second (project feed)",
                f"{_fmt(d['project_gflops_per_cpu_s'])} GFLOP/CPU-s{share}",
            )
        for name in FEEDS:
            feed = t["feeds"][name]
            add(
                f"  full recipe ({STUDY_EPOCHS} x {STUDY_TRAIN_IMAGES:,} images), {name}",
                f"{feed['full_recipe_hours']:.1f} h wall, {feed['full_recipe_cpu_hours']:.1f} "
                "CPU-h",
            )
    if "augment" in s:
        a = s["augment"]
        n = f"{a['repeats']}x, {load('augment')}"
        for engine, label in (("imagedatagenerator", "IDG"), ("opencv", "OpenCV")):
            e = a["engines"][engine]
            add(
                f"augment 640x480 {label}: one process",
                f"{_fmt(e['one_process_per_s'])} img/s ({_fmt(e['one_process_per_cpu_s'])}/CPU-s)",
                "",
                n,
            )
            add(
                f"augment 640x480 {label}: stage pool, {a['workers']} workers",
                f"{_fmt(e['parallel_per_s'])} img/s ({_fmt(e['parallel_per_cpu_s'])}/CPU-s)",
                "",
                n,
            )
            add(
                f"augment 640x480 {label}: transform only, one process",
                f"{_fmt(e['transform_only_per_s'])} img/s",
                "",
                f"{e['transform_calls']} calls",
            )
        add(
            "  ratio parallel IDG / one process (wall; CPU-bound estimate)",
            f"{a['parallel_idg_vs_one_process']:.2f}x; "
            f"{a['parallel_idg_vs_one_process_cpu_bound']:.2f}x",
            ">= 1.8",
        )
        add(
            "  ratio OpenCV / IDG (pool; one process; CPU; transform)",
            f"{a['opencv_vs_idg']:.1f}x; {a['opencv_vs_idg_one_process']:.1f}x; "
            f"{a['opencv_vs_idg_cpu']:.1f}x; {a['opencv_vs_idg_transform_only']:.1f}x",
            ">= 10",
        )
        add(
            "  augment pool start-up (spawn + imports, once per stage)",
            f"{a['pool_startup_s']:.1f} s",
        )
    if "predict" in s:
        p = s["predict"]
        n = f"{p['repeats']}x, {load('predict')}"
        add(
            f"predict: one image in process ({p.get('engine', 'auto')}, median)",
            f"{p['single_image_ms_median']:.2f} ms",
            "< 2",
            n,
        )
        if "single_image_tf_function_ms_median" in p:
            add(
                "  one image through the tf.function engine (median)",
                f"{p['single_image_tf_function_ms_median']:.2f} ms",
                "",
                n,
            )
        add(
            f"predict: folder of {p['images']} images",
            f"{_fmt(p['predict_images_per_s'])} img/s",
            "",
            n,
        )
        add(
            "predict: decode + resize only (same threads)",
            f"{_fmt(p['decode_only_images_per_s'])} img/s",
            "",
            n,
        )
        add(
            "  ratio predict / decode-only (best; pairs; CPU)",
            f"{p['ratio']:.2f}; {p['ratio_median_of_pairs']:.2f}; {p['ratio_cpu_time']:.2f}",
            ">= 0.8",
        )
    if "families" in s:
        f = s["families"]
        for name, r in f["recipes"].items():
            add(
                f"predict per cell on {f['cells']} crops: {name} ({r['engine']})",
                f"{r['ms_per_cell']:.2f} ms",
                "<= 5",
                f"{r['repeats']}x, {load('families')}",
            )
        if "adapted" in f:
            a = f["adapted"]
            add(
                f"predict per cell: {a['recipe']}, adapted by wbc adapt",
                f"{a['run_ms_per_cell']:.2f} ms",
                "<= 10",
                f"{a['repeats']}x, {load('families')}",
            )
            add(
                f"  {a['recipe']}, predict --adapt always (adapted on the sample, once per count)",
                f"{a['on_sample_ms_per_cell']:.2f} ms",
                "",
                f"{a['repeats']}x",
            )
    if "cli" in s:
        c = s["cli"]
        add(
            "wbc --help wall time (median)",
            f"{c['help_seconds']:.3f} s",
            "<= 0.3",
            f"{c['repeats']}x, {load('cli')}",
        )
        add(
            "  python -c pass (interpreter start, for scale)",
            f"{c['python_startup_seconds']:.3f} s",
        )
    if "checkpoint" in s:
        c = s["checkpoint"]
        add(
            "per-epoch writes, study model: crash-safe / before (ms)",
            f"{c['now_ms']:.1f} / {c['before_ms']:.1f}",
            "",
            f"{c['repeats']}x, {load('checkpoint')}",
        )
        add(
            "  extra share of an epoch: small / full subset",
            f"{c['extra_share_small']:.2%} / {c['extra_share_full']:.2%}",
            "<= 5%",
            f"1 epoch of {c['epoch_images']} images in {c['epoch_seconds']:.2f} s",
        )
    if "memory" in s:
        m = s["memory"]
        add(
            f"peak RSS, wbc train on {m['train_images']:,}+{m['test_images']:,} x 120x160",
            f"{m['peak_rss_gib']:.2f} GiB (cache {m['uint8_cache_gib']:.2f})",
            "< 4" if m["full_size"] else "(full run)",
            f"1x, {load('memory')}",
        )
    if "duplicates" in s:
        d = s["duplicates"]
        for n, r in d["runs"].items():
            add(
                f"duplicates: find_duplicates on {int(n):,} crops (wall / CPU)",
                f"{r['wall_s']:.1f} s / {r['cpu_s']:.1f} CPU-s "
                f"({r['ms_per_image']:.1f} / {r['cpu_ms_per_image']:.1f} ms an image)",
                "",
                f"1x, {load('duplicates')}",
            )
            add(
                f"duplicates: peak RSS on {int(n):,} crops (added by the call)",
                f"{r['rss_peak_mib']:.0f} MiB (+{r['rss_growth_mib']:.0f})",
            )
            add(
                f"duplicates: planted copies found on {int(n):,} crops; wrong pairs",
                f"{r['planted_found']}/{r['planted']}; {r['wrong_pairs']}",
            )
        add(
            f"duplicates: ratio {d['sizes'][-1]:,} / {d['sizes'][0]:,} crops "
            f"({d['images_ratio']:.0f}x the images): wall, CPU, RSS growth",
            f"{d['time_ratio']:.2f}, {d['cpu_ratio']:.2f}, {d['memory_ratio']:.2f}",
            f"CPU <= {GOALS['duplicates_cpu_ratio'][1]:g}",
        )
    if "scale" in s:
        c = s["scale"]
        add(
            f"scale: wbc prepare + train (default) on {c['crops']:,} crops (wall / CPU)",
            f"{c['minutes']:.1f} min / {c['cpu_minutes']:.1f} CPU-min "
            f"(prepare {c['prepare']['wall_s']:.0f} s, train {c['train']['wall_s']:.0f} s; "
            f"rename {c['stage_seconds']['rename']:.0f} s)",
            "<= 10 min" if c["full_size"] else "(20,000 crops)",
            f"1x, {load('scale')}",
        )
        add(
            f"scale: peak RSS of one process, {c['crops']:,} crops",
            f"{c['peak_rss_gib']:.2f} GiB",
            "<= 3 GiB" if c["full_size"] else "(20,000 crops)",
        )
    width = [
        max(len(r[i]) for r in rows + [("figure", "value", "goal", "repeats, load")])
        for i in range(4)
    ]
    head = ("figure", "value", "goal", "repeats, load")
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(head, width)).rstrip(),
        "  ".join("-" * w for w in width),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, width)).rstrip() for r in rows]
    machine = results["machine"]
    header = (
        f"wbc bench ({results['plan']['name']}) on {machine['nproc']} CPUs "
        f"({machine['cpu_model']}), "
        f"TF_ENABLE_ONEDNN_OPTS={machine['TF_ENABLE_ONEDNN_OPTS']}, "
        f"images: {results['images']}; load average at start "
        f"{' '.join(f'{x:.2f}' for x in results['load_start'])}, at end "
        f"{' '.join(f'{x:.2f}' for x in results['load_end'])}"
    )
    goals = ", ".join(
        f"{g['goal']} {'met' if g['met'] else 'MISSED'}"
        + (f" ({'met' if g['met_cpu'] else 'MISSED'} by CPU-s)" if "met_cpu" in g else "")
        for g in results["goals"]
    )
    footer = (
        "medians of the repeats shown, each after a warm-up; the machine is shared, so "
        "compare figures from one run"
    )
    busiest = max(
        [results["load_start"][0], results["load_end"][0]]
        + [x["load_before"][0] for x in s.values()]
    )
    if busiest > machine["nproc"]:
        footer += (
            f"\nwarning: load average up to {busiest:.1f} on {machine['nproc']} CPUs: other "
            "work competed for the cores, so wall-clock rates and their ratios are noisy; "
            "the per-CPU-second figures hold better"
        )
    return "\n".join([header, *lines, *([f"goals: {goals}"] if goals else []), footer])


def run(
    raw: Optional[Path] = None,
    quick: bool = False,
    json_path: Optional[Path] = None,
    only: Sequence[str] = (),
    echo: Echo = _stderr,
    tiny: bool = False,
) -> dict[str, Any]:
    """Run the benchmark sections; write the JSON file; return the results (see module doc).

    ``quick``: fewer repeats and images; ``tiny``: every section on a handful of small inputs
    (a smoke test of the code, not a measurement)."""
    from wbc.core.tfsetup import tf_environment

    tf_environment()  # oneDNN on unless the caller set TF_ENABLE_ONEDNN_OPTS
    plan = TINY if tiny else QUICK if quick else FULL
    chosen = [s for s in SECTIONS if not only or s in only]
    unknown = [s for s in only if s not in SECTIONS]
    if unknown:
        raise DataError(
            f"--only: unknown section(s) {', '.join(unknown)} (choose from {', '.join(SECTIONS)})"
        )
    results: dict[str, Any] = {
        "started": datetime.now().isoformat(timespec="seconds"),
        "machine": machine_info(),
        "plan": asdict(plan),
        "sections": {},
        "load_start": _load(),
    }
    wall = time.perf_counter()
    with (
        tempfile.TemporaryDirectory(prefix="wbc-bench-") as tmp_name,
        private_cache(Path(tmp_name) / "cache"),
    ):
        tmp = Path(tmp_name)
        sources: list[Path] = []
        results["images"] = "none needed"
        if any(s in chosen for s in ("train", "augment", "predict", "families", "memory")):
            sources, results["images"] = source_images(tmp, raw, plan.sources, echo)
        functions = {
            "cli": lambda: bench_cli(plan, echo),
            "matmul": lambda: bench_matmul(plan, echo),
            "train": lambda: bench_train(tmp, sources, plan, echo),
            "checkpoint": lambda: bench_checkpoint(tmp, plan, echo),
            "augment": lambda: bench_augment(tmp, sources, plan, echo),
            "predict": lambda: bench_predict(tmp, sources, plan, echo),
            "families": lambda: bench_families(tmp, sources, plan, echo),
            "memory": lambda: bench_memory(tmp, sources, plan, echo),
            "duplicates": lambda: bench_duplicates(tmp, plan, echo),
            "scale": lambda: bench_scale(tmp, plan, echo),
        }
        for section in chosen:
            before = _load()
            start = time.perf_counter()
            result = functions[section]()
            result.update(
                load_before=before,
                load_after=_load(),
                seconds=round(time.perf_counter() - start, 1),
            )
            results["sections"][section] = result
            echo(f"{section}: done in {result['seconds']:.0f} s (load {result['load_after'][0]})")
            if section == "cli":
                results["versions"] = versions()  # after the CLI timings: imports TensorFlow
    if "versions" not in results:
        results["versions"] = versions()
    s = results["sections"]
    if "train" in s:
        feed = s["train"]["feeds"]["project"]
        mflop = s["train"]["flops"]["training_mflop"]
        derived = {
            "project_gflops": feed["images_per_s"] * mflop / 1e3,
            "project_gflops_per_cpu_s": feed["images_per_cpu_s"] * mflop / 1e3,
        }
        if "matmul" in s:
            derived["share_of_peak"] = derived["project_gflops"] / s["matmul"]["peak_gflops"]
            derived["share_of_peak_cpu"] = (
                derived["project_gflops_per_cpu_s"] / s["matmul"]["peak_gflops_per_cpu_s"]
            )
        s["train"]["derived"] = derived
    results["load_end"] = _load()
    results["seconds"] = round(time.perf_counter() - wall, 1)
    results["goals"] = goal_rows(results)
    if json_path is None:
        json_path = Path("runs") / f"bench-{datetime.now():%Y%m%d-%H%M%S}.json"
    json_path = Path(json_path)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    results["json_path"] = str(json_path)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m benchmarks.bench`` / ``scripts/bench.py``: what ``wbc bench`` does, plus
    ``--tiny``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument(
        "--raw",
        type=Path,
        default=None,
        help="Measure on this dataset-master folder's JPEGs (default: generated 640x480 smears).",
    )
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick", action="store_true", help="Fewer repeats and images: a smoke run (< 2 min)."
    )
    size.add_argument(
        "--tiny",
        action="store_true",
        help="Each section on a handful of small inputs: checks the code, measures nothing.",
    )
    parser.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=None,
        help="JSON file to write (default: runs/bench-<timestamp>.json).",
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        default=[],
        help="Run only this section (repeatable; default: all).",
    )
    args = parser.parse_args(argv)
    if args.raw is not None and not args.raw.exists():
        parser.error(f"--raw: {args.raw} does not exist")
    try:
        results = run(
            raw=args.raw,
            quick=args.quick,
            json_path=args.json_path,
            only=args.only,
            tiny=args.tiny,
        )
    except WbcError as exc:
        _stderr(f"Error: {exc}")
        return 1
    print(table(results))
    _stderr(f"wrote {results['json_path']}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
