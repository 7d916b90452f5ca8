"""Model families behind one interface (``wbc.models.base``): pick one with ``model.family``.

- ``study``: the study's CNN, exactly (``study.py``);
- ``cnn``: a small residual CNN trained from scratch (``cnn.py``);
- ``features``: nucleus and cell measurements + an SVM or gradient boosting (``features.py``);
- ``model.ensemble``: the average of several of them (``ensemble.py``).

``family_for(config)`` is the only place that maps a config to its family.
"""

from __future__ import annotations

from wbc.config import Config
from wbc.models.base import Classifier, Engine, Family, FitJob, FitResult


def _families() -> dict[str, type[Family]]:
    from wbc.models.cnn import CnnFamily
    from wbc.models.features import FeaturesFamily
    from wbc.models.study import StudyFamily

    return {family.name: family for family in (StudyFamily, CnnFamily, FeaturesFamily)}


def family_for(config: Config) -> Family:
    """The family that trains and loads models of ``config`` (an ensemble when
    ``model.ensemble`` names members)."""
    if config.model.ensemble:
        from wbc.models.ensemble import EnsembleFamily

        return EnsembleFamily(config)
    return _families()[config.model.family](config)


def model_files() -> tuple[str, ...]:
    """The model file names a run folder may hold, in the order they are looked for."""
    from wbc.models.ensemble import ENSEMBLE_FILE

    return ("model.keras", "model.skops", ENSEMBLE_FILE)


def check_model_file(path) -> None:
    """Refuse a file that no family could load (missing, empty, not its format, unsafe) with a
    one-line ``ModelError``, before anything else of its run folder is read. The file's suffix
    names the family whose check applies."""
    from pathlib import Path

    from wbc.errors import ModelError
    from wbc.models.ensemble import EnsembleFamily
    from wbc.models.keras_family import KerasFamily

    path = Path(path)
    checks = {".keras": KerasFamily.check_file, ".json": EnsembleFamily.check_file}
    checks[".skops"] = _families()["features"].check_file
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder without a model file")
    check = checks.get(path.suffix.lower())
    if check is None:
        raise ModelError(f"{path}: not a model file (expected {', '.join(model_files())})")
    check(path)


__all__ = [
    "check_model_file",
    "Classifier",
    "Engine",
    "Family",
    "FitJob",
    "FitResult",
    "family_for",
    "model_files",
]
