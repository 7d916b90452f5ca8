"""Stage 2: top every class up to ``augment.per_class`` images with augmented copies.

``augment.per_class_targets`` (CLASS -> count) sets another target for the classes it names, e.g.
to compare over-sampling the rare classes with ``train.class_weight: balanced``.

The study balanced its classes by augmenting each up to the same count before splitting. Every copy
keeps its source id in its name (``CLASS.ID.aNNNN.jpg``) so the grouped split can keep a cell and
all its copies on one side. Copy k of a class comes from source k % n and from a seed derived from
(seed, class, k) alone, so the output is byte-identical for any number of worker processes.
Workers are spawned, never forked: forking a process that has imported TensorFlow can deadlock.

The ``color.*`` stain augmentation (``wbc/data/stain.py``) runs here too, on the copies only, so
that every family's training set gets it; its settings join the stage's parameters when on.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
import os
import shutil
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait
from pathlib import Path
from typing import NamedTuple

import numpy as np

from wbc.core.config import CLASSES, AugmentConfig, ColorConfig, Config
from wbc.core.errors import BadImage, ConfigError, DataError
from wbc.core.imageio import read_rgb, write_jpeg
from wbc.core.manifest import Manifest, run_stage, upstream
from wbc.core.progress import bar
from wbc.core.seeding import derived_seed
from wbc.data.stages.naming import copy_name, parse_name
from wbc.data.stain import (
    LabDistribution,
    lab_distribution,
    scale_factor,
    stain_copy,
    stain_enabled,
    stain_params,
)

STAGE = "augment"
MAX_CHUNK = 64  # images per worker task: enough to amortise the hand-off, small enough to balance


class SourceJob(NamedTuple):
    """The copies to make of one source image (each read once, however many copies it gets)."""

    cls: str
    source_id: int
    path: Path
    copies: tuple[int, ...]  # the class-wide copy numbers k; source id = sorted ids[k % n]


def augment_params(config: Config) -> dict:
    """What decides the output: every augment setting except ``workers``, and the seed."""
    params = {f.name: getattr(config.augment, f.name) for f in dataclasses.fields(AugmentConfig)}
    params.pop("workers")
    targets = params.pop("per_class_targets")
    if targets:  # only when set, so that manifests made before the key existed stay current
        params["per_class_targets"] = dict(sorted(targets.items()))
    params["seed"] = config.seed
    if stain_enabled(config.color):  # only when on: earlier manifests stay current
        params["stain"] = stain_params(config.color)
    return params


def class_target(config: AugmentConfig, cls: str) -> int:
    """Images wanted for ``cls`` after augmentation: ``per_class_targets[cls]`` or ``per_class``."""
    return config.per_class_targets.get(cls, config.per_class)


def copy_seed(seed: int, cls: str, copy: int) -> int:
    """The seed of copy ``copy`` of class ``cls``: independent of which worker makes it."""
    return derived_seed(seed, STAGE, cls, copy)


def stain_seed(seed: int, cls: str, copy: int) -> int:
    """The seed of the copy's stain steps: apart from ``copy_seed``, so that they leave the
    geometric draw as it was."""
    return derived_seed(seed, STAGE, "stain", cls, copy)


class StainJob(NamedTuple):
    """What the workers need for the stain steps (``color`` settings, RandStainNA's fit)."""

    color: ColorConfig
    distribution: LabDistribution | None


def stain_job(config: Config, sources: dict[str, list[tuple[int, Path]]]) -> StainJob | None:
    """None when every stain step is off. RandStainNA's distribution is fitted to all the
    originals read here (the split comes after this stage, so the test side's colours count
    too: unlabelled, and the same lab's)."""
    if not stain_enabled(config.color):
        return None
    distribution = None
    if config.color.randstainna:
        images = [read_rgb(path) for items in sources.values() for _, path in items]
        distribution = lab_distribution(images)
    return StainJob(config.color, distribution)


def list_sources(src: Path) -> dict[str, list[tuple[int, Path]]]:
    """The originals in ``src`` by class, as (source id, path) sorted by id."""
    by_class: dict[str, list[tuple[int, Path]]] = defaultdict(list)
    for path in Path(src).iterdir():
        name = parse_name(path.name)
        if name is not None and name.copy is None and path.is_file():
            by_class[name.cls].append((name.source_id, path))
    if not by_class:
        raise DataError(f"{src}: no CLASS.ID.jpg images to augment")
    return {cls: sorted(items) for cls, items in by_class.items()}


def plan_copies(cls: str, sources: list[tuple[int, Path]], per_class: int) -> list[SourceJob]:
    """Copies 0..per_class-n-1 dealt round-robin over the sorted sources."""
    n = len(sources)
    wanted = max(0, per_class - n)
    jobs = []
    for index, (source_id, path) in enumerate(sources[:wanted]):
        jobs.append(SourceJob(cls, source_id, path, tuple(range(index, wanted, n))))
    return jobs


def augment(
    src: Path,
    dst: Path,
    config: Config,
    force: bool = False,
    echo: Callable[[str], None] | None = None,
) -> Manifest:
    """Write ``dst/CLASS/`` with the originals of ``src`` plus copies up to ``per_class``."""
    src, dst = Path(src), Path(dst)
    inputs = {"images": upstream(src, "rename").digest}

    def build(tmp: Path) -> dict:
        sources = list_sources(src)
        classes = _class_order(sources, config.rename.classes or CLASSES)
        unknown = sorted(set(config.augment.per_class_targets) - set(classes))
        if unknown:
            raise ConfigError(
                f"augment.per_class_targets: no class {', '.join(unknown)} in {src} "
                f"(its classes: {', '.join(classes)})"
            )
        jobs: list[SourceJob] = []
        counts, over = {}, {}
        for cls in classes:
            (tmp / cls).mkdir()
            for _, path in sources[cls]:
                shutil.copyfile(path, tmp / cls / path.name)
            target = class_target(config.augment, cls)
            class_jobs = plan_copies(cls, sources[cls], target)
            jobs.extend(class_jobs)
            n = len(sources[cls])
            made = sum(len(job.copies) for job in class_jobs)
            counts[cls] = {"originals": n, "copies": made, "total": n + made}
            if n > target:
                over[cls] = n
        stain = stain_job(config, sources)
        run_jobs(jobs, tmp, config, echo=echo, stain=stain)
        return {
            "counts": counts,
            "per_class": config.augment.per_class,
            "per_class_targets": dict(config.augment.per_class_targets),
            "engine": config.augment.engine,
            "over_per_class": over,  # classes that already had more originals: kept, no copies
            **({"stain": _stain_facts(stain)} if stain else {}),
        }

    return run_stage(STAGE, dst, augment_params(config), inputs, build, force=force)


def _stain_facts(stain: StainJob) -> dict:
    facts: dict = {"params": stain_params(stain.color)}
    if stain.distribution is not None:
        facts["lab_distribution"] = stain.distribution._asdict()
    return facts


def _class_order(sources: dict[str, list], preferred: tuple[str, ...]) -> list[str]:
    rank = {cls: i for i, cls in enumerate(preferred)}
    return sorted(sources, key=lambda cls: (rank.get(cls, len(rank)), cls))


def worker_count(config: AugmentConfig) -> int:
    return config.workers or os.cpu_count() or 1


def run_jobs(
    jobs: list[SourceJob],
    out: Path,
    config: Config,
    echo: Callable[[str], None] | None = None,
    stain: StainJob | None = None,
) -> int:
    """Make every copy of ``jobs`` under ``out/CLASS/``; returns how many were written."""
    total = sum(len(job.copies) for job in jobs)
    if total == 0:
        return 0
    workers = worker_count(config.augment)
    chunks = chunk_jobs(jobs, math.ceil(total / (workers * 4)))
    workers = min(workers, len(chunks))
    with bar(total, "augment", unit="copy") as progress:
        if workers == 1:
            for chunk in chunks:
                progress.update(augment_chunk(chunk, out, config.augment, config.seed, stain))
            return total
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(workers, mp_context=context, initializer=init_worker) as pool:
            futures = {
                pool.submit(augment_chunk, c, out, config.augment, config.seed, stain)
                for c in chunks
            }
            while futures:
                done, futures = wait(futures, return_when=FIRST_EXCEPTION)
                for future in done:
                    if future.exception() is not None:
                        pool.shutdown(cancel_futures=True)
                        raise future.exception()
                    progress.update(future.result())
    return total


def chunk_jobs(jobs: list[SourceJob], size: int) -> list[list[SourceJob]]:
    """Consecutive jobs grouped into tasks of about ``size`` images (at most MAX_CHUNK)."""
    size = max(1, min(size, MAX_CHUNK))
    chunks, current, count = [], [], 0
    for job in jobs:
        current.append(job)
        count += len(job.copies)
        if count >= size:
            chunks.append(current)
            current, count = [], 0
    if current:
        chunks.append(current)
    return chunks


def init_worker() -> None:
    """Pool initializer: one OpenCV thread per worker process."""
    import cv2

    cv2.setNumThreads(1)  # one process per core already; threads would only contend


_AUGMENTERS: dict = {}


def _augmenter(config: AugmentConfig):
    """One engine per process and config: building the Keras one imports TensorFlow."""
    from wbc.data.augmenters import make_augmenter

    if config not in _AUGMENTERS:
        _AUGMENTERS[config] = make_augmenter(config)
    return _AUGMENTERS[config]


def augment_chunk(
    jobs: list[SourceJob],
    out: Path,
    config: AugmentConfig,
    seed: int,
    stain: StainJob | None = None,
) -> int:
    """Write the copies of ``jobs``; runs in a worker process (or in-process for one worker)."""
    augmenter = _augmenter(config)
    written = 0
    for job in jobs:
        try:
            image = read_rgb(job.path)
        except BadImage as exc:
            raise DataError(str(exc)) from None  # BadImage(path, reason) does not unpickle
        for copy in job.copies:
            params = augmenter.random_params(image.shape, copy_seed(seed, job.cls, copy))
            rng = None
            if stain is not None:
                rng = np.random.default_rng(stain_seed(seed, job.cls, copy))
                zoom = scale_factor(stain.color.scale_jitter, rng)
                params = {**params, "zx": params["zx"] * zoom, "zy": params["zy"] * zoom}
            result = augmenter.apply(image, params)
            if stain is not None:
                result = stain_copy(result, stain.color, rng, stain.distribution)
            parsed = parse_name(job.path.name)  # any file name: benchmarks pass their own
            stem = parsed.stem if parsed else None
            target = Path(out) / job.cls / copy_name(job.cls, job.source_id, copy, stem)
            write_jpeg(result, target, quality=config.jpeg_quality)
            written += 1
    return written
