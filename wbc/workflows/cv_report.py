"""What ``wbc cv`` reports: each fold's scores (best and last model), their mean and standard
deviation, the pooled confusion, ``cv.json``, and the plain-text and Markdown tables.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import DataError
from wbc.core.manifest import write_json
from wbc.workflows.folds import FoldSource

Echo = Callable[[str], None]

CV_JSON = "cv.json"
LAST_METRICS = "metrics-last.json"
SCORES = ("last", "best")
FORMAT = 1


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
    from wbc.core.metrics import metrics_from_confusion

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


def last_scores(run_dir: Path, test_dir: Path, best: dict[str, Any], echo: Echo) -> dict:
    """Metrics of last.keras on the fold's test side (cached in metrics-last.json)."""
    from wbc.workflows import evaluate as ev

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


def history_summary(run_dir: Path) -> dict[str, Any]:
    from wbc.core.runfolder import read_history

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


def fold_label(repeat: int, fold: int, repeats: int) -> str | int:
    """A fold's name: ``j`` in a single CV (as before repeats existed), ``r.j`` when repeated."""
    return fold if repeats == 1 else f"{repeat}.{fold}"


def make_report(
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


def read_report(out: Path) -> dict[str, Any]:
    path = Path(out) / CV_JSON
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path}: not found (no fold has finished)") from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable ({exc})") from None
