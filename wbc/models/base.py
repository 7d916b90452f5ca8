"""The one small interface every model family implements.

A family (``study``, ``cnn``, ``features``; an ensemble of them) knows four things, and nothing
else in wbc knows them:

- ``input_size``: the (height, width) its inputs are resized to;
- ``fit(job)``: train on ``job.train_dir`` (class folders), write its model file(s) into
  ``job.run_dir`` and say what happened (a ``FitResult``);
- ``load(path, classes)``: read a model file back, safely (Keras ``safe_mode``; skops with an
  explicit list of trusted types), into a ``Classifier``;
- its ``model_file`` name in a run folder.

A ``Classifier`` turns a uint8 batch (N, H, W, 3) into class probabilities (``engine``) and can
say why it decided (``explain``), and writes itself in the formats it supports (``export``).
``wbc train``, ``evaluate``, ``predict``, ``count``,
``explain``, ``cv`` and ``tune`` only talk to these, so none of them branches on the family.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np

from wbc.core.config import Config

Echo = Callable[[str], None]


@dataclass
class FitJob:
    """Everything a family needs to train one model."""

    config: Config
    train_dir: Path  # class folders of training images
    test_dir: Path  # class folders of validation images (the study's protocol: the test side)
    run_dir: Path  # where the model file(s) go
    spec: Any  # wbc.imaging.preprocess.InputSpec: size and colour steps of every input
    echo: Echo = print
    resuming: bool = False
    init_model: Optional[Path] = None  # start from this model's weights (fine-tuning)
    strategy: str = "default"
    callbacks: Sequence[Any] = ()  # extra Keras callbacks (tests use them)
    # ``wbc.workflows.train.train``, for a family whose members are whole runs (the ensemble):
    # handed down by the workflow, so that models never import the layer above them.
    train_run: Optional[Callable[..., Path]] = None


@dataclass
class FitResult:
    """What training did: the evaluated model file, and the facts metrics.json records."""

    classes: list[str]
    model_file: str  # the file (in the run folder) that evaluate and predict use
    n_train: int
    # the model of the final epoch, chosen without looking at the validation side, when it is
    # another file than ``model_file`` (cv scores both); None: ``model_file`` is that model
    last_file: Optional[str] = None
    history: list[dict[str, float]] = field(default_factory=list)  # one row per epoch
    facts: dict[str, Any] = field(default_factory=dict)  # best_epoch, collapsed, ... for metrics
    skipped: list[Any] = field(default_factory=list)  # BadImage of unreadable training images
    # the done line: "done: {done} in 1m05s{notes}; test accuracy ...", e.g. done "30 epochs",
    # notes " (stopped early), best val_loss 0.41 at epoch 7/30"
    done: str = ""
    notes: str = ""


class Engine:
    """A classifier's batch function: uint8 (N, H, W, 3) -> float probabilities (N, C).

    ``engine`` names the runtime (litert, tensorflow, scikit-learn); ``fallback`` says why the
    one asked for was not used (None when it was).
    """

    engine: str = ""
    fallback: Optional[str] = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError


class Classifier:
    """A loaded model: probabilities for uint8 batches, and explanations."""

    image_size: tuple[int, int]
    n_classes: int
    path: Path

    def engine(self, name: str = "auto", cache: bool = True, tta: bool = False) -> Engine:
        """The batch function on runtime ``name`` (auto | litert | tensorflow; families with one
        runtime accept any). ``cache``: keep a conversion for the next process. ``tta``: average
        the model over ``tta_views`` of each input, where the family gains from it."""
        raise NotImplementedError

    def explain(self, pixels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        """Why the model names a class for one uint8 input (H, W, 3): a dict with
        ``probabilities`` and either ``heat`` (a 2-D map in [0, 1], where it looked) or
        ``features`` (the measurements that moved the decision most)."""
        raise NotImplementedError

    uses_tta: bool = True  # whether ``engine(tta=True)`` averages views (the CNNs do)

    # Export (``wbc export``): the formats this family's model converts to, and how.
    export_formats: tuple[str, ...] = ()

    def export(self, fmt: str, path: Path) -> dict[str, Any]:
        """Write the model as ``fmt`` (one of ``export_formats``) to ``path``. Returns what the
        exported file takes and gives (``input``, ``output_columns``: the class index of each
        output column), for its metadata."""
        raise NotImplementedError

    def export_inputs(self, batch: np.ndarray) -> np.ndarray:
        """What the exported file takes for a uint8 batch of model-size, recoloured inputs."""
        return batch

    # Adaptation to a lab (``wbc adapt``): what this family re-estimates from unlabelled cells.
    def adapt_to(
        self, pixels: np.ndarray, echo: Echo = print, balanced: bool = True
    ) -> list[dict[str, Any]]:
        """Re-estimate the parts of the model that describe the input statistics on ``pixels``
        (uint8 model inputs of one lab's cells, no labels), in place. ``balanced``: weight the
        cells so that each predicted class weighs the same (else pooled). Returns one dict per
        part: ``part``, ``method`` and what it measured. The default: nothing to adapt."""
        return [{"part": "model", "method": "none", "reason": "this family has no such part"}]

    def save(self, path: Path) -> None:
        """Write the (adapted) model to ``path``, atomically, in the family's model format."""
        raise NotImplementedError


class Family:
    """A kind of model: how to size its inputs, train it and load it back."""

    name: ClassVar[str]
    model_file: ClassVar[str]  # the file name in a run folder

    def __init__(self, config: Config):
        self.config = config

    def input_size(self) -> tuple[int, int]:
        raise NotImplementedError

    def fit(self, job: FitJob) -> FitResult:
        raise NotImplementedError

    def load(self, path: Path, classes: Sequence[str]) -> Classifier:
        raise NotImplementedError

    @staticmethod
    def check_file(path: Path) -> None:
        """A one-line ``ModelError`` when ``path`` is not a readable, safe file of this family
        (cheap: done before the run's config is read)."""


def resize_batch(batch: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A uint8 batch resized to ``size`` (height, width); unchanged when it already is."""
    if tuple(batch.shape[1:3]) == tuple(size):
        return batch
    from wbc.imaging.preprocess import resize

    return (
        np.stack([resize(image, size) for image in batch])
        if len(batch)
        else np.zeros((0, *size, 3), np.uint8)
    )


class TtaEngine(Engine):
    """Test-time augmentation: ``engine`` averaged over ``tta_views`` of each input."""

    def __init__(self, engine: Engine):
        self.inner = engine
        self.engine = engine.engine + "+tta"
        self.fallback = engine.fallback

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        views = tta_views(batch)
        probs = np.asarray(self.inner(views), dtype=np.float64)
        return probs.reshape(len(views) // len(batch), len(batch), -1).mean(axis=0)


def tta_views(batch: np.ndarray) -> np.ndarray:
    """The views TTA averages: the 8 dihedral views of a square batch (``dihedral_views``), the
    4 flips (none, left-right, up-down, both) of a non-square one; view-major."""
    if batch.shape[1] == batch.shape[2]:
        return dihedral_views(batch)
    flipped = batch[:, :, ::-1]
    return np.ascontiguousarray(np.concatenate([batch, flipped, batch[:, ::-1], flipped[:, ::-1]]))


def dihedral_views(batch: np.ndarray) -> np.ndarray:
    """The 8 dihedral views (4 rotations, each also mirrored) of a square uint8 batch, stacked
    view-major: (8N, H, W, 3); view v of image i is row ``v * N + i``."""
    views = []
    for k in range(4):
        turned = np.rot90(batch, k, axes=(1, 2))
        views += [turned, turned[:, :, ::-1]]
    return np.ascontiguousarray(np.concatenate(views))
