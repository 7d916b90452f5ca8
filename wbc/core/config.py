"""Configuration: frozen dataclasses loaded from ``configs/*.yaml`` plus ``--set`` overrides.

Every key has a default here, so a YAML file only needs the keys it changes. Unknown keys are
errors with a close-match hint, because a typo (``augment.per_clas``) would otherwise silently
train with the default and waste an afternoon.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from wbc.core.errors import ConfigError

CLASSES = ("NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE")


class FrozenMap(dict):
    """A read-only dict that hashes: the value of a ``dict[str, int]`` key in a frozen config."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(tuple(sorted(self.items())))

    def __reduce__(self):  # pickles (to augment workers) without calling __setitem__
        return (FrozenMap, (dict(self),))

    def _read_only(self, *args, **kwargs):
        raise TypeError("config values are read-only")

    __setitem__ = __delitem__ = __ior__ = _read_only  # type: ignore[assignment]
    clear = pop = popitem = setdefault = update = _read_only  # type: ignore[assignment]


@dataclass(frozen=True)
class RenameConfig:
    # Which classes to keep, in this order; empty = the data's own: every class found in a
    # lab's folders or CSV, the study's four for dataset-master (basophil is too rare there).
    classes: tuple[str, ...] = ()
    find_duplicates: bool = True  # detect same-field image pairs (needs OpenCV matching)
    duplicate_min_inliers: int = 5  # RANSAC inliers (with the overlap-correlation check)
    # A lab's CSV: the columns naming the file, its label and (optional) its patient, slide or
    # smear; '' = the usual names (file/filename/path/image, label/class/category, group/...).
    file_column: str = ""
    label_column: str = ""
    group_column: str = ""
    # Class folders: CLASS/SUBFOLDER/*.jpg, the sub-folder is the image's group (a patient or a
    # slide), so that the split never puts one patient's cells on both sides.
    group_by_subfolder: bool = False


@dataclass(frozen=True)
class CropConfig:
    mode: str = "detect"  # none | boxes | detect (the default: predict can repeat it on smears)
    padding: float = 0.15  # extra margin around the cell, as a fraction of the box side
    size: int = 256  # side in pixels of the saved square crop


@dataclass(frozen=True)
class AugmentConfig:
    per_class: int = 3000
    rotation_range: float = 180.0
    width_shift_range: float = 0.1
    height_shift_range: float = 0.1
    shear_range: float = 0.15
    zoom_range: float = 0.0
    horizontal_flip: bool = True
    vertical_flip: bool = True
    fill_mode: str = "nearest"
    engine: str = "opencv"  # opencv (the study's transforms, ~10x faster) | imagedatagenerator
    workers: int = 0  # 0 = all cores
    jpeg_quality: int = 95
    # CLASS -> images after augmentation for that class (others: per_class); empty = per_class
    per_class_targets: dict[str, int] = field(default_factory=FrozenMap)


@dataclass(frozen=True)
class ColorConfig:
    # Training colour jitter (tf.data, training batches only; 0 = off), per image, uniform:
    brightness: float = 0.0  # add U(-b, b) to the pixels (scaled to [0, 1])
    contrast: float = 0.0  # contrast factor U(1-c, 1+c) around each channel's mean
    saturation: float = 0.0  # saturation factor U(1-s, 1+s)
    hue: float = 0.0  # hue shift U(-h, h), in turns (0.5 = half the colour circle)
    input: str = "rgb"  # rgb | gray | hematoxylin: what the model sees (train, evaluate, predict)
    # none | reinhard | macenko: stain normalisation to the training set;
    # balance: each image against its own background colour only
    normalize: str = "balance"
    # Stain augmentation of the offline training copies (augment stage, every family; 0 = off):
    hed_jitter: float = 0.0  # scale each stain concentration by U(1-s, 1+s) (Tellez 2019)
    hed_shift: float = 0.0  # and shift it by U(-b, b) (skimage>=0.18 rgb2hed units)
    randstainna: bool = False  # Reinhard-map each copy to a template drawn from the originals
    # zoom each copy by U(1-z, 1+z), both axes alike; 0.2 by default: the one stain-robustness
    # setting that helped on another lab without an in-domain cost (docs/RESULTS.md, issue 23)
    scale_jitter: float = 0.2
    # every optical density times one factor, log-uniform in [1/(1+s), 1+s]: a weaker or stronger
    # stain (Beer-Lambert), which white balance cannot undo
    stain_strength: float = 0.0


@dataclass(frozen=True)
class SplitConfig:
    protocol: str = "grouped"  # grouped | report
    test_fraction: float = 0.1


@dataclass(frozen=True)
class SubsetsConfig:
    small: int = 300
    medium: int = 900
    full: int = 3000
    train_fraction: float = 0.9


@dataclass(frozen=True)
class CnnConfig:
    """The ``cnn`` family: a small residual CNN trained from scratch (``wbc/models/cnn.py``)."""

    image_size: int = 64  # side of the square input (the crop resized)
    widths: tuple[int, ...] = (32, 64, 128)  # channels of each stage (one residual block each)
    blocks: int = 1  # residual blocks per stage
    normalization: str = "batch"  # batch | group
    learning_rate: float = 0.003  # AdamW peak rate, cosine decay to 0 over the epochs
    weight_decay: float = 0.0001  # AdamW decoupled weight decay
    warmup_epochs: int = 2  # linear warm-up of the rate
    label_smoothing: float = 0.1
    mixup: float = 0.0  # mixup alpha (0 = off)
    rotations: bool = True  # online random 90-degree rotations and flips (the 8 dihedral views)


@dataclass(frozen=True)
class FeaturesConfig:
    """The ``features`` family: nucleus and cell measurements + scikit-learn (``features.py``)."""

    classifier: str = "svm"  # svm (RBF) | boosting (histogram gradient boosting)
    # absolute | relative (against the whole cell) | optical (ratios of optical densities: a
    # stronger or weaker stain cancels) | none (shape only)
    colour: str = "absolute"
    # density (any stain: the densest optical-density level) | contrast (blue - red: one stain)
    nucleus: str = "density"
    svm_c: float = 10.0  # the SVM's C
    max_train: int = 1000  # at most this many training crops per class (seeded draw): the SVM
    # is quadratic in the number of samples, augmented copies are many


@dataclass(frozen=True)
class ModelConfig:
    family: str = "features"  # features | cnn | study: which model family (wbc/models/)
    ensemble: tuple[str, ...] = ()  # families to average, e.g. [cnn, cnn, features]; member i
    # trains with seed + i; empty = one model of model.family
    tta: bool = False  # average the 8 dihedral views (4 rotations x flip) of each input
    # the study family (its defaults = the study's final model, 96,308 parameters)
    filters: tuple[int, ...] = (8, 16, 16, 16)
    kernel_size: int = 3
    dense_units: int = 32
    l2: float = 0.01
    dropout: str = "none"  # none | 2_v2 | before_dense | after_dense
    dropout_rate: float = 0.3
    cnn: CnnConfig = field(default_factory=CnnConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)


@dataclass(frozen=True)
class TrainConfig:
    subset: str = "full"  # small | medium | full
    image_size: tuple[int, int] = (120, 160)  # height, width
    batch_size: int = 16
    epochs: int = 150
    steps_per_epoch: Union[str, int] = "auto"
    patience: Optional[int] = 20
    class_weight: str = "none"  # none | balanced
    optimizer: str = "rmsprop"  # rmsprop | adam | nadam
    learning_rate: float = 0.001
    feed: str = "tfdata"  # tfdata | imagedatagenerator
    cache: bool = True
    collapse_epochs: int = 3
    freeze: str = "none"  # with --init: none | features (conv layers frozen) | all_but_head
    random_flips: bool = False  # flip training images left-right / up-down at random, per epoch


@dataclass(frozen=True)
class FetchConfig:
    # Pinned public sources of the dataset-master layout; name a mirror here if needed.
    bccd_url: str = (
        "https://github.com/Shenggan/BCCD_Dataset/archive/"
        "d272fb14cdff6e473fafeeeba32aba5f560e9e43.zip"
    )
    bccd_sha256: str = ""  # optional: checked when set
    labels_url: str = (
        "https://raw.githubusercontent.com/dhruvp/wbc-classification/"
        "0b22eb2084b1004d464fb5ab87adc85ab94b2079/labels.csv"
    )
    labels_sha256: str = "2a11d215cade403d4fdb02b27b914c505bf59d4879b9b911fe97830b90c4e1a2"
    timeout: float = 60.0  # seconds without data before a download fails


@dataclass(frozen=True)
class Config:
    seed: int = 42
    rename: RenameConfig = field(default_factory=RenameConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    color: ColorConfig = field(default_factory=ColorConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    subsets: SubsetsConfig = field(default_factory=SubsetsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    fetch: FetchConfig = field(default_factory=FetchConfig)

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def section(self, name: str) -> Any:
        return getattr(self, name)


CHOICES: dict[str, tuple[Any, ...]] = {
    "crop.mode": ("none", "boxes", "detect"),
    "augment.engine": ("imagedatagenerator", "opencv"),
    "augment.fill_mode": ("nearest", "constant", "reflect", "wrap"),
    "split.protocol": ("grouped", "report"),
    "model.dropout": ("none", "2_v2", "before_dense", "after_dense"),
    # filled by wbc.models.registry as each family registers itself
    "model.family": (),
    "model.cnn.normalization": ("batch", "group"),
    "model.features.classifier": ("svm", "boosting"),
    "model.features.colour": ("absolute", "relative", "optical", "none"),
    "model.features.nucleus": ("density", "contrast"),
    "train.subset": ("small", "medium", "full"),
    "train.class_weight": ("none", "balanced"),
    "train.optimizer": ("rmsprop", "adam", "nadam"),
    "train.feed": ("tfdata", "imagedatagenerator"),
    "train.freeze": ("none", "features", "all_but_head"),
    "color.input": ("rgb", "gray", "hematoxylin"),
    "color.normalize": ("none", "reinhard", "macenko", "balance"),
}


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {key: _to_plain(v) for key, v in value.items()}
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def close_match_hint(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else f" (valid: {', '.join(sorted(valid))})"


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check and convert one YAML value to the dataclass field's type."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping of key: value, got {value!r}")
        return FrozenMap(
            (_coerce(k, args[0], where), _coerce(v, args[1], f"{where}.{k}"))
            for k, v in value.items()
        )
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], where) for v in value)
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_coerce(v, a, where) for v, a in zip(value, args))
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected an integer, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    raise ConfigError(f"{where}: unsupported type {annotation!r}")


def _build(cls: type, data: dict[str, Any], prefix: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key '{where}'" + close_match_hint(key, names))
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            if not isinstance(value, dict):
                raise ConfigError(f"{where}: expected a section of keys, got {value!r}")
            kwargs[key] = _build(annotation, value, f"{where}.")
        else:
            kwargs[key] = _coerce(value, annotation, where)
            choices = CHOICES.get(where)
            if choices and kwargs[key] not in choices:
                close = difflib.get_close_matches(
                    str(kwargs[key]), list(map(str, choices)), n=1, cutoff=0.6
                )
                raise ConfigError(
                    f"{where}: '{kwargs[key]}' is not one of {', '.join(map(str, choices))}"
                    + (f" (did you mean '{close[0]}'?)" if close else "")
                )
    return cls(**kwargs)


def register_choice(key: str, value: Any) -> None:
    """Add ``value`` to the values ``key`` accepts (the model registry names its families)."""
    if value not in CHOICES.get(key, ()):
        CHOICES[key] = (*CHOICES.get(key, ()), value)


def _validate(config: Config) -> None:
    checks = [
        (config.augment.per_class >= 1, "augment.per_class must be at least 1"),
        (config.augment.workers >= 0, "augment.workers must be 0 (all cores) or more"),
        (0 < config.split.test_fraction < 1, "split.test_fraction must be between 0 and 1"),
        (0 < config.subsets.train_fraction <= 1, "subsets.train_fraction must be in (0, 1]"),
        (config.train.batch_size >= 1, "train.batch_size must be at least 1"),
        (config.train.epochs >= 1, "train.epochs must be at least 1"),
        (config.train.learning_rate > 0, "train.learning_rate must be positive"),
        (min(config.train.image_size) >= 8, "train.image_size must be at least 8x8"),
        (len(config.model.filters) >= 1, "model.filters needs at least one layer"),
        (0 <= config.model.dropout_rate < 1, "model.dropout_rate must be in [0, 1)"),
        (config.crop.padding >= 0, "crop.padding must not be negative"),
        (
            all(
                0 <= getattr(config.color, k) <= 1 for k in ("brightness", "contrast", "saturation")
            ),
            "color.brightness, color.contrast and color.saturation must be in [0, 1]",
        ),
        (0 <= config.color.hue <= 0.5, "color.hue must be in [0, 0.5] (turns)"),
        (0 <= config.color.hed_jitter < 1, "color.hed_jitter must be in [0, 1)"),
        (0 <= config.color.hed_shift <= 1, "color.hed_shift must be in [0, 1]"),
        (0 <= config.color.scale_jitter <= 0.5, "color.scale_jitter must be in [0, 0.5]"),
        (0 <= config.color.stain_strength <= 3, "color.stain_strength must be in [0, 3]"),
        (
            config.train.feed == "tfdata"
            or not any(
                getattr(config.color, k) > 0
                for k in ("brightness", "contrast", "saturation", "hue")
            ),
            "color jitter (color.brightness/contrast/saturation/hue) needs train.feed: tfdata",
        ),
        (
            all(n >= 1 for n in config.augment.per_class_targets.values()),
            "augment.per_class_targets: every target must be at least 1",
        ),
    ]
    for name in config.model.ensemble:
        if name not in CHOICES["model.family"]:
            raise ConfigError(
                f"model.ensemble: unknown family '{name}'"
                + close_match_hint(name, list(CHOICES["model.family"]))
            )
    checks += [
        (config.model.cnn.image_size >= 16, "model.cnn.image_size must be at least 16"),
        (
            len(config.model.cnn.widths) >= 1 and min(config.model.cnn.widths) >= 1,
            "model.cnn.widths needs at least one positive width",
        ),
        (config.model.cnn.blocks >= 1, "model.cnn.blocks must be at least 1"),
        (config.model.cnn.learning_rate > 0, "model.cnn.learning_rate must be positive"),
        (0 <= config.model.cnn.label_smoothing < 1, "model.cnn.label_smoothing must be in [0, 1)"),
        (config.model.cnn.mixup >= 0, "model.cnn.mixup must not be negative"),
        (config.model.features.svm_c > 0, "model.features.svm_c must be positive"),
        (config.model.features.max_train >= 1, "model.features.max_train must be at least 1"),
        (
            config.model.cnn.normalization != "group"
            or all(w % 8 == 0 for w in config.model.cnn.widths),
            "model.cnn.normalization group needs model.cnn.widths divisible by 8",
        ),
    ]
    for name in config.augment.per_class_targets:
        if config.rename.classes and name not in config.rename.classes:
            raise ConfigError(
                f"augment.per_class_targets: unknown class '{name}'"
                + close_match_hint(name, list(config.rename.classes))
            )
    spe = config.train.steps_per_epoch
    checks.append(
        (
            spe == "auto" or (isinstance(spe, int) and spe >= 1),
            "train.steps_per_epoch must be 'auto' or a positive integer",
        )
    )
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


def merge_dicts(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_dicts(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_override(text: str) -> dict[str, Any]:
    """Turn ``section.key=value`` into a nested dict; the value is parsed as YAML."""
    if "=" not in text:
        raise ConfigError(f"--set '{text}': expected section.key=value")
    dotted, raw = text.split("=", 1)
    parts = [p.strip() for p in dotted.strip().split(".")]
    if not all(parts):
        raise ConfigError(f"--set '{text}': expected section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    nested: dict[str, Any] = {parts[-1]: value}
    for part in reversed(parts[:-1]):
        nested = {part: nested}
    return nested


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read config ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: invalid YAML{where}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections at the top level")
    return data


def config_from_dict(data: dict[str, Any], source: str = "config") -> Config:
    try:
        config = _build(Config, data, "")
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _validate(config)
    return config


def load_config(path: Optional[Path] = None, overrides: tuple[str, ...] | list[str] = ()) -> Config:
    """Load ``path`` (or the defaults), then apply ``section.key=value`` overrides in order."""
    data = read_yaml(path) if path else {}
    for text in overrides:
        data = merge_dicts(data, parse_override(text))
    return config_from_dict(data, str(path) if path else "config")


def dump_config(config: Config, path: Path) -> None:
    from wbc.core.manifest import write_atomic

    write_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
