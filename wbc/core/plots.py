"""Training curves (with the study's caption line) and the confusion matrix, as PNG files.

matplotlib is imported inside the functions, with the Agg backend, so that plotting works on a
server without a display and ``wbc --help`` stays fast.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wbc.core.errors import DataError
from wbc.core.runfolder import HISTORY_COLUMNS, read_history


def caption(rows: Sequence[dict[str, float]]) -> str:
    """The study's caption: last epoch's accuracy and loss, and the lowest val_loss.

    ``acc=0.95 (val_acc=0.93) | loss=0.15 (val_loss=0.20) | lowest val_loss=0.20``
    """
    if not rows:
        return "no epochs"
    last = {key: rows[-1].get(key, math.nan) for key in HISTORY_COLUMNS}
    val_losses = [r["val_loss"] for r in rows if not math.isnan(r.get("val_loss", math.nan))]
    lowest = min(val_losses) if val_losses else math.nan
    return (
        f"acc={last['accuracy']:.2f} (val_acc={last['val_accuracy']:.2f})"
        f" | loss={last['loss']:.2f} (val_loss={last['val_loss']:.2f})"
        f" | lowest val_loss={lowest:.2f}"
    )


def plot_history(history_csv: Path, out_png: Path, title: str = "") -> Path:
    """Accuracy and loss per epoch (train and val), two panels, titled with ``caption``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_history(history_csv)
    if not rows:
        raise DataError(f"{history_csv}: no epochs recorded yet")
    epochs = [r["epoch"] for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, label in ((left, "accuracy", "accuracy"), (right, "loss", "loss")):
        axis.plot(epochs, [r.get(key, math.nan) for r in rows], label=f"train {label}")
        axis.plot(epochs, [r.get(f"val_{key}", math.nan) for r in rows], label=f"val {label}")
        axis.set_xlabel("epoch")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend()
    left.set_title("accuracy")
    right.set_title("loss")
    figure.suptitle((title + "\n" if title else "") + caption(rows), fontsize=10)
    figure.tight_layout()
    out_png = Path(out_png)
    from wbc.core.manifest import atomic_path

    with atomic_path(out_png) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return out_png


def plot_confusion(matrix: Any, classes: Sequence[str], out_png: Any, title: str = "") -> Any:
    """The confusion matrix (rows: true class, columns: predicted) with counts in the cells,
    as a PNG written to ``out_png``: a path, or a binary file such as ``io.BytesIO``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    matrix = np.asarray(matrix, dtype=np.int64)
    row_sums = matrix.sum(axis=1, keepdims=True)
    shares = np.divide(matrix, row_sums, out=np.zeros(matrix.shape, float), where=row_sums > 0)
    size = 2.0 + 1.1 * len(classes)
    figure, axis = plt.subplots(figsize=(size + 1.0, size))
    image = axis.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04, label="share of the true class")
    axis.set_xticks(range(len(classes)), classes, rotation=35, ha="right")
    axis.set_yticks(range(len(classes)), classes)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            axis.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                color="white" if shares[i, j] > 0.5 else "black",
            )
    total = matrix.sum()
    accuracy = np.trace(matrix) / total if total else 0.0
    axis.set_title(
        (title + "\n" if title else "") + f"accuracy {accuracy:.3f} on {total} images", fontsize=10
    )
    figure.tight_layout()
    if isinstance(out_png, (str, Path)):
        from wbc.core.manifest import atomic_path

        out_png = Path(out_png)
        with atomic_path(out_png) as tmp:
            figure.savefig(tmp, dpi=100, format="png")
    else:  # a binary file object (the TensorBoard image)
        figure.savefig(out_png, dpi=100, format="png")
    plt.close(figure)
    return out_png
