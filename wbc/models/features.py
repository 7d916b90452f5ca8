"""The ``features`` family: nucleus and cell measurements (``wbc.models.nucleus``) classified by
scikit-learn.

``model.features.classifier``: ``svm`` (default) is an RBF support-vector machine on
standardised features with balanced class weights (Tavakoli et al. 2021's family; Platt-scaled
probabilities by ``CalibratedClassifierCV``), ``boosting`` scikit-learn's histogram gradient
boosting. The model is saved with skops (``model.skops``) and loaded back only when every type
in the file is on ``TRUSTED``: a file that names anything else (a foreign estimator, a
function) is refused before it is unpacked. Never pickle.

Training uses at most ``model.features.max_train`` crops per class (originals first, then a
seeded draw of augmented copies): the SVM's cost grows with the square of the samples.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from wbc.core.errors import DataError, ModelError
from wbc.models.base import Classifier, Engine, Family, FitJob, FitResult, resize_batch
from wbc.models.nucleus import WORK_SIDE, batch_features, feature_names, segment
from wbc.models.registry import register_family

# Everything a saved features model may contain; anything else in a file is refused.
TRUSTED = (
    "sklearn.pipeline.Pipeline",
    "sklearn.preprocessing._data.StandardScaler",
    "sklearn.svm._classes.SVC",
    "sklearn.calibration.CalibratedClassifierCV",
    "sklearn.calibration._CalibratedClassifier",
    "sklearn.calibration._SigmoidCalibration",
    "sklearn.model_selection._split.StratifiedKFold",
    "sklearn.ensemble._hist_gradient_boosting.gradient_boosting.HistGradientBoostingClassifier",
    "sklearn.ensemble._hist_gradient_boosting.binning._BinMapper",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn._loss.loss.HalfMultinomialLoss",
    "sklearn._loss._loss.CyHalfMultinomialLoss",
    "sklearn.preprocessing._label.LabelEncoder",
    "sklearn._loss.link.MultinomialLogit",
    "sklearn._loss.link.Interval",
    "numpy.dtype",
    "numpy.ndarray",
    "numpy.float64",
    "numpy.int64",
    "numpy.int32",
    "numpy.uint64",
    "numpy.random._generator.Generator",
    "builtins.slice",
)
# Containers and scalars of skops' own schema.
PLAIN_TYPES = tuple(
    f"builtins.{name}"
    for name in ("dict", "list", "tuple", "str", "int", "float", "bool", "NoneType")
)
CALIBRATION_FOLDS = 5  # calibrated SVMs averaged, each fitted on 4/5 and calibrated on 1/5
# OpenCV releases the GIL, so measuring crops in threads uses more than one core; but most of the
# measuring is small numpy calls that hold it, and threads beyond the cores only queue for it.
# On 2 cores, measuring 600 crops took 3.7 ms per crop in 2 threads, 4.5 in 4 and 4.8 in 1;
# predicting tecom's crops, whose decoding threads run beside, 9.2 ms per cell with 2, 9.8 with
# 4 (research/measuring_threads.py; docs/PERFORMANCE.md). So one per core, at most 4.
FEATURE_THREADS = max(1, min(4, os.cpu_count() or 1))


def _measure(images: np.ndarray, colour: str, nucleus: str) -> np.ndarray:
    """``batch_features`` over a thread pool, in order."""
    if len(images) < 2 * FEATURE_THREADS:
        return batch_features(images, colour, nucleus)
    chunks = np.array_split(np.arange(len(images)), FEATURE_THREADS)
    with ThreadPoolExecutor(FEATURE_THREADS) as pool:
        parts = list(pool.map(lambda idx: batch_features(images[idx], colour, nucleus), chunks))
    return np.concatenate(parts)


def _cell_keys(cells: np.ndarray) -> list[bytes]:
    """Each cell's content digest: the key of its measurements."""
    return [hashlib.blake2b(cell.tobytes(), digest_size=16).digest() for cell in cells]


class FeatureEngine(Engine):
    """uint8 crops -> features -> the scikit-learn model's probabilities, one column per class
    of the run (a class the training side lacked gets probability 0). ``known``: measurements
    by ``_cell_keys`` digest, used instead of measuring those cells again."""

    engine = "scikit-learn"

    def __init__(
        self,
        pipeline,
        n_classes: int,
        colour: str,
        nucleus: str,
        known: dict[bytes, np.ndarray] | None = None,
    ):
        self.pipeline = pipeline
        self.n_classes = n_classes
        self.colour = colour
        self.nucleus = nucleus
        self.known = known if known is not None else {}
        self.columns = np.asarray(pipeline.classes_, dtype=np.int64)

    def measure(self, batch: np.ndarray) -> np.ndarray:
        cells = resize_batch(batch, (WORK_SIDE, WORK_SIDE))
        if not self.known or not len(cells):
            return _measure(cells, self.colour, self.nucleus)
        keys = _cell_keys(cells)
        missing = [i for i, key in enumerate(keys) if key not in self.known]
        fresh = iter(_measure(cells[missing], self.colour, self.nucleus) if missing else ())
        return np.stack([self.known[key] if key in self.known else next(fresh) for key in keys])

    def probabilities(self, features: np.ndarray) -> np.ndarray:
        out = np.zeros((len(features), self.n_classes), np.float64)
        if len(features):
            out[:, self.columns] = self.pipeline.predict_proba(features)
        return out

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.probabilities(self.measure(batch))


class FeatureClassifier(Classifier):
    def __init__(self, pipeline, path: Path, n_classes: int, colour: str, nucleus: str):
        self.pipeline = pipeline
        self.path = Path(path)
        self.n_classes = n_classes
        self.colour = colour
        self.nucleus = nucleus
        self.image_size = (WORK_SIDE, WORK_SIDE)
        # The measurements of the cells adapt_to adapted on, by content: classifying those
        # cells next (wbc count --adapt, wbc adapt's prior step) does not measure them again.
        self.adapted_measurements: dict[bytes, np.ndarray] = {}

    def engine(self, name: str = "auto", cache: bool = True, tta: bool = False) -> Engine:
        """``tta`` changes nothing here: the measurements are made on the cell's masks, so they
        barely change under rotation or mirroring, and computing them 8 times would cost 8x."""
        return FeatureEngine(
            self.pipeline, self.n_classes, self.colour, self.nucleus, self.adapted_measurements
        )

    def explain(self, pixels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """The features whose typical value (the training mean) would lower the predicted
        class's probability most: what drove the decision. The picture marks what was
        measured: the nucleus (1.0), the cytoplasm inside its hull (0.6), the outer band (0.3)."""
        engine = self.engine()
        crop = resize_batch(np.asarray(pixels, np.uint8)[None], (WORK_SIDE, WORK_SIDE))
        values = batch_features(crop, self.colour, self.nucleus)
        probs = engine.probabilities(values)[0]
        chosen = int(np.argmax(probs))
        typical = (
            self.pipeline[0].mean_
            if hasattr(self.pipeline[0], "mean_")
            else np.zeros(values.shape[1])
        )
        swapped = np.repeat(values, values.shape[1], axis=0)
        swapped[np.arange(values.shape[1]), np.arange(values.shape[1])] = typical
        effect = probs[chosen] - engine.probabilities(swapped)[:, chosen]
        names = feature_names(self.colour)
        order = np.argsort(-effect, kind="stable")[:8]
        seg = segment(crop[0], self.nucleus)
        heat = (seg.nucleus * 1.0 + seg.inner_cytoplasm * 0.6 + seg.ring * 0.3).astype(np.float32)
        return {
            "probabilities": probs,
            "heat": heat,
            "method": "feature contributions",
            "features": [
                {
                    "name": names[i],
                    "value": round(float(values[0, i]), 4),
                    "typical": round(float(typical[i]), 4),
                    "effect": round(float(effect[i]), 4),
                }
                for i in order
            ],
        }

    def adapt_to(
        self, pixels: np.ndarray, echo=print, balanced: bool = True
    ) -> list[dict[str, Any]]:
        """The scaler re-estimated on the lab's measurements with class-balanced weights
        (``wbc.models.adaptation.class_balanced_scaler``); the SVM is untouched."""
        from wbc.models.adaptation import class_balanced_scaler

        echo(f"measuring {len(pixels)} cells")
        cells = resize_batch(np.asarray(pixels, np.uint8), self.image_size)
        features = _measure(cells, self.colour, self.nucleus)
        self.adapted_measurements.update(zip(_cell_keys(cells), features))
        facts = class_balanced_scaler(self.pipeline, features, echo, balanced)
        return [
            {
                "part": "standardisation",
                "method": (
                    "class-balanced re-standardisation: the scaler's mean and scale "
                    "re-estimated on the lab's measurements, each cell weighted by 1 / its "
                    "predicted class's mass, predictions redone with the new scaler"
                    if balanced
                    else "pooled re-standardisation: the scaler's mean and scale re-estimated "
                    "on the lab's measurements, every cell weighted equally"
                ),
                **facts,
            }
        ]

    def save(self, path: Path) -> None:
        save_pipeline(self.pipeline, path)

    uses_tta = False
    export_formats = ("onnx",)

    def export(self, fmt: str, path: Path) -> dict[str, Any]:
        """The scikit-learn pipeline (scaler + classifier) as ONNX (``skl2onnx``). The nucleus
        segmentation and measurements are OpenCV code, not a graph: a consumer computes the
        ``feature_names`` with ``wbc.models.nucleus.cell_features`` and feeds those."""
        if fmt != "onnx":
            raise ValueError(f"format must be one of {self.export_formats}, not {fmt!r}")
        from skl2onnx import to_onnx

        names = feature_names(self.colour)
        classifier = self.pipeline[-1]
        sample = np.zeros((1, len(names)), np.float32)
        try:
            with warnings.catch_warnings():  # skl2onnx's FutureWarnings about numpy aliases
                warnings.simplefilter("ignore")
                graph = to_onnx(
                    self.pipeline,
                    sample,
                    options={id(classifier): {"zipmap": False}},
                    target_opset={"": 17, "ai.onnx.ml": 3},
                )
        except Exception as exc:  # noqa: BLE001 - a converter without this estimator
            raise ModelError(
                f"{self.path}: {type(classifier).__name__} does not convert to ONNX "
                f"({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
            ) from None
        Path(path).write_bytes(graph.SerializeToString())
        return {
            "input": {
                "name": "X",
                "dtype": "float32",
                "shape": [None, len(names)],
                "features": list(names),
                "computed_by": "wbc.models.nucleus.cell_features(crop, colour="
                f"{self.colour!r}, nucleus={self.nucleus!r}) on each recoloured crop",
            },
            "output": "probabilities (the second output)",
            # onnxruntime runs the SVM's kernel and Platt scaling in float32, scikit-learn
            # in float64: ~1e-5 apart on real crops
            "tolerance": 1e-4,
            "tolerance_reason": "the ONNX graph computes in float32, scikit-learn in float64",
            "output_columns": [int(c) for c in self.pipeline.classes_],
        }

    def export_inputs(self, batch: np.ndarray) -> np.ndarray:
        return self.engine().measure(batch)


def _schema_types(node: Any) -> set[str]:
    """``module.class`` of every object node in a skops ``schema.json``."""
    found: set[str] = set()
    if isinstance(node, dict):
        if "__class__" in node:
            found.add(f"{node.get('__module__', '')}.{node['__class__']}")
        for value in node.values():
            found |= _schema_types(value)
    elif isinstance(node, list):
        for value in node:
            found |= _schema_types(value)
    return found


def _skops():
    try:
        import skops.io as sio
    except ImportError:  # pragma: no cover - a dependency of wbc
        raise ModelError("the features family needs skops: pip install skops") from None
    return sio


def save_pipeline(pipeline, path: Path) -> None:
    from wbc.core.manifest import write_atomic

    write_atomic(Path(path), _skops().dumps(pipeline))


# sha256 of a file's bytes -> its audited skops types. skops builds the whole object tree to
# audit a file (seconds for a boosting model of 1,200 trees), and a run's model is checked
# before its folder is read, then loaded: the same bytes need one audit, not two.
_AUDITED: dict[str, list[str]] = {}


def _untrusted_types(path: Path) -> tuple[bytes, list[str]]:
    """The file's bytes and the types in it that skops does not trust by default; a one-line
    ``ModelError`` for a broken file or one naming a type outside ``TRUSTED``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    if path.suffix.lower() != ".skops":
        raise ModelError(f"{path}: not a .skops model file")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: empty model file (0 bytes)")
    try:
        data = path.read_bytes()
        digest = hashlib.sha256(data).hexdigest()
        if digest in _AUDITED:
            return data, _AUDITED[digest]
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            named = _schema_types(json.loads(archive.read("schema.json")))
        untrusted = _skops().get_untrusted_types(data=data)
    except Exception as exc:  # noqa: BLE001 - zip, JSON or schema errors of a broken file
        raise ModelError(f"{path}: not a valid .skops model file ({type(exc).__name__})") from None
    # Every type the file names, not only those skops distrusts by default (it trusts all of
    # scikit-learn and numpy's functions, e.g. a FunctionTransformer of any ufunc).
    refused = sorted((named | set(untrusted)) - set(TRUSTED) - set(PLAIN_TYPES))
    if refused:
        raise ModelError(f"{path}: contains untrusted type {refused[0]}; refusing to load it")
    if len(_AUDITED) >= 64:
        _AUDITED.clear()
    _AUDITED[digest] = list(untrusted)
    return data, list(untrusted)


def load_pipeline(path: Path):
    """A scikit-learn model from a ``.skops`` file whose every type is on ``TRUSTED``."""
    data, untrusted = _untrusted_types(path)
    sio = _skops()
    try:
        return sio.loads(data, trusted=untrusted)
    except Exception as exc:  # noqa: BLE001
        reason = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise ModelError(
            f"{path}: cannot load model ({type(exc).__name__}{': ' + reason if reason else ''})"
        ) from None


def make_pipeline(features_config, seed: int):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    if features_config.classifier == "boosting":
        from sklearn.ensemble import HistGradientBoostingClassifier

        model = HistGradientBoostingClassifier(
            class_weight="balanced", random_state=seed, max_iter=300, learning_rate=0.05
        )
    else:
        from sklearn.calibration import CalibratedClassifierCV
        from sklearn.model_selection import StratifiedKFold
        from sklearn.svm import SVC

        # Platt scaling (SVC(probability=True) goes in scikit-learn 1.11): sigmoids fitted on
        # held-out decision values of seeded folds, one-vs-rest. SVC's one-vs-rest score is
        # mostly integer votes, so one SVM's sigmoids give step-like, overconfident
        # probabilities (ensemble=False: CV log-loss 0.98 against libsvm's 0.79, 3 cells
        # fewer right of 276); the mean of the folds' calibrated SVMs is smoother (0.69, the
        # same 232 right) for ~0.4 ms more per cell. fit_pipeline lowers the folds when a
        # class has fewer crops.
        model = CalibratedClassifierCV(
            SVC(C=features_config.svm_c, gamma="scale", class_weight="balanced"),
            method="sigmoid",
            cv=StratifiedKFold(CALIBRATION_FOLDS, shuffle=True, random_state=seed),
            ensemble=True,
        )
    return Pipeline([("scale", StandardScaler()), ("classify", model)])


def fit_pipeline(pipeline, features: np.ndarray, labels: np.ndarray, weights=None):
    """``pipeline.fit``, with the calibration folds lowered to the smallest class's crops
    (at least 2: a class of one crop cannot be calibrated out of fold)."""
    from sklearn.model_selection import StratifiedKFold

    cv = getattr(pipeline[-1], "cv", None)
    smallest = int(np.unique(labels, return_counts=True)[1].min()) if len(labels) else 0
    if isinstance(cv, StratifiedKFold) and smallest < cv.n_splits:
        if smallest < 2:
            raise DataError(
                "every class needs at least 2 training crops for the SVM's calibrated "
                f"probabilities; one has {smallest}"
            )
        pipeline.set_params(
            classify__cv=StratifiedKFold(smallest, shuffle=True, random_state=cv.random_state)
        )
    return pipeline.fit(
        features, labels, **({} if weights is None else {"classify__sample_weight": weights})
    )


def draw_training_files(
    files: Sequence[Path], labels: np.ndarray, limit: int, seed: int
) -> list[int]:
    """Indices of at most ``limit`` files per class: originals first, then a seeded draw of
    the augmented copies (``CLASS.ID.aNNNN.jpg``)."""
    from wbc.core.seeding import rng_for
    from wbc.data.stages.naming import parse_name

    chosen: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        noise = rng_for(seed, "features-draw", int(label)).random(len(members))
        copy = [
            0 if (n := parse_name(Path(files[i]).name)) is None or n.copy is None else 1
            for i in members
        ]
        order = sorted(range(len(members)), key=lambda j: (copy[j], noise[j]))
        chosen += [int(members[j]) for j in order[:limit]]
    return sorted(chosen)


TRAINING_FEATURES = "train_features.npz"


def _prior_for(prior, origin_classes: list[str], classes: list[str], echo):
    """The adapted model's earlier crops: those of the classes the lab also has, relabelled to
    the lab's class order (the run predicts the lab's classes, no more, no fewer)."""
    features, labels = prior
    mapping = {i: classes.index(c) for i, c in enumerate(origin_classes) if c in classes}
    keep = np.isin(labels, list(mapping))
    new = [c for c in classes if c not in origin_classes]
    gone = [c for c in origin_classes if c not in classes]
    if new or gone:
        echo(
            "classes: the lab's own"
            + (f"; new to the model: {', '.join(new)}" if new else "")
            + (f"; not in the lab's data, left out: {', '.join(gone)}" if gone else "")
        )
    if not keep.any():
        return None
    return features[keep], np.array([mapping[int(y)] for y in labels[keep]], dtype=np.int64)


def run_nucleus_method(run_dir: Path, configured: str) -> str:
    """The nucleus method a features run was measured with: its ``config.yaml``'s
    ``model.features.nucleus``, or ``contrast`` (the only rule then) for a run written before
    that key existed, so that an older run is measured as it was trained. A folder without a
    readable ``config.yaml`` takes ``configured``."""
    from wbc.core.config import ConfigError, read_yaml

    try:
        written = read_yaml(Path(run_dir) / "config.yaml")
    except ConfigError:
        return configured
    features = (written.get("model") or {}).get("features") or {}
    return str(features.get("nucleus", "contrast"))


def write_training_features(run_dir: Path, features: np.ndarray, labels: np.ndarray) -> None:
    """The training crops' features and labels, kept so that ``--init RUN`` can refit with them
    (plain float and int arrays: read back without pickle)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer, features=features.astype(np.float32), labels=labels.astype(np.int64)
    )
    from wbc.core.manifest import write_atomic

    write_atomic(Path(run_dir) / TRAINING_FEATURES, buffer.getvalue())


def read_training_features(run_dir: Path, colour: str) -> tuple[np.ndarray, np.ndarray]:
    path = Path(run_dir) / TRAINING_FEATURES
    try:
        with np.load(path, allow_pickle=False) as data:
            features, labels = data["features"], data["labels"]
    except FileNotFoundError:
        raise ModelError(
            f"{path}: missing; --init needs a features run made by this version of wbc train"
        ) from None
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{path}: unreadable training features ({exc})") from None
    if (
        features.ndim != 2
        or features.shape[1] != len(feature_names(colour))
        or len(labels) != len(features)
    ):
        raise ModelError(
            f"{path}: holds {features.shape} features, not the "
            f"{len(feature_names(colour))} of model.features.colour {colour}"
        )
    return features, labels


@register_family
class FeaturesFamily(Family):
    name = "features"
    description = (
        "nucleus and cell measurements (62 named features: nucleus/cell ratio, lobe "
        "count, solidity, granule colour, ...) classified by a scikit-learn model"
    )
    export_modules = {"onnx": ("skl2onnx",)}
    model_file = "model.skops"

    def input_size(self) -> tuple[int, int]:
        return (WORK_SIDE, WORK_SIDE)

    def fit(self, job: FitJob) -> FitResult:
        from wbc.core import runfolder
        from wbc.imaging.feeds import list_class_files, load_images

        fc = self.config.model.features
        classes, files, labels = list_class_files(job.train_dir)
        if not files:
            raise DataError(f"{job.train_dir}: no images in the class folders")
        prior = None
        if job.init_model is not None:  # adapting to a lab: refit with the earlier crops too
            origin = Path(job.init_model).parent
            measured_with = run_nucleus_method(origin, fc.nucleus)
            if measured_with != fc.nucleus:
                raise ModelError(
                    f"{job.init_model}: its training crops were measured with "
                    f"model.features.nucleus {measured_with}, not {fc.nucleus}; adapt it "
                    f"with --set model.features.nucleus={measured_with}"
                )
            prior = _prior_for(
                read_training_features(origin, fc.colour),
                list(runfolder.read_classes(origin / "classes.json")),
                classes,
                job.echo,
            )
        picked = draw_training_files(files, labels, fc.max_train, self.config.seed)
        files, labels = [files[i] for i in picked], labels[picked]
        job.echo(f"measuring {len(files)} training crops of {job.train_dir}")
        images, kept, bad = load_images(files, self.input_size(), echo=job.echo, spec=job.spec)
        if not len(kept):
            raise DataError(f"{job.train_dir}: none of the images could be read")
        features = _measure(images, fc.colour, fc.nucleus)
        labels = labels[kept]
        write_training_features(Path(job.run_dir), features, labels)
        weights = None
        fit_x, fit_y = features, labels
        if prior is not None:
            # The lab's few cells weigh as much, in all, as the earlier training set: they
            # pull the boundaries towards the lab's stain without the earlier cells being lost.
            fit_x, fit_y = np.concatenate([prior[0], features]), np.concatenate([prior[1], labels])
            weights = np.concatenate(
                [np.ones(len(prior[0])), np.full(len(features), len(prior[0]) / len(features))]
            )
            job.echo(
                f"adapting {job.init_model}: refitting on its {len(prior[0])} training "
                f"crops and these {len(features)}, weighted to equal totals"
            )
        job.echo(f"fitting {fc.classifier} on {len(fit_x)} crops x {fit_x.shape[1]} features")
        pipeline = fit_pipeline(make_pipeline(fc, self.config.seed), fit_x, fit_y, weights)
        runfolder.write_classes(classes, Path(job.run_dir) / "classes.json")
        save_pipeline(pipeline, Path(job.run_dir) / self.model_file)
        counts = np.bincount(labels, minlength=len(classes))
        return FitResult(
            classes=list(classes),
            model_file=self.model_file,
            n_train=int(len(features)),
            skipped=list(bad),
            facts={
                "features": len(feature_names(fc.colour)),
                "train_per_class": dict(zip(classes, counts.tolist())),
            },
            done=f"{fc.classifier} on {len(features)} crops",
        )

    @staticmethod
    def check_file(path: Path) -> None:
        _untrusted_types(path)

    def load(self, path: Path, classes: Sequence[str]) -> Classifier:
        pipeline = load_pipeline(path)
        colour = self.config.model.features.colour
        expected = len(feature_names(colour))
        if getattr(pipeline, "n_features_in_", expected) != expected:
            raise ModelError(
                f"{path}: the model takes {pipeline.n_features_in_} features, "
                f"not the {expected} that wbc measures with "
                f"model.features.colour {colour}"
            )
        if len(getattr(pipeline, "classes_", ())) > len(classes) or (
            len(pipeline.classes_) and int(max(pipeline.classes_)) >= len(classes)
        ):
            raise ModelError(f"{path}: the model knows more classes than classes.json names")
        nucleus = run_nucleus_method(path.parent, self.config.model.features.nucleus)
        return FeatureClassifier(pipeline, path, len(classes), colour, nucleus)
