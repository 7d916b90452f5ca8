"""Finding and loading a trained run: the model plus the settings it was trained with.

A run folder (written by ``wbc train``) holds the model file of its family (``model.keras``,
``model.skops`` or ``ensemble.json``), ``config.yaml`` (the resolved config: family, input size,
crop mode) and ``classes.json`` (class names in output order). ``load_run`` reads all three (and
``stain_reference.json`` when ``color.normalize`` maps to one: reinhard, macenko), so prediction
preprocesses new images exactly like the training images. The family loads the file safely: a
``.keras`` file with a ``Lambda`` layer (code) is refused before Keras sees it, and Keras runs in
``safe_mode``; a ``.skops`` file is refused unless every type in it is on the features family's
trusted list.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from wbc.core.config import Config, config_from_dict, read_yaml
from wbc.core.errors import ConfigError, ModelError
from wbc.core.runfolder import read_classes
from wbc.imaging.preprocess import InputSpec

MODEL_NAME = "model.keras"
CONFIG_NAME = "config.yaml"
CLASSES_NAME = "classes.json"
# What a copy of a run (wbc adapt's new run, an adapted ensemble's members) keeps as it is
# beside its model file: load_run reads the first three, wbc train --init the last.
RUN_DEFINITION_FILES = (CONFIG_NAME, CLASSES_NAME, "stain_reference.json", "train_features.npz")


@dataclass(frozen=True)
class Run:
    """A loaded trained model and what is needed to feed it."""

    model_path: Path
    model: Any  # a wbc.models.Classifier: probabilities (engine) and explanations
    classes: tuple[str, ...]
    spec: InputSpec
    config: Config
    domain: Any = (
        None  # wbc.imaging.domain.DomainReference of the training images (None: older run)
    )

    @property
    def run_dir(self) -> Path:
        return self.model_path.parent

    @property
    def crop_size(self) -> int:
        """Side of the square crops the training images were cut to (when crop.mode != none)."""
        return self.config.crop.size


def _model_in(folder: Path) -> Optional[Path]:
    """The model file of a run folder (``model.keras``, ``model.skops`` or ``ensemble.json``)."""
    from wbc.models.registry import model_files

    for name in model_files():
        if (folder / name).is_file():
            return folder / name
    return None


def latest_model(runs_dir: Path | str = "runs") -> Path:
    """The newest run's model file under ``runs_dir`` (most recently saved model).

    Runs whose model was never saved (killed before the first epoch ended) are skipped. Ties on
    the modification time are broken by the folder name (``<timestamp>-<subset>`` sorts by time).
    """
    runs_dir = Path(runs_dir)
    candidates: list[tuple[float, str, Path]] = []
    if runs_dir.is_dir():
        for child in runs_dir.iterdir():
            try:
                model = _model_in(child) if child.is_dir() else None
                if model is not None:
                    candidates.append((model.stat().st_mtime, child.name, model))
            except OSError:
                continue
    if not candidates:
        shown = f"{runs_dir}/" if not str(runs_dir).endswith("/") else str(runs_dir)
        raise ModelError(f"no trained model found under {shown}; run `wbc train` or pass --model")
    return max(candidates)[2]


def resolve_model_path(model: Optional[Path | str], runs_dir: Path | str = "runs") -> Path:
    """``model`` as given (a run folder means its model file), or the newest run's model."""
    if model is None:
        return latest_model(runs_dir)
    path = Path(model)
    if path.is_dir():
        path = _model_in(path) or path / MODEL_NAME
    return path


def _read_config(path: Path) -> Config:
    if not path.is_file():
        raise ModelError(
            f"{path}: missing; a run folder needs {CONFIG_NAME} next to the model "
            "(written by `wbc train`)"
        )
    try:
        return config_from_dict(read_yaml(path), str(path))
    except ConfigError as exc:
        raise ModelError(str(exc)) from None


def load_run(model_path: Optional[Path | str] = None, runs_dir: Path | str = "runs") -> Run:
    """The model at ``model_path`` (or a run folder) with its ``config.yaml`` and ``classes.json``.

    ``model_path`` None: the newest run's model under ``runs_dir`` (``latest_model``). The
    run's ``model.family`` (``wbc.models.family_for``) loads the file, safely.

    Raises a one-line ``ModelError`` naming the file when anything is missing, invalid, unsafe,
    or when the model does not match the run's config (input size, number of classes).
    """
    from wbc.models.registry import check_model_file, family_for

    path = resolve_model_path(model_path, runs_dir)
    check_model_file(path)
    config = _read_config(path.parent / CONFIG_NAME)
    family = family_for(config)
    expected = family.model_file
    if path.suffix.lower() != Path(expected).suffix and path.name != expected:
        raise ModelError(
            f"{path}: not a {Path(expected).suffix} model file (the run's "
            f"config.yaml names a {family.name} model: {expected})"
        )
    classes = tuple(read_classes(path.parent / CLASSES_NAME))
    reference = None
    from wbc.imaging.color import MAPPED, read_reference

    if config.color.normalize in MAPPED:  # the stain reference computed from the training set
        reference = read_reference(path.parent, config.color.normalize)
    classifier = family.load(path, classes)
    from wbc.models.adaptation import AdaptedClassifier, read_correction

    correction = read_correction(path.parent, len(classes))
    if correction is not None:  # an adapted run (wbc adapt): every output is corrected
        classifier = AdaptedClassifier(classifier, correction)
    spec = InputSpec.from_config(config, reference, image_size=family.input_size())
    from wbc.imaging.domain import read_reference as read_domain

    return Run(
        model_path=path,
        model=classifier,
        classes=classes,
        spec=spec,
        config=config,
        domain=read_domain(path.parent),
    )
