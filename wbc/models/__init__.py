"""Model families behind one interface (``wbc.models.base``): pick one with ``model.family``.

- ``study``: the study's CNN, exactly (``study.py``);
- ``cnn``: a small residual CNN trained from scratch (``cnn.py``);
- ``features``: nucleus and cell measurements + an SVM or gradient boosting (``features.py``);
- ``model.ensemble``: the average of several of them (``ensemble.py``).

Each family registers itself (``wbc.models.registry``); importing this package imports them all,
so that the registry knows every family. ``family_for(config)`` is the only place that maps a
config to its family.
"""

from __future__ import annotations

from wbc.models import cnn, ensemble, features, study  # noqa: F401 - each registers its family
from wbc.models.base import Classifier, Engine, Family, FitJob, FitResult
from wbc.models.registry import check_model_file, family_for, family_names, model_files

__all__ = [
    "check_model_file",
    "Classifier",
    "Engine",
    "Family",
    "FitJob",
    "FitResult",
    "family_for",
    "family_names",
    "model_files",
]
