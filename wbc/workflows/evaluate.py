"""Score a trained model on any folder of class folders: accuracy, macro-F1, per class, confusion.

The model's settings travel with it: ``classes.json`` (class order) and ``config.yaml`` (image size,
crop mode) are read from the model's folder, never re-typed, and every image goes through
``wbc.imaging.preprocess`` exactly as in training. Metrics are scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import DataError
from wbc.core.metrics import compute_metrics
from wbc.core.progress import no_echo

# --------------------------------------------------------------------------- metrics (scikit-learn)


# --------------------------------------------------------------------------- model folder


# --------------------------------------------------------------------------- evaluate


def predict_files(run, files: Sequence[Path], batch_size: int = 64):
    """``(probabilities, kept, bad, distances)`` for ``files``, through predict's shared
    preprocessing; ``distances``: each kept file's stain distance (``wbc.imaging.domain``; NaN when
    the run has no ``domain.json``).

    The same path as ``wbc predict`` (crop of the main WBC when the model was trained on crops and
    an image is a whole smear), so evaluation scores exactly what a user would get.
    """
    from wbc.core.errors import BadImage
    from wbc.workflows.predict import Predictor, classify_files

    # No conversion cache: cv and tune evaluate hundreds of models that are never loaded again.
    results = classify_files(
        Predictor.from_run(run, cache=False),
        files,
        run.spec,
        run.crop_size,
        batch_size=batch_size,
        domain=run.domain,
    )
    kept = [i for i, r in enumerate(results) if r.error is None]
    bad = [BadImage(r.path, r.error) for r in results if r.error is not None]
    n_out = len(run.classes)
    probs = (
        np.stack([results[i].probabilities[0] for i in kept])
        if kept
        else np.zeros((0, n_out), np.float32)
    )
    distances = np.asarray(
        [results[i].distances[0] if results[i].distances else np.nan for i in kept],
        dtype=np.float64,
    )
    return probs, np.asarray(kept, dtype=np.int64), bad, distances


def domain_summary(correct: np.ndarray, flagged: np.ndarray, threshold: float) -> dict[str, Any]:
    """How often the out-of-domain flag fired (``flagged``: a bool per image), and the accuracy
    of flagged and other images."""

    def share(mask):
        return float(correct[mask].mean()) if mask.any() else None

    return {
        "threshold": round(float(threshold), 4),
        "flagged": int(flagged.sum()),
        "flagged_share": float(flagged.mean()) if len(flagged) else 0.0,
        "accuracy_flagged": share(flagged),
        "accuracy_unflagged": share(~flagged),
    }


def evaluate(
    model_path: Optional[Path],
    data_dir: Path,
    batch_size: int = 64,
    echo: Callable[[str], None] = no_echo,
) -> dict[str, Any]:
    """Score a trained model on ``data_dir/CLASS/*`` (jpg, jpeg, png, bmp, tif).

    ``model_path``: a ``.keras`` file or a run folder (None: the newest run). Its classes and
    preprocessing come from the ``classes.json`` and ``config.yaml`` beside it. Returns the
    metrics dict (see ``metrics_from_confusion``) plus ``errors``: one ``{"path", "reason"}`` per
    unreadable image (skipped), ``model`` and ``data``.
    """
    from wbc.imaging.feeds import list_class_files
    from wbc.models.runs import load_run

    data_dir = Path(data_dir)
    run = load_run(model_path)
    classes = list(run.classes)
    if not data_dir.is_dir():
        raise DataError(f"{data_dir}: folder not found")
    _, files, labels = list_class_files(data_dir, classes)
    echo(f"evaluating {run.model_path} on {len(files)} images in {data_dir}")
    probs, kept, bad, distances = predict_files(run, files, batch_size)
    metrics = compute_metrics(labels[kept], probs.argmax(axis=1), classes)
    if run.domain is not None:
        metrics["out_of_domain"] = domain_summary(
            labels[kept] == probs.argmax(axis=1),
            run.domain.outside(distances),
            run.domain.threshold,
        )
    metrics["errors"] = [{"path": b.path, "reason": b.reason} for b in bad]
    metrics["model"] = str(run.model_path)
    metrics["data"] = str(data_dir)
    return metrics


# --------------------------------------------------------------------------- reporting


def format_table(metrics: dict[str, Any]) -> str:
    """A plain-text report: totals, per-class P/R/F1/support, and the confusion matrix."""
    classes = metrics["classes"]
    width = max(9, *(len(c) for c in classes))
    lines = [
        f"images    {metrics['n_images']}"
        + (
            f"   (skipped {len(metrics.get('errors', []))} unreadable)"
            if metrics.get("errors")
            else ""
        ),
        f"accuracy  {metrics['accuracy']:.4f}",
        f"macro-F1  {metrics['macro_f1']:.4f}",
        "",
        f"{'class':<{width}}  precision  recall      f1  support",
    ]
    for name in classes:
        row = metrics["per_class"][name]
        lines.append(
            f"{name:<{width}}  {row['precision']:9.4f}  {row['recall']:6.4f}  {row['f1']:6.4f}"
            f"  {row['support']:7d}"
        )
    matrix = metrics["confusion_matrix"]
    cell = max(
        6,
        max((len(str(v)) for r in matrix for v in r), default=1) + 1,
        *(len(c[:10]) + 1 for c in classes),
    )
    lines += ["", "confusion matrix (rows: true class, columns: predicted)"]
    lines.append(" " * width + "".join(f"{c[:10]:>{cell}}" for c in classes))
    for name, row in zip(classes, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{cell}}" for v in row))
    domain = metrics.get("out_of_domain")
    if domain:

        def pct(value):
            return "-" if value is None else f"{value:.4f}"

        lines += [
            "",
            f"out of domain (stain distance > {domain['threshold']:.2f}): "
            f"{domain['flagged']} of {metrics['n_images']} images; accuracy flagged "
            f"{pct(domain['accuracy_flagged'])}, others {pct(domain['accuracy_unflagged'])}",
        ]
    for error in metrics.get("errors", []):
        lines.append(f"skipped {error['path']}: {error['reason']}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs side by side


def run_settings(run) -> str:
    """The settings that matter across labs: family, crop mode, colour input, normalisation,
    jitter (``features(absolute) crop=detect in=rgb norm=reinhard``)."""
    c = run.config.color
    jitter = [
        f"{k[0]}{getattr(c, k):g}"
        for k in ("brightness", "contrast", "saturation", "hue")
        if getattr(c, k) > 0
    ]
    model = run.config.model
    family = "+".join(model.ensemble) if model.ensemble else model.family
    if family == "features":
        family += f"({model.features.colour})"
    parts = [
        family + ("+tta" if model.tta else ""),
        f"crop={run.config.crop.mode}",
        f"in={c.input}",
        f"norm={c.normalize}",
    ]
    if jitter:
        parts.append("jit=" + ",".join(jitter))
    return " ".join(parts)


def majority_baseline(counts: Sequence[int]) -> tuple[float, float]:
    """Accuracy and macro-F1 of always answering the most frequent class."""
    total, best = sum(counts), max(counts)
    precision = best / total
    f1 = 2 * precision / (precision + 1)
    return best / total, f1 / sum(1 for n in counts if n > 0)


def compare_runs(
    models: Sequence[Path],
    folder: Path,
    batch_size: int = 64,
    echo: Callable[[str], None] = no_echo,
) -> dict[str, Any]:
    """Score several runs on one folder of class folders (another lab's cells, say).

    Returns ``{"folder", "runs": [{"model", "settings", "own_accuracy", "adapted_on",
    "metrics"} or {"model", "error"}], "majority": {"accuracy", "macro_f1"}}``. A run that
    cannot be loaded or scored is its own error row; the others go on. ``adapted_on`` is the
    folder a ``wbc adapt`` run was adapted to (None for a trained run): its own accuracy is
    then the source lab's held-out side, scored after that adaptation."""
    from wbc.core.errors import WbcError
    from wbc.core.runfolder import METRICS_NAME, read_run_info
    from wbc.models.runs import load_run, resolve_model_path

    if not Path(folder).is_dir():
        raise DataError(f"{folder}: folder not found")
    rows: list[dict[str, Any]] = []
    counts: list[int] = []
    for given in models:
        try:
            path = resolve_model_path(given)
            run = load_run(path)
            metrics = evaluate(path, folder, batch_size=batch_size, echo=echo)
        except WbcError as exc:
            rows.append({"model": str(given), "error": str(exc)})
            continue
        own = None
        try:
            import json

            own = json.loads((path.parent / METRICS_NAME).read_text(encoding="utf-8"))["accuracy"]
        except (OSError, ValueError, KeyError, TypeError):
            pass
        counts = [metrics["per_class"][c]["support"] for c in metrics["classes"]]
        adaptation = read_run_info(path.parent).get("adaptation") or {}
        rows.append(
            {
                "model": str(given),
                "settings": run_settings(run),
                "own_accuracy": own,
                "adapted_on": adaptation.get("folder"),
                "metrics": metrics,
            }
        )
    majority = None
    if counts and sum(counts):
        accuracy, macro_f1 = majority_baseline(counts)
        majority = {"accuracy": accuracy, "macro_f1": macro_f1, "images": sum(counts)}
    return {"folder": str(folder), "runs": rows, "majority": majority}


def format_comparison(result: dict[str, Any]) -> str:
    """``compare_runs`` as a plain-text table, the majority-class baseline last."""
    scored = [r for r in result["runs"] if "metrics" in r]
    classes = scored[0]["metrics"]["classes"] if scored else []
    headers = [
        "run",
        "settings",
        "own test acc",
        "images",
        "accuracy",
        "macro-F1",
        ("recall " + "/".join(c[:3] for c in classes)) if classes else "recall",
        "flagged: acc flagged/others",
    ]
    lines: list[list[str]] = []
    for row in result["runs"]:
        if "error" in row:
            lines.append([row["model"], f"error: {row['error']}"])
            continue
        m = row["metrics"]
        domain = m.get("out_of_domain")
        flag = (
            "-"
            if not domain
            else f"{domain['flagged_share']:.2f}: "
            + "/".join(
                "-" if domain[k] is None else f"{domain[k]:.2f}"
                for k in ("accuracy_flagged", "accuracy_unflagged")
            )
        )
        adapted_on = row.get("adapted_on")
        lines.append(
            [
                row["model"],
                row["settings"] + (f" adapted={Path(adapted_on).name}" if adapted_on else ""),
                "-" if row["own_accuracy"] is None else f"{row['own_accuracy']:.3f}",
                str(m["n_images"]),
                f"{m['accuracy']:.3f}",
                f"{m['macro_f1']:.3f}",
                " ".join(f"{m['per_class'][c]['recall']:.2f}" for c in m["classes"]),
                flag,
            ]
        )
    if result["majority"]:
        base = result["majority"]
        lines.append(
            [
                "(majority class)",
                "",
                "",
                str(base["images"]),
                f"{base['accuracy']:.3f}",
                f"{base['macro_f1']:.3f}",
            ]
        )
    widths = [
        # a list: with every row an error (no run scored) only the header sets the width
        max([len(h), *(len(r[i]) for r in lines if i < len(r) and not r[1].startswith("error"))])
        for i, h in enumerate(headers)
    ]
    out = [f"evaluation on {result['folder']}"]
    for line in [headers, *lines]:
        out.append("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    for row in scored:
        if row.get("adapted_on"):
            same = Path(row["adapted_on"]).resolve() == Path(result["folder"]).resolve()
            out.append(
                f"{row['model']}: adapted without labels to {row['adapted_on']}"
                + (" (these very cells)" if same else "")
                + "; its own test acc is the source lab's held-out side after that adaptation"
            )
    return "\n".join(out) + "\n"
