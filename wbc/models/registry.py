"""The model families, by name: each family module registers its class with
``@register_family`` (as timm's ``register_model``), and everything else asks this registry:
``family_for(config)`` (the only place a config is mapped to its family), the config's
``model.family`` choices, the model card's words, the export's needed modules, the model file
names a run folder may hold. Adding a family is one new module imported by ``wbc.models``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from wbc.core import config as config_module
from wbc.core.config import Config
from wbc.core.errors import ConfigError, ModelError

_FAMILIES: dict[str, type] = {}
ENSEMBLE = "ensemble"


def register_family(cls: type) -> type:
    """Class decorator: make ``cls`` (a ``wbc.models.base.Family``) known by ``cls.name``.
    A family that can be chosen with ``model.family`` (every one but the ensemble) becomes one
    of that key's choices."""
    _FAMILIES[cls.name] = cls
    if cls.name != ENSEMBLE:
        config_module.register_choice("model.family", cls.name)
    return cls


def family_names() -> tuple[str, ...]:
    """The names ``model.family`` and ``model.ensemble`` take."""
    return tuple(name for name in _FAMILIES if name != ENSEMBLE)


def family_class(name: str) -> type:
    try:
        return _FAMILIES[name]
    except KeyError:
        raise ConfigError(
            f"model.family: unknown family '{name}' (one of {', '.join(family_names())})"
        ) from None


def family_for(config: Config) -> Any:
    """The family that trains and loads models of ``config`` (an ensemble when
    ``model.ensemble`` names members)."""
    if config.model.ensemble:
        return family_class(ENSEMBLE)(config)
    return family_class(config.model.family)(config)


def model_files() -> tuple[str, ...]:
    """The model file names a run folder may hold, in the order they are looked for."""
    return tuple(dict.fromkeys(cls.model_file for cls in _FAMILIES.values()))


def check_model_file(path) -> None:
    """Refuse a file that no family could load (missing, empty, not its format, unsafe) with a
    one-line ``ModelError``, before anything else of its run folder is read. The file's suffix
    names the family whose check applies."""
    path = Path(path)
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder without a model file")
    suffix = path.suffix.lower()
    for cls in _FAMILIES.values():
        if Path(cls.model_file).suffix == suffix:
            cls.check_file(path)
            return
    raise ModelError(f"{path}: not a model file (expected {', '.join(model_files())})")


def describe(name: str) -> str:
    """A family's one-line description (the model card's words)."""
    cls = _FAMILIES.get(name)
    return getattr(cls, "description", name) if cls else name


def export_modules(name: str, fmt: str) -> tuple[str, ...]:
    """The Python modules a family's exporter to ``fmt`` needs besides the format's own."""
    cls = _FAMILIES.get(name)
    return tuple(getattr(cls, "export_modules", {}).get(fmt, ())) if cls else ()
