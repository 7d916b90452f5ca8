"""``wbc train``: fit a model (``model.family``) on a prepared subset, then score it on the test
side.

A run folder (default ``runs/<YYYYmmdd-HHMMSS>-<subset>``) holds:

- ``config.yaml``   the resolved config (overrides, subset and epochs included)
- ``classes.json``  the class order (sorted class folders of the training side)
- ``history.csv``   one row per finished epoch: epoch (0-based, as Keras' CSVLogger; the
                    progress bar's "Epoch 1/N" is epoch 0), loss, accuracy, val_loss,
                    val_accuracy, lr, seconds; appended as each epoch ends, so a killed run
                    keeps its history
- ``model.keras``   the model with the lowest val_loss so far; ``last.keras`` the latest epoch
                    (both written to a temporary file first and renamed, so a kill never leaves
                    half a model)
- ``backup/``       Keras ``BackupAndRestore`` state: ``wbc train --resume RUN_DIR`` continues
                    from the last finished epoch
- ``run.json``      where the data came from (so --resume finds it) and how the run was started
- ``stain_reference.json``  with ``color.normalize``: the training set's stain statistics
                    (``wbc.color``), read back by evaluate and predict
- ``metrics.json``, ``curves.png``, ``confusion_matrix.png``  written at the end
- ``MODEL_CARD.md``  what the model is for and not for, its data, metrics and limits
- ``tensorboard/``   Keras families: TensorBoard logs (scalars, confusion matrix per epoch)

As in the study, the validation data is the test side of the subset.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from wbc.config import Config, config_from_dict, dump_config, read_yaml
from wbc.errors import ConfigError, DataError, ModelError
from wbc.locks import holds_folder_lock
from wbc.manifest import atomic_path, sweep_temps, write_atomic, write_json
from wbc.plots import HISTORY_COLUMNS

STRATEGIES = ("default", "mirrored", "multiworker")
COLLAPSE_TOLERANCE = 0.02  # |loss - ln(n_classes)| below this counts as "stuck"
COLLAPSE_ACCURACY_MARGIN = 0.05  # accuracy at most the majority share plus this

Echo = Callable[[str], None]


# --------------------------------------------------------------------------- small pure helpers


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


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def read_history_rows(path: Path) -> list[dict[str, float]]:
    from wbc.plots import read_history

    return read_history(path) if Path(path).is_file() else []


def write_history_rows(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Rewrite ``history.csv`` whole (atomically): a resume rewrites it from the backup."""
    import io

    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(HISTORY_COLUMNS)
    for row in rows:
        writer.writerow([_cell(row.get(c)) for c in HISTORY_COLUMNS])
    write_atomic(path, buffer.getvalue())


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, int):
        return str(value)
    return f"{float(value):.6g}"


def _append_history(path: Path, row: dict[str, Any]) -> None:
    """One row at the end of ``history.csv``, flushed to disk. A kill mid-row is mended on
    resume: the file is rewritten from the backup's committed rows."""
    new = not Path(path).is_file() or Path(path).stat().st_size == 0
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        if new:
            writer.writerow(HISTORY_COLUMNS)
        writer.writerow([_cell(row.get(c)) for c in HISTORY_COLUMNS])
        handle.flush()
        os.fsync(handle.fileno())


# --------------------------------------------------------------------------- run folder


def default_run_dir(subset: str, root: Path = Path("runs")) -> Path:
    """``runs/<YYYYmmdd-HHMMSS>-<subset>``, with -2, -3, ... if that folder exists already."""
    base = Path(root) / f"{datetime.now():%Y%m%d-%H%M%S}-{subset}"
    path, number = base, 1
    while path.exists():
        number += 1
        path = base.with_name(f"{base.name}-{number}")
    return path


def _with_prepared_crop(config: Config, data_dir: Path, echo) -> Config:
    """Record the crop the prepared images really had, so predict crops new images the same way."""
    import dataclasses

    from wbc.pipeline import prepared_crop

    found = prepared_crop(data_dir)
    if not found:
        return config
    crop = dataclasses.replace(config.crop, **found)
    if crop != config.crop:
        echo(
            f"note: the prepared images in {data_dir} were made with crop.mode={crop.mode}; "
            "the run records that (not the config's crop.mode={config.crop.mode})"
        )
        config = dataclasses.replace(config, crop=crop)
    return config


def read_run_config(run_dir: Path) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(f"{run_dir}: not a run folder (no config.yaml); cannot resume it")
    return config_from_dict(read_yaml(path), str(path))


def backup_epoch(run_dir: Path) -> int:
    """How many epochs the run's ``backup/`` holds as finished (0 when there is none)."""
    from wbc.models.checkpoint import latest

    generation = latest(run_dir)
    return generation.epochs if generation else 0


def recorded_data_dir(run_dir: Path) -> Optional[Path]:
    """The data folder a run was trained from (``run.json``), if it still exists."""
    try:
        info = json.loads((Path(run_dir) / "run.json").read_text(encoding="utf-8"))
        path = Path(info["data_dir"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return path if path.is_dir() else None


def _write_run_info(run_dir: Path, data_dir: Path, strategy: str, resuming: bool) -> None:
    from wbc import __version__

    path = Path(run_dir) / "run.json"
    info: dict[str, Any] = {}
    if resuming and path.is_file():
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            info = {}
    info.setdefault("started", datetime.now().isoformat(timespec="seconds"))
    info.update(data_dir=str(Path(data_dir).resolve()), strategy=strategy, wbc=__version__)
    if resuming:
        info["resumed"] = info.get("resumed", 0) + 1
    write_json(path, info)


def has_progress(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a run with at least one finished epoch (never overwritten)."""
    run_dir = Path(run_dir)
    from wbc.models import model_files

    return (
        backup_epoch(run_dir) > 0
        or any((run_dir / f).exists() for f in model_files())
        or bool(read_history_rows(run_dir / "history.csv"))
    )


def finished_run(run_dir: Path, what: str, echo: Optional[Echo] = None) -> bool:
    """True when ``run_dir`` holds a finished run (a readable ``metrics.json``, written last).
    An unreadable one is removed, with a line saying that ``what`` is trained again."""
    path = Path(run_dir) / "metrics.json"
    if not path.is_file():
        return False
    try:
        json.loads(path.read_text(encoding="utf-8"))
        return True
    except (OSError, ValueError, UnicodeDecodeError):
        if echo is not None:
            echo(f"warning: {path}: unreadable; training {what} again")
        path.unlink(missing_ok=True)
        return False


def subset_folders(data_dir: Path, subset: str) -> tuple[Path, Path]:
    base = Path(data_dir) / "processed" / subset
    train_dir, test_dir = base / "train", base / "test"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: not found; run `wbc prepare` first (or check --data-dir)")
    return train_dir, test_dir


# --------------------------------------------------------------------------- distribution


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


# --------------------------------------------------------------------------- callbacks


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
                _append_history(run_dir / "history.csv", row)
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


# --------------------------------------------------------------------------- train


def resolve_config(config: Config, subset: Optional[str], epochs: Optional[int]) -> Config:
    train_cfg = config.train
    if subset is not None:
        train_cfg = dataclasses.replace(train_cfg, subset=subset)
    if epochs is not None:
        train_cfg = dataclasses.replace(train_cfg, epochs=int(epochs))
    return dataclasses.replace(config, train=train_cfg)


@holds_folder_lock("training", "resume_dir", "run_dir", when=is_chief)
def train(
    config: Config,
    data_dir: Optional[Path] = None,
    subset: Optional[str] = None,
    epochs: Optional[int] = None,
    run_dir: Optional[Path] = None,
    resume_dir: Optional[Path] = None,
    strategy: str = "default",
    init_model: Optional[Path] = None,
    echo: Echo = print,
    callbacks: Sequence[Any] = (),
    folders: Optional[tuple[Path, Path]] = None,
) -> Path:
    """Train on ``data_dir/processed/<subset>/train``, validate and test on ``.../test``.

    ``data_dir`` None: ``data`` (on resume: the data folder the run recorded in run.json).
    ``resume_dir``: continue that run from its last finished epoch; its ``config.yaml`` is used
    (``epochs`` may raise the total). ``init_model``: start from a trained model's weights (same
    architecture). ``callbacks``: extra Keras callbacks (tests use them). ``folders``: explicit
    ``(train_dir, test_dir)`` class folders instead of the subset's (``wbc cv`` folds). Returns
    the run folder.
    """
    wall_start = time.perf_counter()
    if strategy not in STRATEGIES:
        raise ConfigError(
            f"--strategy: unknown strategy '{strategy}' (use {', '.join(STRATEGIES)})"
        )
    resuming = resume_dir is not None
    if resuming:
        run_dir = Path(resume_dir)
        saved = read_run_config(run_dir)
        if subset is not None and subset != saved.train.subset:
            raise ConfigError(
                f"{run_dir}: this run trains on subset '{saved.train.subset}', not '{subset}'"
            )
        config = resolve_config(saved, None, epochs)
        if data_dir is None:
            data_dir = recorded_data_dir(run_dir)
    else:
        config = resolve_config(config, subset, epochs)
    data_dir = Path("data") if data_dir is None else Path(data_dir)
    if not resuming and folders is None:
        config = _with_prepared_crop(config, data_dir, echo)
    tc = config.train
    subset = tc.subset
    if folders is None:
        train_dir, test_dir = subset_folders(data_dir, subset)
    else:
        train_dir, test_dir = Path(folders[0]), Path(folders[1])
    if run_dir is None:
        run_dir = default_run_dir(subset)
    run_dir = Path(run_dir)
    sweep_temps(run_dir, recursive=True)  # what a killed run of this folder left half-written
    if tc.freeze != "none" and init_model is None and not resuming:
        raise ConfigError(
            f"train.freeze {tc.freeze}: freezing layers is for fine-tuning; "
            "give the trained model to start from with --init MODEL.keras"
        )
    if not resuming and has_progress(run_dir):
        raise DataError(
            f"{run_dir}: already holds a run; continue it with --resume {run_dir} "
            "or choose another --run-dir"
        )

    from wbc import evaluate as ev
    from wbc.color import run_reference
    from wbc.models import FitJob, family_for
    from wbc.preprocess import InputSpec

    family = family_for(config)
    chief = is_chief()
    out_dir = run_dir if chief else Path(_worker_dir(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    if chief:  # first, so that a run killed while loading its data can still be resumed
        dump_config(config, out_dir / "config.yaml")
        _write_run_info(out_dir, data_dir, strategy, resuming)

    # Colour: color.normalize's stain reference comes from the training images and goes into
    # the run folder (evaluate and predict read it back); color.input applies to both sides.
    inherited = _inherit_stain_reference(config, init_model, out_dir, echo)
    spec = InputSpec.from_config(
        config, run_reference(config, train_dir, out_dir, reuse=resuming or inherited, echo=echo)
    )
    fitted = family.fit(
        FitJob(
            config=config,
            train_dir=train_dir,
            test_dir=test_dir,
            run_dir=out_dir,
            spec=spec,
            echo=echo,
            resuming=resuming,
            init_model=Path(init_model) if init_model else None,
            strategy=strategy,
            callbacks=callbacks,
        )
    )
    if not chief:
        return run_dir
    _write_domain(config, train_dir, out_dir, spec, echo)

    # Score the model on the test side; draw the curves and the confusion matrix.
    history_path = out_dir / "history.csv"
    metrics = ev.evaluate(out_dir / fitted.model_file, test_dir, echo=echo)
    wall = time.perf_counter() - wall_start
    metrics.update(
        subset=subset,
        family=family.name,
        evaluated_model=fitted.model_file,
        last_model=fitted.last_file,
        epochs_run=len(fitted.history),
        epochs_planned=tc.epochs,
        **{
            "best_epoch": None,
            "best_val_loss": None,
            "stopped_early": False,
            "collapsed": False,
            "collapse_warned": False,
            "feed": None,
            **fitted.facts,
        },
        strategy=strategy,
        train_images=fitted.n_train,
        skipped_train_images=[{"path": b.path, "reason": b.reason} for b in fitted.skipped],
        wall_seconds=round(wall, 1),
    )
    from wbc.plots import plot_confusion, plot_history

    if fitted.history:
        plot_history(history_path, out_dir / "curves.png", title=f"{run_dir.name}")
    plot_confusion(
        metrics["confusion_matrix"],
        fitted.classes,
        out_dir / "confusion_matrix.png",
        title=f"{run_dir.name}: test side",
    )
    from wbc.card import write_run_card
    from wbc.tensorboard import write_test_summary

    write_test_summary(out_dir, metrics, step=len(fitted.history))
    write_run_card(out_dir, metrics=metrics)
    # Last: wbc cv and tune take a run with metrics.json as finished.
    ev.write_metrics(metrics, out_dir / "metrics.json")
    echo(
        f"done: {fitted.done} in {format_seconds(wall)}{fitted.notes} ({family.name}); "
        f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['n_images']} images; run folder {run_dir}"
    )
    return run_dir


def _inherit_stain_reference(
    config: Config, init_model: Optional[Path], run_dir: Path, echo: Echo
) -> bool:
    """Fine-tuning keeps the model's input: with ``color.normalize``, the run adopts the
    ``stain_reference.json`` of the model it starts from, so the lab's images are mapped to the
    stain the model learnt (not to the lab's own). True when one was adopted."""
    from wbc.color import REFERENCE_NAME

    if init_model is None or config.color.normalize == "none":
        return False
    source = Path(init_model).parent / REFERENCE_NAME
    target = Path(run_dir) / REFERENCE_NAME
    if not source.is_file() or target.is_file():
        return target.is_file()
    write_atomic(target, source.read_bytes())
    echo(f"stain reference from {source} (the model being adapted)")
    return True


def _write_domain(config: Config, train_dir: Path, run_dir: Path, spec, echo: Echo) -> None:
    """``domain.json``: the training images' stain statistics, for the out-of-domain flag of
    predict (``wbc.domain``), measured on the inputs the model sees."""
    from wbc.domain import training_reference, write_reference
    from wbc.feeds import list_class_files
    from wbc.preprocess import load_resized

    _, files, _ = list_class_files(Path(train_dir))
    reference = training_reference(
        files, lambda p: load_resized(p, spec.image_size, spec), config.seed
    )
    write_reference(reference, run_dir)
    echo(
        f"stain reference of {reference.images} training images: out of domain beyond "
        f"distance {reference.threshold:.2f}"
    )


def _worker_dir(run_dir: Path) -> str:
    import tempfile

    return tempfile.mkdtemp(prefix=f"wbc-worker-{Path(run_dir).name}-")


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


def load_initial_weights(model, path: Path) -> None:
    from wbc.models.keras_family import load_model_file

    source = load_model_file(path)
    try:
        model.set_weights(source.get_weights())
    except ValueError as exc:
        reason = str(exc).split("\n")[0][:200]
        raise ModelError(
            f"{path}: its weights do not fit this model's architecture "
            f"(model.* or train.image_size differ?): {reason}"
        ) from None
