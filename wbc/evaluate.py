"""Score a trained model on any folder of class folders: accuracy, macro-F1, per class, confusion.

The model's settings travel with it: ``classes.json`` (class order) and ``config.yaml`` (image size,
crop mode) are read from the model's folder, never re-typed, and every image goes through
``wbc.preprocess`` exactly as in training. Metrics are scikit-learn's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.errors import DataError


def _quiet(_message: str) -> None:
    pass


# --------------------------------------------------------------------------- metrics (scikit-learn)


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` int counts: rows are true classes, columns predicted ones."""
    from sklearn.metrics import confusion_matrix as sk_confusion

    y_true = np.asarray(y_true, dtype=np.int64).ravel()
    y_pred = np.asarray(y_pred, dtype=np.int64).ravel()
    if y_true.shape != y_pred.shape:
        raise ValueError("y_true and y_pred differ in length")
    if len(y_true) and (
        min(y_true.min(), y_pred.min()) < 0 or max(y_true.max(), y_pred.max()) >= n_classes
    ):
        raise ValueError("class index out of range")
    if not len(y_true):
        return np.zeros((n_classes, n_classes), dtype=np.int64)
    return sk_confusion(y_true, y_pred, labels=np.arange(n_classes)).astype(np.int64)


def metrics_from_confusion(matrix, classes: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1 and per-class precision/recall/F1/support from a confusion matrix.

    scikit-learn computes them (``precision_recall_fscore_support`` with ``zero_division=0``,
    on the predictions the matrix stands for): a class with no predictions has precision 0, one
    with no images recall 0. Macro-F1 averages the classes that occur in the truth or the
    predictions (scikit-learn's default when no ``labels`` are given).
    """
    from sklearn.metrics import accuracy_score, f1_score, precision_recall_fscore_support

    matrix = np.asarray(matrix, dtype=np.int64)
    n = len(classes)
    rows, cols = np.nonzero(matrix)
    counts = matrix[rows, cols]
    y_true, y_pred = np.repeat(rows, counts), np.repeat(cols, counts)
    total = int(matrix.sum())
    if total:
        precision, recall, f1, support = precision_recall_fscore_support(
            y_true, y_pred, labels=np.arange(n), zero_division=0
        )
        accuracy = float(accuracy_score(y_true, y_pred))
        macro_f1 = float(f1_score(y_true, y_pred, average="macro", zero_division=0))
    else:
        precision = recall = f1 = np.zeros(n)
        support = np.zeros(n, dtype=np.int64)
        accuracy = macro_f1 = 0.0
    per_class = {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(classes)
    }
    return {
        "accuracy": accuracy,
        "macro_f1": macro_f1,
        "classes": list(classes),
        "per_class": per_class,
        "confusion_matrix": matrix.tolist(),
        "n_images": total,
    }


def compute_metrics(y_true, y_pred, classes: Sequence[str]) -> dict[str, Any]:
    return metrics_from_confusion(confusion_matrix(y_true, y_pred, len(classes)), classes)


# --------------------------------------------------------------------------- model folder


def read_classes(path: Path) -> list[str]:
    """The class order of a run: ``classes.json`` (a JSON list of names)."""
    from wbc.runs import _read_classes

    return list(_read_classes(Path(path)))


def write_classes(classes: Sequence[str], path: Path) -> None:
    from wbc.manifest import write_json

    write_json(path, list(classes))


# --------------------------------------------------------------------------- evaluate


def predict_files(run, files: Sequence[Path], batch_size: int = 64):
    """``(probabilities, kept, bad, distances)`` for ``files``, through predict's shared
    preprocessing; ``distances``: each kept file's stain distance (``wbc.domain``; NaN when
    the run has no ``domain.json``).

    The same path as ``wbc predict`` (crop of the main WBC when the model was trained on crops and
    an image is a whole smear), so evaluation scores exactly what a user would get.
    """
    from wbc.errors import BadImage
    from wbc.predict import Predictor, classify_files

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
    echo: Callable[[str], None] = _quiet,
) -> dict[str, Any]:
    """Score a trained model on ``data_dir/CLASS/*`` (jpg, jpeg, png, bmp, tif).

    ``model_path``: a ``.keras`` file or a run folder (None: the newest run). Its classes and
    preprocessing come from the ``classes.json`` and ``config.yaml`` beside it. Returns the
    metrics dict (see ``metrics_from_confusion``) plus ``errors``: one ``{"path", "reason"}`` per
    unreadable image (skipped), ``model`` and ``data``.
    """
    from wbc.feeds import list_class_files
    from wbc.runs import load_run

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


def write_metrics(metrics: dict[str, Any], path: Path) -> None:
    from wbc.manifest import write_json

    write_json(path, metrics)
