"""``wbc tune``: train every combination of a grid of settings and rank them.

A grid file maps dotted config keys to the values to try::

    model.filters: [[8, 16, 16, 16], [16, 32, 32, 32]]
    model.dense_units: [32, 64]
    train.optimizer: [rmsprop, adam]

Every key is checked against the config (an unknown key is an error with a close-match hint,
as in ``wbc.core.config``), and every cell of the cross product is built and validated as a Config
before anything trains. A cell's run folder is ``OUT/cell-<hash>``, the hash of its complete
resolved config (grid values, --set overrides, subset, epochs) and of the data it reads: a
finished cell (``metrics.json``, or a complete ``cv.json`` with ``cv``) is never rerun, a cell
killed during training continues where it stopped, and changing any setting makes new cells
instead of reusing old ones.

Single split (default): each cell trains on the prepared subset and is scored on its test side
(the validation data, as in ``wbc train``): final and best val accuracy, lowest val loss, the test
macro-F1 of the best-val_loss model, epochs run and seconds. With ``cv=K`` each cell is scored by
K-fold cross-validation (``wbc.workflows.cv``) instead, and ``augment.*`` keys may be tuned too
(each
distinct augment setting is augmented once into ``OUT/augmented-<key>``).

``results.csv`` and ``results.md`` are rewritten after every cell, best first.
"""

from __future__ import annotations

import csv
import dataclasses
import itertools
import json
import math
import typing
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config, close_match_hint, config_from_dict, merge_dicts, read_yaml
from wbc.core.errors import ConfigError, DataError
from wbc.core.locks import holds_folder_lock
from wbc.core.manifest import (
    MANIFEST_NAME,
    Manifest,
    atomic_path,
    sha256_json,
    write_atomic,
    write_json,
)
from wbc.core.progress import bar

Echo = Callable[[str], None]

RESULTS_CSV = "results.csv"
RESULTS_MD = "results.md"
CELL_JSON = "cell.json"
# Sections of the data stages: a run on prepared data never sees them change. augment.* is
# tunable under --cv only, which augments for each setting (a single split trains on an already
# prepared subset).
DATA_SECTIONS = ("rename", "crop", "augment", "split", "subsets", "fetch")
CV_DATA_SECTIONS = tuple(s for s in DATA_SECTIONS if s != "augment")

SINGLE_COLUMNS = (
    "val_acc_final",
    "val_acc_best",
    "val_loss_min",
    "test_macro_f1",
    "epochs",
    "seconds",
)
CV_COLUMNS = (
    "cv_macro_f1",
    "cv_macro_f1_std",
    "cv_accuracy",
    "cv_accuracy_std",
    "val_acc_final",
    "val_acc_best",
    "val_loss_min",
    "epochs",
    "seconds",
)
DEFAULT_SORT = {False: "val_acc_final", True: "cv_macro_f1"}
ASCENDING_HINTS = ("loss", "seconds", "_std", "epochs")


# --------------------------------------------------------------------------- the grid


def check_key(dotted: str, where: str, fixed: Sequence[str] = CV_DATA_SECTIONS) -> None:
    """Raise a ConfigError unless ``dotted`` names a config key (with a close-match hint)."""
    parts = [p.strip() for p in str(dotted).split(".")]
    if not all(parts):
        raise ConfigError(f"{where}: '{dotted}' is not a dotted config key (section.key)")
    cls: Any = Config
    for depth, part in enumerate(parts):
        if not dataclasses.is_dataclass(cls):
            # the one level below a mapping key (augment.per_class_targets.MONOCYTE) is free
            if typing.get_origin(cls) is dict and depth == len(parts) - 1:
                break
            shown = ".".join(parts[:depth])
            raise ConfigError(f"{where}: '{dotted}': '{shown}' is a value, not a section")
        names = [f.name for f in dataclasses.fields(cls)]
        if part not in names:
            raise ConfigError(
                f"{where}: unknown config key '{dotted}'" + close_match_hint(part, names)
            )
        cls = typing.get_type_hints(cls)[part]
    if dataclasses.is_dataclass(cls):
        raise ConfigError(
            f"{where}: '{dotted}' is a section; name one of its keys "
            f"(e.g. {dotted}.{dataclasses.fields(cls)[0].name})"
        )
    if parts[0] in fixed:
        extra = (
            " (augment.* only with --cv, which augments for each setting)"
            if parts[0] == "augment"
            else ""
        )
        raise ConfigError(
            f"{where}: '{dotted}' does not change training on prepared data; the "
            f"{', '.join(s + '.*' for s in fixed)} keys are fixed by `wbc prepare`{extra}"
        )


def read_grid(path: Path, cv: bool = False) -> dict[str, list]:
    """The grid file: ``{dotted key: [values to try]}``, in file order (a scalar = one value)."""
    data = read_yaml(Path(path))
    if not data:
        raise ConfigError(f"{path}: empty grid; map dotted config keys to lists of values")
    grid: dict[str, list] = {}
    for key, values in data.items():
        if isinstance(values, dict):
            raise ConfigError(
                f"{path}: '{key}': use dotted keys (e.g. '{key}.KEY: [v1, v2]'), "
                "not nested sections"
            )
        check_key(str(key), str(path), CV_DATA_SECTIONS if cv else DATA_SECTIONS)
        values = values if isinstance(values, list) else [values]
        if not values:
            raise ConfigError(f"{path}: '{key}': empty list of values")
        grid[str(key)] = values
    return grid


def expand_grid(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The cross product: one ``{key: value}`` per cell, the last key varying fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def nested(settings: dict[str, Any]) -> dict[str, Any]:
    """``{"train.optimizer": "adam"}`` -> ``{"train": {"optimizer": "adam"}}``."""
    result: dict[str, Any] = {}
    for dotted, value in settings.items():
        parts = dotted.split(".")
        node: dict[str, Any] = {parts[-1]: value}
        for part in reversed(parts[:-1]):
            node = {part: node}
        result = merge_dicts(result, node)
    return result


def cell_config(base: Config, settings: dict[str, Any], where: str) -> Config:
    """``base`` with the cell's settings applied, validated like any config."""
    try:
        return config_from_dict(merge_dicts(base.to_dict(), nested(settings)), where)
    except ConfigError as exc:
        text = str(exc)
        if "expected a list" in text:
            text += " (a grid lists the values to try: a list value is written [[...], [...]])"
        raise ConfigError(text) from None


def show(value: Any) -> str:
    """A grid value as one short cell of a table."""
    if isinstance(value, str):
        return value
    if value is None:
        return "null"
    return json.dumps(value, separators=(", ", ": "))


# --------------------------------------------------------------------------- running cells


def _subset_identity(data_dir: Path, subset: str) -> dict[str, Any]:
    folder = Path(data_dir) / "processed" / subset
    digest = None
    if (folder / MANIFEST_NAME).is_file():
        try:
            digest = Manifest.load(folder).digest
        except DataError:
            digest = None
    return {"folder": str(folder.resolve()), "digest": digest}


def _source_identity(data_dir: Path) -> dict[str, Any]:
    from wbc.data.pipeline import DataPaths

    paths = DataPaths(Path(data_dir))
    found = {}
    for name, folder in (("renamed", paths.renamed), ("cropped", paths.cropped)):
        if (folder / MANIFEST_NAME).is_file():
            try:
                found[name] = Manifest.load(folder).digest
            except DataError:
                found[name] = None
    return {"folder": str(Path(data_dir).resolve()), **found}


def cell_id(config: Config, extra: dict[str, Any]) -> str:
    return sha256_json({"config": config.to_dict(), **extra})[:12]


def _history(run_dir: Path) -> dict[str, Any]:
    from wbc.workflows.cv_report import history_summary

    return history_summary(run_dir)


def _single_row(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {
        **_history(run_dir),
        "test_macro_f1": metrics.get("macro_f1"),
        "epochs": metrics.get("epochs_run"),
        "seconds": metrics.get("wall_seconds"),
        "collapsed": metrics.get("collapsed"),
    }


def _mean(values: Sequence[Any]) -> Optional[float]:
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite else None


def _cv_row(report: dict[str, Any]) -> dict[str, Any]:
    folds = report["folds"]
    return {
        "cv_macro_f1": report["mean"]["macro_f1"],
        "cv_macro_f1_std": report["std"]["macro_f1"],
        "cv_accuracy": report["mean"]["accuracy"],
        "cv_accuracy_std": report["std"]["accuracy"],
        "val_acc_final": _mean([f.get("val_acc_final") for f in folds]),
        "val_acc_best": _mean([f.get("val_acc_best") for f in folds]),
        "val_loss_min": _mean([f.get("val_loss_min") for f in folds]),
        "epochs": _mean([f.get("epochs_run") for f in folds]),
        "seconds": sum(float(f.get("wall_seconds") or 0) for f in folds),
        "collapsed": any(f.get("collapsed") for f in folds),
    }


def _finished(cell_dir: Path, cv: Optional[int], echo: Optional[Echo] = None) -> bool:
    if cv is None:
        from wbc.core.runfolder import finished_run

        return finished_run(cell_dir, f"cell {cell_dir.name}", echo)
    path = cell_dir / "cv.json"
    if not path.is_file():
        return False
    try:
        return bool(json.loads(path.read_text(encoding="utf-8")).get("complete"))
    except (OSError, ValueError):
        return False


def sort_rows(rows: list[dict[str, Any]], column: str) -> list[dict[str, Any]]:
    """Best first by ``column`` (losses, seconds, epochs and std ascending, others descending);
    rows without a value last, ties in grid order."""
    ascending = any(hint in column for hint in ASCENDING_HINTS)

    def key(row):
        value = row.get(column)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return (1, 0.0, row["index"])
        value = float(value)
        return (0, value if ascending else -value, row["index"])

    return sorted(rows, key=key)


def _fmt(value: Any, column: str = "") -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else ""
    if isinstance(value, float):
        if column in ("seconds", "epochs"):
            return f"{value:.0f}" if value == int(value) or value >= 100 else f"{value:.1f}"
        return f"{value:.4f}"
    return str(value)


def table_rows(rows: list[dict[str, Any]], keys: list[str], columns: Sequence[str]):
    head = ["rank", *keys, *columns, "collapsed", "cell"]
    body = []
    for rank, row in enumerate(rows, 1):
        body.append(
            [
                str(rank),
                *[show(row["settings"][k]) for k in keys],
                *[_fmt(row.get(c), c) for c in columns],
                _fmt(row.get("collapsed")),
                row["cell"],
            ]
        )
    return head, body


def write_results(
    out: Path,
    rows: list[dict[str, Any]],
    keys: list[str],
    columns: Sequence[str],
    total: int,
    title: str,
) -> str:
    """results.csv and results.md; returns the plain-text table."""
    head, body = table_rows(rows, keys, columns)
    with atomic_path(out / RESULTS_CSV) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(head)
        for row, cells in zip(rows, body):
            writer.writerow(
                cells[:1]
                + [show(row["settings"][k]) for k in keys]
                + ["" if row.get(c) is None else row.get(c) for c in columns]
                + cells[-2:]
            )
    lines = [f"# {title}", "", f"{len(rows)} of {total} cells done; best first.", ""]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join(["---"] * len(head)) + "|")
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
    write_atomic(out / RESULTS_MD, "\n".join(lines) + "\n")
    widths = [
        max(len(h), *(len(r[i]) for r in body)) if body else len(h) for i, h in enumerate(head)
    ]
    text = ["  ".join(h.ljust(w) for h, w in zip(head, widths))]
    text += ["  ".join(c.ljust(w) for c, w in zip(cells, widths)) for cells in body]
    return "\n".join(line.rstrip() for line in text)


@holds_folder_lock("tuning", "out")
def tune(
    config: Config,
    grid_path: Path,
    data_dir: Path = Path("data"),
    subset: Optional[str] = None,
    epochs: Optional[int] = None,
    out: Optional[Path] = None,
    cv: Optional[int] = None,
    per_class: Optional[int] = None,
    sort: Optional[str] = None,
    echo: Echo = print,
    train_echo: Optional[Echo] = None,
    executor: str = "local",
    ray_options: Any = None,
) -> dict[str, Any]:
    """Run every cell of the grid (skipping finished ones); write results.csv and results.md.

    ``config``: the base settings every cell starts from; ``subset``/``epochs`` are applied to it
    before the grid values (so a grid may list train.epochs too). ``cv``: score each cell by
    K-fold cross-validation (``per_class`` caps its training images per class per fold).
    ``sort``: the results column to rank by (default val_acc_final, or cv_macro_f1 with ``cv``).
    ``executor``: ``ray`` trains the unfinished cells as Ray tasks (with ``cv``: each cell's
    folds), then ranks them here exactly as ``local`` does.
    Returns ``{"out", "rows" (sorted), "trained", "skipped", "table"}``.
    """
    from wbc.models.checkpoint import has_progress
    from wbc.workflows.train import resolve_config
    from wbc.workflows.train import train as run_train

    grid_path = Path(grid_path)
    grid = read_grid(grid_path, cv=cv is not None)
    columns = CV_COLUMNS if cv is not None else SINGLE_COLUMNS
    sort = sort or DEFAULT_SORT[cv is not None]
    if sort not in columns:
        raise ConfigError(
            f"--sort: '{sort}' is not a results column" + close_match_hint(sort, list(columns))
        )
    if cv is not None and cv < 2:
        raise ConfigError(f"--cv: need at least 2 folds, got {cv}")
    base = resolve_config(config, subset, epochs)
    cells = expand_grid(grid)
    configs = [
        cell_config(base, s, f"{grid_path}: cell {i + 1} ({_describe(s)})")
        for i, s in enumerate(cells)
    ]
    out = Path(out) if out is not None else Path("runs") / f"tune-{grid_path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    train_echo = echo if train_echo is None else train_echo
    if cv is None:
        extra_for = lambda c: {
            "mode": "single",
            "data": _subset_identity(
                data_dir,  # noqa: E731
                c.train.subset,
            ),
        }
    else:
        source = _source_identity(data_dir)
        extra_for = lambda c: {
            "mode": "cv",
            "k": cv,
            "per_class": per_class,  # noqa: E731
            "data": source,
        }
    ids = [cell_id(c, extra_for(c)) for c in configs]
    if len(set(ids)) < len(ids):
        echo("note: some grid cells have identical settings; each is run once")
    keys = list(grid)
    title = (
        f"wbc tune: {grid_path.name}, "
        + (f"{cv}-fold cross-validation" if cv else f"subset {base.train.subset}")
        + f", {base.train.epochs} epoch{'' if base.train.epochs == 1 else 's'}"
    )
    echo(f"tune: {len(cells)} cells of {grid_path} -> {out}")

    remote_ids: set[str] = set()
    from wbc.workflows.executors import check_executor

    check_executor(executor)
    if executor == "ray" and cv is None:
        from wbc.workflows.executors import RayOptions, TrainJob, run_trainings

        remote = []
        for index, (settings, cfg, cid) in enumerate(zip(cells, configs, ids)):
            cell_dir = out / f"cell-{cid}"
            if cid in remote_ids or _finished(cell_dir, cv, echo):
                continue
            cell_dir.mkdir(parents=True, exist_ok=True)
            write_json(
                cell_dir / CELL_JSON, {"settings": settings, "id": cid, "extra": extra_for(cfg)}
            )
            label = f"cell {index + 1}/{len(cells)} ({_describe(settings)})"
            remote.append(TrainJob(label, cfg, {"data_dir": data_dir, "run_dir": cell_dir}))
            remote_ids.add(cid)
        run_trainings(remote, ray_options or RayOptions(), echo, run_train)

    rows: list[dict[str, Any]] = []
    done_ids: set[str] = set()
    trained = skipped = 0
    text = ""
    with bar(len(cells), "tune cells", unit="cell") as shown:
        for index, (settings, cfg, cid) in enumerate(zip(cells, configs, ids)):
            shown.update(1)
            cell_dir = out / f"cell-{cid}"
            label = f"cell {index + 1}/{len(cells)} ({_describe(settings)})"
            if cid in done_ids:
                continue
            if cid in remote_ids:
                trained += 1
            elif _finished(cell_dir, cv, echo):
                echo(f"{label}: done before, skipped ({cell_dir})")
                skipped += 1
            else:
                echo(f"{label}: training -> {cell_dir}")
                cell_dir.mkdir(parents=True, exist_ok=True)
                write_json(
                    cell_dir / CELL_JSON, {"settings": settings, "id": cid, "extra": extra_for(cfg)}
                )
                if cv is None:
                    resume = cell_dir if has_progress(cell_dir) else None
                    run_train(
                        cfg, data_dir=data_dir, run_dir=cell_dir, resume_dir=resume, echo=train_echo
                    )
                    from wbc.models.training import clear_session

                    clear_session()
                else:
                    from wbc.workflows.cv import cross_validate

                    cross_validate(
                        cfg,
                        data_dir=data_dir,
                        folds=cv,
                        out=cell_dir,
                        per_class=per_class,
                        cache_dir=out,
                        echo=echo,
                        train_echo=train_echo,
                        executor=executor,
                        ray_options=ray_options,
                    )
                trained += 1
            if cv is None:
                result = _single_row(cell_dir)
            else:
                from wbc.workflows.cv_report import read_report

                result = _cv_row(read_report(cell_dir))
            done_ids.add(cid)
            rows.append({"index": index, "cell": cell_dir.name, "settings": settings, **result})
            text = write_results(out, sort_rows(rows, sort), keys, columns, len(set(ids)), title)
    ordered = sort_rows(rows, sort)
    return {"out": out, "rows": ordered, "trained": trained, "skipped": skipped, "table": text}


def _describe(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k}={show(v)}" for k, v in settings.items())
