"""Classification metrics from labels or a confusion matrix (scikit-learn's): accuracy, macro-F1,
per-class precision, recall and F1. Shared by evaluate, cv, the reports and TensorBoard."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np


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
