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

``data=`` (``--data DIR``) cross-validates a plain folder of class folders instead (e.g. another
lab's crops, for fine-tuning from ``init_model``): folds are stratified over its files (files
named ``CLASS.ID[.aNNNN].jpg`` are grouped by source id), with no augmentation.

Resumable: a fold whose run folder has ``metrics.json`` is not retrained, a fold killed during
training continues from its last finished epoch, and ``OUT/plan.json`` refuses to mix the folds of
different settings in one folder.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.config import Config
from wbc.errors import ConfigError, DataError
from wbc.locks import holds_folder_lock
from wbc.manifest import (
    load_if_current,
    sha256_file,
    sha256_json,
    stage_key,
    upstream,
    write_atomic,
    write_json,
)
from wbc.progress import bar
from wbc.seeding import derived_seed, rng_for
from wbc.stages.naming import parse_name

Echo = Callable[[str], None]

CV_JSON = "cv.json"
CV_MD = "cv.md"
PLAN_JSON = "plan.json"
FOLDS_JSON = "folds.json"
LAST_METRICS = "metrics-last.json"
SCORES = ("last", "best")
FORMAT = 1


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------- folds (pure)


def deal_folds(
    units: dict[str, Sequence[Sequence[Hashable]]], k: int, seed: int
) -> list[dict[str, list]]:
    """Split each class's units (groups of members) into ``k`` folds; returns folds[i][cls].

    scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded from ``seed``) does the dealing: a
    unit never straddles folds, and each fold gets about 1/k of every class. Units are put in a
    canonical order first, so the folds depend only on the units and the seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ConfigError(f"--folds: need at least 2 folds, got {k}")
    members, labels, groups = [], [], []
    for cls in sorted(units):
        order = sorted(
            (list(unit) for unit in units[cls] if len(unit)),
            key=lambda unit: str(sorted(map(str, unit))),
        )
        for unit in order:
            group = len(members) and groups[-1] + 1
            for member in unit:
                members.append((cls, member))
                labels.append(cls)
                groups.append(group)
    folds: list[dict[str, list]] = [{cls: [] for cls in units} for _ in range(k)]
    if len(set(groups)) < k:
        raise DataError(f"--folds {k}: only {len(set(groups))} source groups to deal")
    splitter = StratifiedGroupKFold(
        n_splits=k, shuffle=True, random_state=derived_seed(seed, "cv") % 2**32
    )
    import warnings

    with warnings.catch_warnings():  # "least populated class has only n members": said by cv
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for index, (_, test) in enumerate(splits):
        for row in test:
            cls, member = members[row]
            folds[index][cls].append(member)
    for fold in folds:
        for cls in fold:
            fold[cls].sort(key=_member_key)
    return folds


def _member_key(member: Hashable):
    return (0, member, "") if isinstance(member, int) else (1, 0, str(member))


def cap_files(
    files_by_member: dict[Hashable, Sequence[Path]], limit: Optional[int], seed: int, *keys: object
) -> list[Path]:
    """At most ``limit`` of the files, spread evenly over the members, with a seeded draw.

    Files are ranked within their member (the original first, then copies by number); all rank-0
    files come before any rank-1 file, and so on, with a seeded random order inside a rank. So a
    cap keeps every source's original before any copy, and gives each source the same number of
    copies (+/- 1). ``limit`` None: every file.
    """
    every = [
        p for member in sorted(files_by_member, key=_member_key) for p in files_by_member[member]
    ]
    if limit is None or limit >= len(every):
        return sorted(every, key=lambda p: p.name)
    rng = rng_for(seed, "cv-cap", *keys)
    ranked = []
    for member in sorted(files_by_member, key=_member_key):
        for rank, path in enumerate(sorted(files_by_member[member], key=_copy_order)):
            ranked.append((rank, path))
    noise = rng.random(len(ranked))
    order = sorted(range(len(ranked)), key=lambda i: (ranked[i][0], noise[i]))
    return sorted((ranked[i][1] for i in order[:limit]), key=lambda p: p.name)


def _copy_order(path: Path):
    name = parse_name(path.name)
    if name is None:
        return (0, 0, path.name)
    return (0 if name.copy is None else 1, name.copy or 0, path.name)


# --------------------------------------------------------------------------- the data to fold


@dataclass
class FoldSource:
    """What cross-validation draws from: per class, each member's train and test files.

    A member is a source id (prepared data) or a file's group key (``--data`` folder).
    """

    mode: str  # "prepared" | "folder"
    where: str  # the folder(s) read, for the report
    identity: str  # digest of the inputs: a changed input makes a new plan
    train_files: dict[str, dict[Hashable, list[Path]]]
    test_files: dict[str, dict[Hashable, list[Path]]]
    groups: dict[Hashable, Hashable] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(self.test_files)

    def units(self) -> dict[str, list]:
        result: dict[str, list] = {}
        for cls in self.classes:
            bundles: dict[Hashable, list] = defaultdict(list)
            for member in sorted(self.test_files[cls], key=_member_key):
                bundles[self.groups.get(member, member)].append(member)
            result[cls] = [bundles[key] for key in sorted(bundles, key=_member_key)]
        return result


def resolve_augmented(
    config: Config, data_dir: Path, cache_dir: Path, echo: Echo = _quiet
) -> tuple[Path, Path]:
    """``(sources folder, augmented folder)`` for ``config``.

    The sources are the rename stage's output (the crop stage's when crop.mode is not none, which
    must have been made with the same crop settings). The augmented folder is the prepared
    ``DATA/interim/augmented`` when its manifest matches the config's augment settings, else
    ``cache_dir/augmented-<key>``, made now by the augment stage (and skipped next time).
    """
    from wbc.pipeline import DataPaths
    from wbc.stages.augment import STAGE, augment, augment_params

    paths = DataPaths(Path(data_dir))
    cropping = config.crop.mode != "none"
    src = paths.cropped if cropping else paths.renamed
    manifest = upstream(src, "crop" if cropping else "rename")
    if cropping:
        made = {k: manifest.params.get(k) for k in ("mode", "padding", "size")}
        wanted = {
            "mode": config.crop.mode,
            "padding": config.crop.padding,
            "size": config.crop.size,
        }
        if made != wanted:
            raise DataError(
                f"{src}: made with crop settings {made}, not {wanted}; run "
                "`wbc prepare --stage crop` with this config first"
            )
    key = stage_key(STAGE, augment_params(config), {"images": manifest.digest})
    if load_if_current(paths.augmented, key) is not None:
        return src, paths.augmented
    target = Path(cache_dir) / f"augmented-{key[:12]}"
    if load_if_current(target, key) is None:
        echo(
            f"cv: {paths.augmented} does not match the augment settings of this config; "
            f"augmenting {src} into {target}"
        )
    augment(src, target, config, echo=echo)
    return src, target


def prepared_source(
    config: Config, data_dir: Path, cache_dir: Path, echo: Echo = _quiet
) -> FoldSource:
    """Sources, their augmented images and their same-field groups, from a prepared data dir."""
    from wbc.pipeline import DataPaths
    from wbc.stages.split import class_files, read_groups

    src, augmented = resolve_augmented(config, data_dir, cache_dir, echo)
    test_files: dict[str, dict[Hashable, list[Path]]] = defaultdict(dict)
    for path in sorted(Path(src).iterdir()):
        name = parse_name(path.name)
        if name is not None and name.copy is None and path.is_file():
            test_files[name.cls][name.source_id] = [path]
    if not test_files:
        raise DataError(f"{src}: no CLASS.ID.jpg source images")
    train_files: dict[str, dict[Hashable, list[Path]]] = {}
    for cls, paths in class_files(augmented).items():
        by_source: dict[Hashable, list[Path]] = defaultdict(list)
        for path in paths:
            by_source[parse_name(path.name).source_id].append(path)
        train_files[cls] = dict(by_source)
    for cls, sources in test_files.items():
        missing = sorted(set(sources) - set(train_files.get(cls, {})))
        if missing:
            raise DataError(
                f"{augmented}: no images of {cls} source(s) "
                f"{', '.join(map(str, missing[:5]))}; run `wbc prepare` again"
            )
    groups_csv = DataPaths(Path(data_dir)).renamed / "groups.csv"
    groups = read_groups(groups_csv)
    identity = sha256_json(
        {
            "sources": upstream(src, "rename").digest,
            "augmented": upstream(augmented, "augment").digest,
            "groups": sha256_file(groups_csv) if groups_csv.is_file() else None,
        }
    )
    return FoldSource(
        "prepared", f"{src} + {augmented}", identity, train_files, dict(test_files), dict(groups)
    )


def folder_source(folder: Path) -> FoldSource:
    """A plain folder of class folders: every file is used as is (no augmentation).

    Files named ``CLASS.ID[.aNNNN].jpg`` are grouped by their source id, so copies of one cell
    never straddle folds.
    """
    from wbc.feeds import list_class_files

    folder = Path(folder)
    classes, files, labels = list_class_files(folder)
    by_class: dict[str, dict[Hashable, list[Path]]] = defaultdict(dict)
    groups: dict[Hashable, Hashable] = {}
    listing = []
    for path, label in zip(files, labels):
        cls = classes[int(label)]
        member = f"{cls}/{path.name}"
        by_class[cls][member] = [path]
        name = parse_name(path.name)
        if name is not None:
            groups[member] = f"{cls}/source-{name.source_id}"
        listing.append([member, path.stat().st_size])
    return FoldSource(
        "folder", str(folder), sha256_json(listing), dict(by_class), dict(by_class), groups
    )


# --------------------------------------------------------------------------- fold folders


def build_fold_data(
    source: FoldSource,
    members: dict[str, list],
    target: Path,
    per_class: Optional[int],
    seed: int,
    fold: int,
) -> dict[str, Any]:
    """``target/{train,test}/CLASS/`` for one fold (atomic: a temp folder renamed into place).

    Test: the test files (originals) of ``members``; train: the train files of every other
    member of the class, capped at ``per_class`` per class by ``cap_files``.
    """
    from wbc.stages.split import link_or_copy

    target = Path(target)
    summary_path = target / "fold.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: dict[str, dict[str, int]] = {}
    for cls in source.classes:
        in_fold = set(members.get(cls, []))
        test = [p for m in sorted(in_fold, key=_member_key) for p in source.test_files[cls][m]]
        pool = {
            m: files for m, files in source.train_files.get(cls, {}).items() if m not in in_fold
        }
        train = cap_files(pool, per_class, seed, fold, cls)
        for side, paths in (("train", train), ("test", test)):
            if not paths:
                continue
            folder = tmp / side / cls
            folder.mkdir(parents=True, exist_ok=True)
            for path in paths:
                link_or_copy(path, folder / path.name)
        counts[cls] = {"train": len(train), "test": len(test), "test_sources": len(in_fold)}
    summary = {
        "fold": fold,
        "counts": counts,
        "test_members": {c: list(members.get(c, [])) for c in source.classes},
    }
    (tmp / "fold.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return summary


# --------------------------------------------------------------------------- scores


def model_scores(metrics: dict[str, Any]) -> dict[str, Any]:
    """The part of a metrics dict that cv reports for one model."""
    return {
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_f1"]),
        # only classes the fold tests: a class with no test image has no F1 to average
        "per_class_f1": {
            c: float(v["f1"]) for c, v in metrics["per_class"].items() if v["support"] > 0
        },
        "n_test": int(metrics["n_images"]),
        "confusion_matrix": metrics["confusion_matrix"],
    }


def _mean_std(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
    array = np.asarray(values, dtype=np.float64)
    if not len(array):
        return None, None
    std = float(array.std(ddof=1)) if len(array) > 1 else 0.0
    return float(array.mean()), std


def summarize(
    fold_results: Sequence[dict[str, Any]], classes: Sequence[str], which: str
) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof=1) over folds, and the pooled confusion."""
    from wbc.evaluate import metrics_from_confusion

    scores = [r[which] for r in fold_results]
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for key in ("accuracy", "macro_f1"):
        mean[key], std[key] = _mean_std([s[key] for s in scores])
    mean["per_class_f1"], std["per_class_f1"] = {}, {}
    for cls in classes:
        values = [s["per_class_f1"][cls] for s in scores if cls in s["per_class_f1"]]
        mean["per_class_f1"][cls], std["per_class_f1"][cls] = _mean_std(values)
    n = len(classes)
    pooled_matrix = np.zeros((n, n), dtype=np.int64)
    for s in scores:
        pooled_matrix += np.asarray(s["confusion_matrix"], dtype=np.int64)
    pooled = metrics_from_confusion(pooled_matrix, classes)
    return {
        "mean": mean,
        "std": std,
        "pooled": {
            "accuracy": pooled["accuracy"],
            "macro_f1": pooled["macro_f1"],
            "per_class_f1": {c: v["f1"] for c, v in pooled["per_class"].items()},
            "n_test": pooled["n_images"],
            "confusion_matrix": pooled["confusion_matrix"],
        },
    }


# --------------------------------------------------------------------------- reports


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return "-" if math.isnan(value) else f"{value:.4f}"
    return str(value)


def format_table(report: dict[str, Any]) -> str:
    """The fold table (plain text) of a cv.json dict, headline model only."""
    classes = report["classes"]
    which = report["score"]
    head = ["fold", "n_train", "n_test", "accuracy", "macro-F1", *[f"F1 {c[:10]}" for c in classes]]
    rows = []
    for r in report["folds"]:
        s = r[which]
        rows.append(
            [
                str(r["fold"]),
                str(r["n_train"]),
                str(s["n_test"]),
                _fmt(s["accuracy"]),
                _fmt(s["macro_f1"]),
                *[_fmt(s["per_class_f1"].get(c)) for c in classes],
            ]
        )
    summary = report["summary"][which]
    for label in ("mean", "std"):
        part = summary[label]
        rows.append(
            [
                label,
                "",
                "",
                _fmt(part["accuracy"]),
                _fmt(part["macro_f1"]),
                *[_fmt(part["per_class_f1"][c]) for c in classes],
            ]
        )
    pooled = summary["pooled"]
    rows.append(
        [
            "pooled",
            "",
            str(pooled["n_test"]),
            _fmt(pooled["accuracy"]),
            _fmt(pooled["macro_f1"]),
            *[_fmt(pooled["per_class_f1"][c]) for c in classes],
        ]
    )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(row, widths)) for row in rows]
    return "\n".join(lines)


def headline(report: dict[str, Any]) -> str:
    """One line: the mean +/- std of the headline model (and the other model's macro-F1)."""
    which = report["score"]
    other = "best" if which == "last" else "last"
    s = report["summary"][which]
    o = report["summary"][other]
    done = len(report["folds"])
    planned = report["k"] * report.get("repeats", 1)
    return (
        f"cv {done}/{planned} folds ({which} model): accuracy "
        f"{s['mean']['accuracy']:.4f} +/- {s['std']['accuracy']:.4f}, macro-F1 "
        f"{s['mean']['macro_f1']:.4f} +/- {s['std']['macro_f1']:.4f} "
        f"({other} model: macro-F1 {o['mean']['macro_f1']:.4f} +/- "
        f"{o['std']['macro_f1']:.4f})"
    )


def format_markdown(report: dict[str, Any]) -> str:
    import yaml

    classes = report["classes"]
    repeats = report.get("repeats", 1)
    lines = [
        f"# Cross-validation: {report['k']} folds"
        + (f" x {repeats} repeats" if repeats > 1 else ""),
        "",
    ]
    lines.append(f"- data: `{report['data']}` ({report['mode']})")
    lines.append(
        f"- train images per class per fold: "
        f"{'all' if report['per_class'] is None else report['per_class']}"
    )
    lines.append(
        f"- epochs: {report['config']['train']['epochs']}, seed: {report['config']['seed']}"
        + (f", initial weights: `{report['init_model']}`" if report["init_model"] else "")
    )
    lines.append(
        f"- complete: {'yes' if report['complete'] else 'no'} "
        f"({len(report['folds'])} of {report['k'] * repeats} folds)"
    )
    lines.append(
        "- std: sample standard deviation over folds (ddof=1); pooled: every fold's "
        "test predictions in one confusion matrix"
    )
    for which, title in (
        ("last", "last epoch (last.keras, not chosen on the test fold)"),
        ("best", "lowest val_loss (model.keras, chosen on the test fold: optimistic)"),
    ):
        mark = " (headline)" if which == report["score"] else ""
        lines += ["", f"## Model: {title}{mark}", ""]
        head = ["fold", "n_train", "n_test", "accuracy", "macro-F1", *[f"F1 {c}" for c in classes]]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join(["---"] * len(head)) + "|")
        for r in report["folds"]:
            s = r[which]
            lines.append(
                "| "
                + " | ".join(
                    [
                        str(r["fold"]),
                        str(r["n_train"]),
                        str(s["n_test"]),
                        _fmt(s["accuracy"]),
                        _fmt(s["macro_f1"]),
                        *[_fmt(s["per_class_f1"].get(c)) for c in classes],
                    ]
                )
                + " |"
            )
        summary = report["summary"][which]
        for label in ("mean", "std"):
            part = summary[label]
            lines.append(
                "| "
                + " | ".join(
                    [
                        f"**{label}**",
                        "",
                        "",
                        _fmt(part["accuracy"]),
                        _fmt(part["macro_f1"]),
                        *[_fmt(part["per_class_f1"][c]) for c in classes],
                    ]
                )
                + " |"
            )
        pooled = summary["pooled"]
        lines.append(
            "| "
            + " | ".join(
                [
                    "**pooled**",
                    "",
                    str(pooled["n_test"]),
                    _fmt(pooled["accuracy"]),
                    _fmt(pooled["macro_f1"]),
                    *[_fmt(pooled["per_class_f1"][c]) for c in classes],
                ]
            )
            + " |"
        )
    lines += [
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(report["config"], sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


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


def _last_scores(run_dir: Path, test_dir: Path, best: dict[str, Any], echo: Echo) -> dict:
    """Metrics of last.keras on the fold's test side (cached in metrics-last.json)."""
    from wbc import evaluate as ev

    path = run_dir / LAST_METRICS
    if path.is_file():
        return json.loads(path.read_text(encoding="utf-8"))
    if "last_model" in best:  # the family said whether its final model is another file
        last_file = best["last_model"]
    else:  # a run of an older wbc: the study family's two files
        same = best.get("evaluated_model") == "last.keras" or (
            best.get("best_epoch") is not None
            and best.get("best_epoch") == best.get("epochs_run", 0) - 1
        )
        last_file = None if same else "last.keras"
    if last_file is None:
        metrics = {
            k: best[k]
            for k in (
                "accuracy",
                "macro_f1",
                "classes",
                "per_class",
                "confusion_matrix",
                "n_images",
            )
        }
        metrics["same_as"] = best.get("evaluated_model", "model.keras")
    else:
        metrics = ev.evaluate(run_dir / last_file, test_dir, echo=echo)
    write_json(path, metrics)
    return metrics


def _history_summary(run_dir: Path) -> dict[str, Any]:
    from wbc.plots import read_history

    path = run_dir / "history.csv"
    rows = read_history(path) if path.is_file() else []
    if not rows:  # a family fitted in one step (features): its one model is the final one
        try:
            metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            metrics = {}
        if metrics.get("epochs_run") == 0 and "accuracy" in metrics:
            # validated on the same side as the Keras families (the test side, as the study)
            return {
                "val_acc_final": metrics["accuracy"],
                "val_acc_best": metrics["accuracy"],
                "val_loss_min": None,
            }
    finite = [r for r in rows if math.isfinite(r.get("val_loss", math.nan))]
    accs = [r["val_accuracy"] for r in rows if math.isfinite(r.get("val_accuracy", math.nan))]
    last = rows[-1].get("val_accuracy", math.nan) if rows else math.nan
    return {
        "val_acc_final": last if math.isfinite(last) else None,
        "val_acc_best": max(accs) if accs else None,
        "val_loss_min": min(r["val_loss"] for r in finite) if finite else None,
    }


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
    unfinished ones as Ray tasks (``wbc.executors``, ``ray_options``) and then scores them here.
    """
    from wbc.train import finished_run, has_progress, resolve_config
    from wbc.train import train as run_train

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
        source = folder_source(Path(data))
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

    if executor == "ray":
        from wbc.executors import RayOptions, TrainJob, run_trainings

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
        run_trainings(remote, ray_options or RayOptions(), echo)
    elif executor != "local":
        raise ConfigError(f"--executor: '{executor}' is not one of local, ray")

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
                _clear_session()
            best = json.loads(metrics_path.read_text(encoding="utf-8"))
            last = _last_scores(run_dir, test_dir, best, echo=_quiet)
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
                **_history_summary(run_dir),
            }
            headline_scores = result[score]
            result.update(
                accuracy=headline_scores["accuracy"],
                macro_f1=headline_scores["macro_f1"],
                per_class_f1=headline_scores["per_class_f1"],
                n_test=headline_scores["n_test"],
            )
            results.append(result)
            report = _report(plan, source, classes, results, score, out)
            write_json(out / CV_JSON, report)
            write_atomic(out / CV_MD, format_markdown(report))
            echo(
                f"{where}: {score} model accuracy {result['accuracy']:.4f}, "
                f"macro-F1 {result['macro_f1']:.4f} on {result['n_test']} test images"
            )
            shown.update(1)
    if report:
        from wbc.card import write_cv_card

        write_cv_card(out, report)
    return report


def fold_label(repeat: int, fold: int, repeats: int) -> str | int:
    """A fold's name: ``j`` in a single CV (as before repeats existed), ``r.j`` when repeated."""
    return fold if repeats == 1 else f"{repeat}.{fold}"


def _report(
    plan: dict[str, Any],
    source: FoldSource,
    classes: list[str],
    results: list[dict[str, Any]],
    score: str,
    out: Path,
) -> dict[str, Any]:
    summary = {which: summarize(results, classes, which) for which in SCORES}
    return {
        "format": FORMAT,
        "out": str(out),
        "k": plan["k"],
        "repeats": plan.get("repeats", 1),
        "complete": len(results) == plan["k"] * plan.get("repeats", 1),
        "score": score,
        "mode": source.mode,
        "data": source.where,
        "per_class": plan["per_class"],
        "init_model": plan["init_model"],
        "classes": classes,
        "folds": results,
        "mean": summary[score]["mean"],
        "std": summary[score]["std"],
        "pooled": summary[score]["pooled"],
        "summary": summary,
        "std_note": "sample standard deviation over folds (ddof=1)",
        "config": plan["config"],
    }


def _clear_session() -> None:
    """Free the finished fold's graphs before the next (long CVs would otherwise grow)."""
    import sys

    if "keras" not in sys.modules:  # nothing was trained in this process
        return
    try:
        import logging

        import keras

        keras.utils.clear_session()
        # Each fold builds a new model in this process; TensorFlow then warns about "retracing"
        # at every fold, which is expected here and only noise.
        logging.getLogger("tensorflow").setLevel(logging.ERROR)
    except Exception:  # noqa: BLE001 - only a memory optimisation
        pass


def read_report(out: Path) -> dict[str, Any]:
    path = Path(out) / CV_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (no fold has finished)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None


__all__ = [
    "cross_validate",
    "deal_folds",
    "cap_files",
    "build_fold_data",
    "prepared_source",
    "folder_source",
    "resolve_augmented",
    "summarize",
    "format_table",
    "format_markdown",
    "headline",
    "read_report",
    "FoldSource",
]
