"""Finding and loading a trained run: the model plus the settings it was trained with.

A run folder (written by ``wbc train``) holds ``model.keras`` (best epoch), ``config.yaml`` (the
resolved config: image size, crop mode) and ``classes.json`` (class names in output order).
``load_run`` reads all three (and ``stain_reference.json`` when ``color.normalize`` is set), so
prediction preprocesses new images exactly like the training images, and refuses model files
that carry code: a ``.keras`` file with a ``Lambda`` layer could run anything on load, so it is
rejected before Keras sees it (and Keras runs in ``safe_mode``).
"""

from __future__ import annotations

import json
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Optional

from wbc.config import Config, config_from_dict, read_yaml
from wbc.errors import ConfigError, ModelError
from wbc.preprocess import InputSpec

MODEL_NAME = "model.keras"
CONFIG_NAME = "config.yaml"
CLASSES_NAME = "classes.json"
# Layers whose config carries Python code (bytecode or a function reference).
CODE_LAYERS = ("Lambda",)


@dataclass(frozen=True)
class Run:
    """A loaded trained model and what is needed to feed it."""

    model_path: Path
    model: Any  # keras.Model
    classes: tuple[str, ...]
    spec: InputSpec
    config: Config

    @property
    def run_dir(self) -> Path:
        return self.model_path.parent

    @property
    def crop_size(self) -> int:
        """Side of the square crops the training images were cut to (when crop.mode != none)."""
        return self.config.crop.size


def latest_model(runs_dir: Path | str = "runs") -> Path:
    """The newest run's ``model.keras`` under ``runs_dir`` (most recently saved model).

    Runs whose model was never saved (killed before the first epoch ended) are skipped. Ties on
    the modification time are broken by the folder name (``<timestamp>-<subset>`` sorts by time).
    """
    runs_dir = Path(runs_dir)
    candidates: list[tuple[float, str, Path]] = []
    if runs_dir.is_dir():
        for child in runs_dir.iterdir():
            model = child / MODEL_NAME
            try:
                if child.is_dir() and model.is_file():
                    candidates.append((model.stat().st_mtime, child.name, model))
            except OSError:
                continue
    if not candidates:
        shown = f"{runs_dir}/" if not str(runs_dir).endswith("/") else str(runs_dir)
        raise ModelError(
            f"no trained model found under {shown}; run `wbc train` or pass --model"
        )
    return max(candidates)[2]


def resolve_model_path(model: Optional[Path | str], runs_dir: Path | str = "runs") -> Path:
    """``model`` as given (a run folder means its ``model.keras``), or the newest run's model."""
    if model is None:
        return latest_model(runs_dir)
    path = Path(model)
    if path.is_dir():
        path = path / MODEL_NAME
    return path


def _walk_configs(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_configs(value)


def _check_archive(path: Path) -> None:
    """Refuse files that are not ``.keras`` archives, and archives whose layers carry code."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder without {MODEL_NAME}")
    if path.suffix.lower() != ".keras":
        raise ModelError(f"{path}: not a .keras model file (expected the Keras 3 format)")
    try:
        if path.stat().st_size == 0:
            raise ModelError(f"{path}: empty model file (0 bytes)")
        if not zipfile.is_zipfile(path):
            raise ModelError(f"{path}: not a valid .keras model file (not a zip archive)")
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("config.json")
    except KeyError:
        raise ModelError(f"{path}: not a valid .keras model file (no config.json inside)") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read model file ({exc})") from None
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: not a valid .keras model file (bad config.json)") from None
    for node in _walk_configs(config):
        name = node.get("class_name")
        if name in CODE_LAYERS:
            raise ModelError(
                f"{path}: contains a {name} layer (arbitrary code); refusing to load it"
            )


def _read_classes(path: Path) -> tuple[str, ...]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing; a run folder needs {CLASSES_NAME} next to the model "
            "(written by `wbc train`)"
        ) from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ModelError(f"{path}: cannot read class names ({reason})") from None
    if isinstance(data, dict):  # also accept {"classes": [...]}
        data = data.get("classes")
    if (
        not isinstance(data, list)
        or not data
        or not all(isinstance(name, str) and name for name in data)
        or len(set(data)) != len(data)
    ):
        raise ModelError(f"{path}: expected a JSON list of distinct class names")
    return tuple(data)


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


def load_model_file(path: Path | str):
    """Load a ``.keras`` file safely (no code, ``safe_mode=True``, not compiled)."""
    path = Path(path)
    _check_archive(path)
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError, OSError, ...
        text = str(exc)
        if "safe_mode" in text or "arbitrary code" in text:
            raise ModelError(
                f"{path}: contains code (e.g. a Lambda layer, arbitrary code); refusing to load it"
            ) from None
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise ModelError(f"{path}: cannot load model ({reason})") from None


def load_run(model_path: Optional[Path | str] = None, runs_dir: Path | str = "runs") -> Run:
    """The model at ``model_path`` (or a run folder) with its ``config.yaml`` and ``classes.json``.

    ``model_path`` None: the newest run's model under ``runs_dir`` (``latest_model``).

    Raises a one-line ``ModelError`` naming the file when anything is missing, invalid, unsafe,
    or when the model does not match the run's config (input size, number of classes).
    """
    path = resolve_model_path(model_path, runs_dir)
    _check_archive(path)
    config = _read_config(path.parent / CONFIG_NAME)
    classes = _read_classes(path.parent / CLASSES_NAME)
    reference = None
    if config.color.normalize != "none":  # the stain reference computed from the training set
        from wbc.color import read_reference

        reference = read_reference(path.parent, config.color.normalize)
    model = load_model_file(path)
    spec = InputSpec.from_config(config, reference)
    try:
        input_shape = tuple(model.inputs[0].shape)
        output_units = int(model.outputs[0].shape[-1])
    except (AttributeError, IndexError, TypeError):
        raise ModelError(f"{path}: the model has no single image input and output") from None
    if len(input_shape) != 4 or tuple(input_shape[1:3]) != tuple(spec.image_size):
        raise ModelError(
            f"{path}: model input {input_shape[1:]} does not match train.image_size "
            f"{list(spec.image_size)} in {CONFIG_NAME}"
        )
    if input_shape[3] != 3:
        raise ModelError(f"{path}: model expects {input_shape[3]} channels, not RGB")
    if output_units != len(classes):
        raise ModelError(
            f"{path}: model has {output_units} outputs but {CLASSES_NAME} names {len(classes)} "
            "classes"
        )
    return Run(model_path=path, model=model, classes=classes, spec=spec, config=config)
