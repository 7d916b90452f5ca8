"""What the Keras training loop (``wbc.models.keras_family``) is made of: the distribution
strategy, the per-epoch callback (backup commit, history.csv, model.keras / last.keras), early
stopping that can replay a resumed history, the collapse warning, class weights and the
fine-tuning helpers (freeze layers, initial weights).
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

from wbc.core.errors import ConfigError
from wbc.core.manifest import atomic_path
from wbc.core.runfolder import append_history

Echo = Callable[[str], None]

STRATEGIES = ("default", "mirrored", "multiworker")


COLLAPSE_TOLERANCE = 0.02  # |loss - ln(n_classes)| below this counts as "stuck"


COLLAPSE_ACCURACY_MARGIN = 0.05  # accuracy at most the majority share plus this


class CollapseDetector:
    """Spots the study's failure mode: the net predicts one class and the loss sits at ln(n).

    ``update(loss, accuracy)`` once per epoch; it returns True on the epoch where the loss has
    stayed within ``tolerance`` of ``reference`` (ln(n_classes) for balanced data) for ``epochs``
    epochs in a row while the accuracy is no better than always naming the largest class.
    ``collapsed`` is the state now: a run that leaves the plateau later (accuracy clearly above
    the majority share) is no longer collapsed, but ``warned`` stays True.
    """

    def __init__(
        self,
        n_classes: int,
        majority_share: float,
        epochs: int = 3,
        reference: Optional[float] = None,
        tolerance: float = COLLAPSE_TOLERANCE,
        accuracy_margin: float = COLLAPSE_ACCURACY_MARGIN,
    ):
        self.n_classes = n_classes
        self.majority_share = majority_share
        self.epochs = max(1, epochs)
        self.reference = math.log(n_classes) if reference is None else reference
        self.tolerance = tolerance
        self.accuracy_margin = accuracy_margin
        self.streak = 0
        self.collapsed = False
        self.warned = False
        self.recovered = False  # set by the update that ends a collapse

    def update(self, loss: float, accuracy: float) -> bool:
        """Record one epoch; True when a collapse starts (warn once per collapse)."""
        stuck = (
            math.isfinite(loss)
            and abs(loss - self.reference) <= self.tolerance
            and accuracy <= self.majority_share + self.accuracy_margin
        )
        self.streak = self.streak + 1 if stuck else 0
        self.recovered = False
        if self.collapsed and not stuck and accuracy > self.majority_share + self.accuracy_margin:
            self.collapsed = False
            self.recovered = True
        if self.streak >= self.epochs and not self.collapsed:
            self.collapsed = self.warned = True
            return True
        return False

    def message(self, loss: float, accuracy: float) -> str:
        balanced = abs(self.reference - math.log(self.n_classes)) < 1e-6
        where = (
            f"ln({self.n_classes})={self.reference:.3f}"
            if balanced
            else f"the class-prior entropy {self.reference:.3f}"
        )
        return (
            f"warning: collapse: loss stuck at {where} for {self.streak} epochs "
            f"(loss {loss:.3f}, accuracy {accuracy:.3f} ~ the majority share "
            f"{self.majority_share:.3f}): the model predicts one class; "
            "try a lower train.learning_rate or crop.mode"
        )


class PatienceTracker:
    """Early stopping on val_loss that can replay an earlier history (for --resume)."""

    def __init__(self, patience: Optional[int]):
        self.patience = patience
        self.best = math.inf
        self.best_epoch: Optional[int] = None
        self.wait = 0

    def update(self, epoch: int, val_loss: float) -> bool:
        """Record one epoch; True when training should stop."""
        if math.isfinite(val_loss) and val_loss < self.best:
            self.best, self.best_epoch, self.wait = val_loss, epoch, 0
        else:
            self.wait += 1
        return self.patience is not None and self.wait >= self.patience


def balanced_class_weights(counts: Sequence[int]) -> dict[int, float]:
    """``n / (n_classes * count)`` per class, as scikit-learn's 'balanced'."""
    total = sum(counts)
    present = [c for c in counts if c > 0]
    return {i: (total / (len(present) * c) if c else 0.0) for i, c in enumerate(counts)}


def make_strategy(name: str, echo: Echo):
    """A ``tf.distribute`` strategy: default, mirrored (local GPUs, else every logical CPU)."""
    import tensorflow as tf

    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        if gpus:
            strategy = tf.distribute.MirroredStrategy()
        else:
            cpus = [d.name for d in tf.config.list_logical_devices("CPU")]
            strategy = tf.distribute.MirroredStrategy(devices=cpus)
        echo(f"strategy: mirrored over {strategy.num_replicas_in_sync} device(s)")
        return strategy
    if name == "multiworker":
        strategy = tf.distribute.MultiWorkerMirroredStrategy()
        echo(
            f"strategy: multiworker, {strategy.num_replicas_in_sync} replica(s) in sync "
            "(workers from TF_CONFIG)"
        )
        return strategy
    raise ConfigError(f"--strategy: unknown strategy '{name}' (use {', '.join(STRATEGIES)})")


def cluster_workers() -> int:
    """How many tasks (chief + workers) TF_CONFIG names; 1 without TF_CONFIG."""
    try:
        cluster = json.loads(os.environ.get("TF_CONFIG") or "{}").get("cluster", {})
    except ValueError:
        return 1
    return max(1, len(cluster.get("chief", [])) + len(cluster.get("worker", [])))


def is_chief() -> bool:
    """False on a non-chief multi-worker task (TF_CONFIG), which must not write the run folder."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return True
    try:
        task = json.loads(raw).get("task", {})
        cluster = json.loads(raw).get("cluster", {})
    except ValueError:
        return True
    kind, index = task.get("type"), int(task.get("index", 0))
    if kind == "chief":
        return True
    if kind == "worker":
        return "chief" not in cluster and index == 0
    return False


def human_epoch(epoch: Optional[int], total: int) -> str:
    """A 0-based history epoch as Keras' progress bar names it: '7/150' for epoch 6."""
    return "?" if epoch is None else f"{epoch + 1}/{total}"


def run_callback(
    keras,
    run_dir: Path,
    prior: list[dict[str, float]],
    patience: PatienceTracker,
    collapse: CollapseDetector,
    echo: Echo,
    write: bool,
    total: int,
):
    """One Keras callback that keeps the backup, history.csv, the checkpoints, early stopping and
    collapse."""
    from wbc.models.checkpoint import commit

    class RunLog(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.rows = list(prior)
            self.started = 0.0
            self.stopped_early = False
            self.epochs_this_call = 0

        def on_epoch_begin(self, epoch, logs=None):
            self.started = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            logs = logs or {}
            row = {
                "epoch": int(epoch),
                "loss": float(logs.get("loss", math.nan)),
                "accuracy": float(logs.get("accuracy", math.nan)),
                "val_loss": float(logs.get("val_loss", math.nan)),
                "val_accuracy": float(logs.get("val_accuracy", math.nan)),
                "lr": _learning_rate(self.model),
                "seconds": round(time.perf_counter() - self.started, 3),
            }
            self.rows.append(row)
            self.epochs_this_call += 1
            improved = math.isfinite(row["val_loss"]) and row["val_loss"] < patience.best
            stop = patience.update(row["epoch"], row["val_loss"])
            if write:
                # The backup generation is the commit; history and models are derived from it.
                commit(self.model, run_dir, self.rows)
                append_history(run_dir / "history.csv", row)
                if improved:
                    save_model(self.model, run_dir / "model.keras")
                save_model(self.model, run_dir / "last.keras")
            if collapse.update(row["loss"], row["accuracy"]):
                echo(collapse.message(row["loss"], row["accuracy"]))
            elif collapse.recovered:
                echo(
                    f"collapse over at epoch {human_epoch(row['epoch'], total)}: "
                    f"accuracy {row['accuracy']:.3f} "
                    f"is above the majority share {collapse.majority_share:.3f}"
                )
            if stop:
                self.stopped_early = True
                self.model.stop_training = True
                echo(
                    f"early stopping: val_loss has not improved for {patience.patience} epochs "
                    f"(best {patience.best:.4f} at epoch {human_epoch(patience.best_epoch, total)})"
                )

    return RunLog()


def _learning_rate(model) -> float:
    try:
        import keras

        return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))
    except Exception:  # noqa: BLE001 - a schedule or an unusual optimizer: leave it blank
        return math.nan


def save_model(model, path: Path) -> None:
    """``model.save`` through ``atomic_path``: a kill never leaves half a model."""
    with atomic_path(path) as tmp:
        model.save(tmp, overwrite=True)


FREEZE_MODES = ("none", "features", "all_but_head")


def freeze_layers(model, mode: str) -> list[str]:
    """Mark layers not trainable for fine-tuning; the names of the frozen weighted layers.

    ``none``: every layer trains. ``features``: the Conv2D layers (the feature extractor) are
    frozen, the dense layers train. ``all_but_head``: only the last (output) layer trains.
    Call before ``compile``.
    """
    import keras

    if mode not in FREEZE_MODES:
        raise ConfigError(f"train.freeze: '{mode}' is not one of {', '.join(FREEZE_MODES)}")
    layers = list(model.layers)
    if mode == "features":
        chosen = [layer for layer in layers if isinstance(layer, keras.layers.Conv2D)]
    elif mode == "all_but_head":
        chosen = layers[:-1]
    else:
        chosen = []
    for layer in chosen:
        layer.trainable = False
    return [layer.name for layer in chosen if layer.weights]


def clear_session() -> None:
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
