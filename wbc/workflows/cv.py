"""``wbc cv``: grouped, stratified K-fold cross-validation over the source images.

The single grouped test side holds about 10% of the sources (two or three monocytes), too few to
judge a model by. Cross-validation trains K models instead, each tested on a different fold of
sources, and reports every fold's score and their mean +/- standard deviation.

Folds are made of SOURCE images (the rename stage's ``CLASS.ID.jpg``, or the crop stage's when
``crop.mode`` is not none), never of augmented copies:

- the groups of source ids (same-field duplicates from ``groups.csv`` stay together) are dealt
  into K folds by scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded from ``config.seed``),
  so every fold has about 1/K of each class; ``repeats`` deals them again with derived seeds;
- fold k trains on every augmented image (originals and copies) of the sources outside fold k
  and is tested on the ORIGINAL images of fold k's sources only, never on their copies;
- each fold's ``train/`` and ``test/`` class folders are hard links (a copy where the file system
  cannot link) under ``OUT/data/fold-k/``; its run folder is ``OUT/fold-k/`` (``wbc train``'s
  layout: model.keras, last.keras, history.csv, metrics.json, ...).

Two models are scored per fold: ``best`` (model.keras, the epoch with the lowest val_loss, which
``wbc train`` picks ON ITS TEST SIDE, so its score is optimistic) and ``last`` (last.keras, the
final epoch, chosen without looking at the test fold). ``score`` says which one the headline
numbers are; both are in cv.json and cv.md.

The augmented images come from ``DATA/interim/augmented`` when its manifest matches the config's
augment settings; otherwise (e.g. ``--set augment.per_class_targets=...``) the augment stage is run
once into ``<cache>/augmented-<key>`` and reused by later runs.

``data=`` (``--data PATH``) cross-validates a lab's own data instead (e.g. for fine-tuning from
``init_model``): class folders, a CSV or dataset-master, read as ``wbc prepare`` reads them (the
rename stage's groups and skipped files, the crop stage's per-image rule: smears cropped to the
WBC, crops kept whole), with no augmentation; folds are stratified over its images, groups kept
together. A folder of wbc's own prepared class folders (``CLASS.ID[.aNNNN].jpg``) is read as it
is, grouped by source id.

Resumable: a fold whose run folder has ``metrics.json`` is not retrained, a fold killed during
training continues from its last finished epoch, and ``OUT/plan.json`` refuses to mix the folds of
different settings in one folder.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config
from wbc.core.errors import ConfigError, DataError
from wbc.core.locks import holds_folder_lock
from wbc.core.manifest import (
    sha256_json,
    write_atomic,
    write_json,
)
from wbc.core.progress import bar, no_echo
from wbc.core.seeding import derived_seed
from wbc.workflows.cv_report import (
    CV_JSON,
    FORMAT,
    SCORES,
    fold_label,
    format_markdown,
    history_summary,
    last_scores,
    make_report,
    model_scores,
)
from wbc.workflows.folds import build_fold_data, data_source, deal_folds, prepared_source

Echo = Callable[[str], None]

CV_MD = "cv.md"
PLAN_JSON = "plan.json"
FOLDS_JSON = "folds.json"


# --------------------------------------------------------------------------- folds (pure)


# --------------------------------------------------------------------------- the data to fold


# --------------------------------------------------------------------------- fold folders


# --------------------------------------------------------------------------- scores


# --------------------------------------------------------------------------- reports


# --------------------------------------------------------------------------- cross_validate


def default_out_dir(root: Path = Path("runs")) -> Path:
    base = Path(root) / f"cv-{datetime.now():%Y%m%d-%H%M%S}"
    path, number = base, 1
    while path.exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def _check_plan(out: Path, plan: dict[str, Any]) -> None:
    path = out / PLAN_JSON
    if path.is_file():
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            old = {}
        if old.get("key") != plan["key"]:
            raise DataError(
                f"{out}: holds a cross-validation with other settings "
                f"({_plan_diff(old, plan)}); choose another --out"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json(path, plan)


def _plan_config(config: Config) -> dict[str, Any]:
    """The config as the plan records it: augment.workers changes no result, so it is left out."""
    data = config.to_dict()
    data.get("augment", {}).pop("workers", None)
    return data


def _flat(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flat(item, f"{prefix}{key}."))
        return flat
    return {prefix.rstrip("."): value}


def _plan_diff(old: dict[str, Any], new: dict[str, Any]) -> str:
    """What differs between two plans, in words (at most three config keys named)."""
    names = {
        "k": "--folds",
        "repeats": "--repeats",
        "per_class": "--per-class",
        "init_model": "--init",
        "identity": "the data",
        "mode": "--data",
        "format": "the wbc version",
    }
    parts = [names[k] for k in names if old.get(k) != new.get(k)]
    before, after = _flat(old.get("config", {})), _flat(new.get("config", {}))
    keys = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
    if keys:
        shown = ", ".join(f"{k} {before.get(k)!r} -> {after.get(k)!r}" for k in keys[:3])
        parts.append(f"config: {shown}" + (f" and {len(keys) - 3} more" if len(keys) > 3 else ""))
    return "; ".join(parts) or "unknown plan"


@holds_folder_lock("cross-validating", "out")
def cross_validate(
    config: Config,
    data_dir: Path = Path("data"),
    folds: int = 5,
    epochs: Optional[int] = None,
    out: Optional[Path] = None,
    per_class: Optional[int] = None,
    data: Optional[Path] = None,
    init_model: Optional[Path] = None,
    score: str = "last",
    cache_dir: Optional[Path] = None,
    echo: Echo = print,
    train_echo: Optional[Echo] = None,
    repeats: int = 1,
    executor: str = "local",
    ray_options: Any = None,
) -> dict[str, Any]:
    """Train and score ``folds`` models; write ``out/cv.json`` and ``out/cv.md``; return cv.json.

    ``data_dir``: the prepared data (sources, groups.csv, augmented images). ``data``: a plain
    folder of class folders instead (no augmentation). ``epochs``: overrides train.epochs.
    ``per_class``: at most this many training images per class per fold (seeded, spread evenly
    over the sources; None = all). ``init_model``: start every fold from these weights.
    ``score``: ``last`` or ``best``, the model the headline numbers are of. ``cache_dir``: where
    an augmented set that the prepared one does not match is made (default: ``out``).
    ``repeats``: repeated CV, ``repeats`` x ``folds`` models; repeat r > 1 deals its folds with
    the seed derived from (seed, r), and its fold j is ``fold-r.j`` (repeat 1: ``fold-j``).
    ``executor``: ``local`` trains the folds here, one after the other; ``ray`` trains the
    unfinished ones as Ray tasks (``wbc.workflows.executors``, ``ray_options``) and then scores
    them here.
    """
    from wbc.core.runfolder import finished_run
    from wbc.models.checkpoint import has_progress
    from wbc.models.training import clear_session
    from wbc.workflows.train import resolve_config
    from wbc.workflows.train import train as run_train

    if score not in SCORES:
        raise ConfigError(f"--score: '{score}' is not one of {', '.join(SCORES)}")
    if per_class is not None and per_class < 1:
        raise ConfigError("--per-class must be at least 1")
    if repeats < 1:
        raise ConfigError("--repeats must be at least 1")
    config = resolve_config(config, None, epochs)
    out = Path(out) if out is not None else default_out_dir()
    cache_dir = Path(cache_dir) if cache_dir is not None else out
    train_echo = echo if train_echo is None else train_echo
    init_model = Path(init_model) if init_model is not None else None
    if init_model is not None and not init_model.is_file():
        raise DataError(f"{init_model}: model file not found")

    if data is not None:
        source = data_source(Path(data), config, cache_dir, echo)
    else:
        source = prepared_source(config, Path(data_dir), cache_dir, echo)
    units = source.units()
    classes = source.classes
    for cls in classes:
        if len(units[cls]) < 2:
            raise DataError(
                f"{source.where}: class {cls} has {len(units[cls])} source group(s); "
                "cross-validation needs at least 2 per class"
            )
        if len(units[cls]) < folds:
            echo(
                f"warning: class {cls} has only {len(units[cls])} source groups for {folds} "
                "folds: some folds test none of it"
            )
    assignments = [
        deal_folds(
            units, folds, config.seed if r == 1 else derived_seed(config.seed, "cv-repeat", r)
        )
        for r in range(1, repeats + 1)
    ]
    plan = {
        "format": FORMAT,
        "k": folds,
        "repeats": repeats,
        "mode": source.mode,
        "per_class": per_class,
        "init_model": str(init_model) if init_model else None,
        "identity": source.identity,
        "config": _plan_config(config),
    }
    plan["key"] = sha256_json(plan)
    _check_plan(out, plan)
    jobs = [
        (fold_label(r, i + 1, repeats), r, members)
        for r, assignment in enumerate(assignments, start=1)
        for i, members in enumerate(assignment)
    ]
    write_json(
        out / FOLDS_JSON,
        {
            "k": folds,
            "repeats": repeats,
            "folds": [
                {"fold": label, "repeat": r, "test": {c: f[c] for c in classes}}
                for label, r, f in jobs
            ],
        },
    )
    total = len(jobs)
    echo(
        f"cv: {folds} folds{f' x {repeats} repeats' if repeats > 1 else ''} of {source.mode} "
        f"data {source.where} -> {out} (rerun with --out {out} to continue it)"
    )

    from wbc.workflows.executors import check_executor

    check_executor(executor)
    if executor == "ray":
        from wbc.workflows.executors import RayOptions, TrainJob, run_trainings

        remote = []
        for fold, _repeat, members in jobs:
            run_dir = out / f"fold-{fold}"
            data_fold = out / "data" / f"fold-{fold}"
            build_fold_data(source, members, data_fold, per_class, config.seed, fold)
            if not finished_run(run_dir, f"fold {fold}", echo):
                kwargs = {
                    "data_dir": data_fold,
                    "run_dir": run_dir,
                    "init_model": init_model,
                    "folders": (data_fold / "train", data_fold / "test"),
                }
                remote.append(TrainJob(f"fold {fold}", config, kwargs))
        run_trainings(remote, ray_options or RayOptions(), echo, run_train)

    results: list[dict[str, Any]] = []
    report: dict[str, Any] = {}
    with bar(len(jobs), "cv folds", unit="fold") as shown:
        for number, (fold, repeat, members) in enumerate(jobs, start=1):
            run_dir = out / f"fold-{fold}"
            data_fold = out / "data" / f"fold-{fold}"
            summary = build_fold_data(source, members, data_fold, per_class, config.seed, fold)
            test_dir = data_fold / "test"
            metrics_path = run_dir / "metrics.json"
            where = f"fold {fold} ({number}/{total})" if repeats > 1 else f"fold {fold}/{folds}"
            if finished_run(run_dir, f"fold {fold}", echo):
                echo(f"{where}: done before, skipped ({metrics_path})")
            else:
                counts = summary["counts"]
                echo(
                    f"{where}: train {sum(c['train'] for c in counts.values())} images, "
                    f"test {sum(c['test'] for c in counts.values())} originals of "
                    f"{sum(c['test_sources'] for c in counts.values())} sources"
                )
                resume = run_dir if has_progress(run_dir) else None
                run_train(
                    config,
                    data_dir=data_fold,
                    run_dir=run_dir,
                    resume_dir=resume,
                    init_model=init_model,
                    echo=train_echo,
                    folders=(data_fold / "train", test_dir),
                )
                clear_session()
            best = json.loads(metrics_path.read_text(encoding="utf-8"))
            last = last_scores(run_dir, test_dir, best, echo=no_echo)
            result = {
                "fold": fold,
                "repeat": repeat,
                "run": str(run_dir),
                "n_train": int(best.get("train_images", 0)),
                "test_counts": {c: v["test"] for c, v in summary["counts"].items()},
                "best": model_scores(best),
                "last": model_scores(last),
                "epochs_run": best.get("epochs_run"),
                "best_epoch": best.get("best_epoch"),
                "wall_seconds": best.get("wall_seconds"),
                "collapsed": best.get("collapsed"),
                **history_summary(run_dir),
            }
            headline_scores = result[score]
            result.update(
                accuracy=headline_scores["accuracy"],
                macro_f1=headline_scores["macro_f1"],
                per_class_f1=headline_scores["per_class_f1"],
                n_test=headline_scores["n_test"],
            )
            results.append(result)
            report = make_report(plan, source, classes, results, score, out)
            write_json(out / CV_JSON, report)
            write_atomic(out / CV_MD, format_markdown(report))
            echo(
                f"{where}: {score} model accuracy {result['accuracy']:.4f}, "
                f"macro-F1 {result['macro_f1']:.4f} on {result['n_test']} test images"
            )
            shown.update(1)
    if report:
        from wbc.workflows.card import write_cv_card

        write_cv_card(out, report)
    return report


__all__ = ["cross_validate", "default_out_dir"]
