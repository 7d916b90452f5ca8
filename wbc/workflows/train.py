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
                    (``wbc.imaging.color``), read back by evaluate and predict
- ``metrics.json``, ``curves.png``, ``confusion_matrix.png``  written at the end
- ``MODEL_CARD.md``  what the model is for and not for, its data, metrics and limits
- ``tensorboard/``   Keras families: TensorBoard logs (scalars, confusion matrix per epoch)

As in the study, the validation data is the test side of the subset.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config, read_yaml
from wbc.core.errors import ConfigError, DataError
from wbc.core.locks import holds_folder_lock
from wbc.core.manifest import sweep_temps, write_atomic
from wbc.core.runfolder import (
    CONFIG_NAME,
    read_run_config,
    recorded_data_dir,
    write_metrics,
    write_run_config,
    write_run_info,
)
from wbc.models.checkpoint import has_progress
from wbc.models.training import STRATEGIES, is_chief

Echo = Callable[[str], None]


# --------------------------------------------------------------------------- small pure helpers


def format_seconds(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


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

    from wbc.data.pipeline import prepared_crop

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


def subset_folders(data_dir: Path, subset: str) -> tuple[Path, Path]:
    base = Path(data_dir) / "processed" / subset
    train_dir, test_dir = base / "train", base / "test"
    for folder in (train_dir, test_dir):
        if not folder.is_dir():
            raise DataError(f"{folder}: not found; run `wbc prepare` first (or check --data-dir)")
    return train_dir, test_dir


# --------------------------------------------------------------------------- distribution


# --------------------------------------------------------------------------- callbacks


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
    if init_model is not None:
        _require_same_colour_steps(config, Path(init_model))

    from wbc.imaging.feeds import run_reference
    from wbc.imaging.preprocess import InputSpec
    from wbc.models import FitJob, family_for
    from wbc.workflows import evaluate as ev

    family = family_for(config)
    chief = is_chief()
    out_dir = run_dir if chief else Path(_worker_dir(run_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    if chief:  # first, so that a run killed while loading its data can still be resumed
        # run.json (where the data is) before config.yaml, which makes the folder a run:
        # a kill between the two leaves no run that --resume cannot find the data of.
        write_run_info(
            out_dir, data_dir, strategy, resuming, _origin(data_dir, folders, init_model)
        )
        write_run_config(config, out_dir)

    # Colour: color.normalize's stain reference comes from the training images and goes into
    # the run folder (evaluate and predict read it back); color.input applies to both sides.
    inherited = _inherit_stain_reference(config, init_model, out_dir, echo)
    reference = run_reference(config, train_dir, out_dir, reuse=resuming or inherited, echo=echo)
    spec = InputSpec.from_config(config, reference, image_size=family.input_size())
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
            train_run=train,
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
    from wbc.core.plots import plot_confusion, plot_history

    if fitted.history:
        plot_history(history_path, out_dir / "curves.png", title=f"{run_dir.name}")
    plot_confusion(
        metrics["confusion_matrix"],
        fitted.classes,
        out_dir / "confusion_matrix.png",
        title=f"{run_dir.name}: test side",
    )
    from wbc.models.tensorboard import write_test_summary
    from wbc.workflows.card import write_run_card

    write_test_summary(out_dir, metrics, step=len(fitted.history))
    write_run_card(out_dir, metrics=metrics)
    # Last: wbc cv and tune take a run with metrics.json as finished.
    write_metrics(metrics, out_dir / "metrics.json")
    echo(
        f"done: {fitted.done} in {format_seconds(wall)}{fitted.notes} ({family.name}); "
        f"test accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f} "
        f"on {metrics['n_images']} images; run folder {run_dir}"
    )
    return run_dir


def _origin(data_dir: Path, folders, init_model: Optional[Path]) -> dict:
    """What run.json and the model card say the run learnt from: the prepared data's raw
    layout, and for an adapted run the run it started from."""
    from wbc.core.runfolder import read_run_info
    from wbc.data.pipeline import data_origin

    origin: dict = {}
    if folders is None:
        origin["data"] = data_origin(data_dir)
    if init_model is not None:
        start = Path(init_model).resolve()
        origin["adapted_from"] = {
            "run": str(start.parent),
            "model": start.name,
            "data": read_run_info(start.parent).get("data"),
        }
    return origin


def _require_same_colour_steps(config: Config, init_model: Path) -> None:
    """A model fine-tuned (``--init``) sees the lab's images as it saw its training images: a
    run trained with another ``color.normalize`` or ``color.input`` (say an older run with
    ``reinhard``, before ``balance`` became the default) stops with one line, naming the
    setting to give."""
    try:
        written = read_yaml(init_model.parent / CONFIG_NAME)
    except ConfigError:
        return  # no readable config beside the model: the model file's own checks speak
    colour = written.get("color")
    if not isinstance(colour, dict):
        return
    for key in ("normalize", "input"):
        trained_with, asked = colour.get(key), getattr(config.color, key)
        if trained_with is not None and trained_with != asked:
            raise ConfigError(
                f"{init_model}: trained with color.{key} {trained_with}, not {asked}; "
                f"adapt it with --set color.{key}={trained_with}"
            )


def _inherit_stain_reference(
    config: Config, init_model: Optional[Path], run_dir: Path, echo: Echo
) -> bool:
    """Fine-tuning keeps the model's input: with ``color.normalize``, the run adopts the
    ``stain_reference.json`` of the model it starts from, so the lab's images are mapped to the
    stain the model learnt (not to the lab's own). True when one was adopted."""
    from wbc.imaging.color import MAPPED, REFERENCE_NAME

    if init_model is None or config.color.normalize not in MAPPED:
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
    predict (``wbc.imaging.domain``), measured on the inputs the model sees."""
    from wbc.imaging.domain import training_reference, write_reference
    from wbc.imaging.feeds import list_class_files
    from wbc.imaging.preprocess import load_resized

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
