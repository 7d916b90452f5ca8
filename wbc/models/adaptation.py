"""Adapting a trained model to a lab from its unlabelled cells (``wbc adapt``): the model-level
parts, and the prior correction that an adapted run applies at predict time.

Three parts, each measured in ``docs/RESULTS.md`` ("Adaptation from unlabelled cells"):

- **BatchNorm statistics** (the Keras families; AdaBN, Li et al. 2016): every BatchNorm layer's
  moving mean and variance are re-estimated on the lab's cells, layer by layer in graph order,
  each from the inputs the already re-estimated layers before it produce (the exact statistics
  of the whole folder, whatever the batch size). Weights are untouched. ``adapt_batchnorm``; by
  default with the class-balanced cell weights below (``class_balanced_weights``), as pooled
  statistics follow the lab's class mix (measured: pooled AdaBN on the training lab's own 28
  held-out cells, 61% neutrophils, lowered one CNN from 0.786 to 0.643; balanced, 0.786).
- **Feature standardisation** (the features family): the scaler in front of the SVM is
  re-estimated on the lab's measurements. A pooled mean would follow the lab's class mix (one
  lab has 46% neutrophils and 2% monocytes) while the training scaler saw balanced classes, so
  each cell is weighted by the inverse of its predicted class's total mass, and the prediction
  is redone with the new scaler a few times. ``class_balanced_scaler``.
- **Class priors** (every family; Saerens et al. 2002): EM re-estimates the lab's class shares
  from the model's posteriors. Naive EM made things worse (it drove the monocyte prior to zero),
  so the posteriors are first calibrated by a temperature fitted on held-out source data, the
  priors are shrunk toward the training prior (Dirichlet pseudo-counts) and floored, and EM is
  kept only when it improves accuracy on the held-out source data under simulated class shifts.
  ``PriorCorrection`` (``prior_correction.json``) applies it to every probability the run gives.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import ModelError
from wbc.models.base import Classifier, Engine

PRIOR_NAME = "prior_correction.json"
# Fixed before any score on another lab was seen (docs/RESULTS.md says so):
PRIOR_FLOOR = 0.02  # no class share below 2%: EM must not talk a class out of existence
PRIOR_PSEUDO_CELLS = 20.0  # Dirichlet pseudo-counts toward the training prior, in cells
EM_ITERATIONS = 100
EM_TOLERANCE = 1e-6
SHIFT_TRIALS = 50  # simulated class mixes of the held-out source side (the keep-EM check)
SCALER_ITERATIONS = 5  # predict -> reweight -> re-estimate rounds (scaler; BatchNorm too)
SCALER_MIN_MASS = 0.02  # a class predicted for fewer cells is weighted as if it had this share
EPS = 1e-12


# --------------------------------------------------------------------------- calibration, EM


def tempered(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``: probabilities made sharper (T < 1) or softer (T > 1)."""
    logits = np.log(np.clip(np.asarray(probs, np.float64), EPS, 1.0)) / float(temperature)
    logits -= logits.max(axis=1, keepdims=True)
    out = np.exp(logits)
    return out / out.sum(axis=1, keepdims=True)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood of ``labels`` (bounded to
    [0.05, 20]; a golden-section search on log T: one parameter, no gradient needed)."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    if not len(labels):
        return 1.0

    def nll(log_t: float) -> float:
        p = tempered(probs, float(np.exp(log_t)))
        return float(-np.log(np.clip(p[np.arange(len(labels)), labels], EPS, 1.0)).mean())

    low, high = np.log(0.05), np.log(20.0)
    ratio = (np.sqrt(5.0) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = nll(a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = nll(b)
    return float(np.exp((low + high) / 2))


def reweighted(probs: np.ndarray, source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Bayes' rule for a new prior: ``p(y|x) * target(y) / source(y)``, renormalised."""
    out = np.asarray(probs, np.float64) * (np.asarray(target) / np.asarray(source))[None]
    total = out.sum(axis=1, keepdims=True)
    return np.where(total > 0, out / np.maximum(total, EPS), 1.0 / out.shape[1])


def bounded_prior(
    mass: np.ndarray, n: int, source: np.ndarray, pseudo: float, floor: float
) -> np.ndarray:
    """The MAP class shares from expected counts ``mass`` under a Dirichlet of ``pseudo`` cells
    spread as ``source``, then floored at ``floor`` and renormalised."""
    prior = (np.asarray(mass, np.float64) + pseudo * source) / (n + pseudo)
    prior = np.maximum(prior, floor)
    return prior / prior.sum()


def em_priors(
    probs: np.ndarray,
    source: np.ndarray,
    *,
    pseudo: float = PRIOR_PSEUDO_CELLS,
    floor: float = PRIOR_FLOOR,
) -> tuple[np.ndarray, int]:
    """Saerens et al.'s EM for the class shares of ``probs`` (N, C posteriors under ``source``
    priors), with each M-step bounded (``bounded_prior``). Returns (priors, iterations)."""
    probs = np.asarray(probs, np.float64)
    source = np.asarray(source, np.float64)
    prior = source.copy()
    for iteration in range(1, EM_ITERATIONS + 1):
        posterior = reweighted(probs, source, prior)
        new = bounded_prior(posterior.sum(axis=0), len(probs), source, pseudo, floor)
        if np.abs(new - prior).max() < EM_TOLERANCE:
            return new, iteration
        prior = new
    return prior, EM_ITERATIONS


def simulated_shift_gain(
    probs: np.ndarray, labels: np.ndarray, source: np.ndarray, seed: int
) -> dict[str, Any]:
    """Whether EM helps on held-out source data whose class mix is changed: ``SHIFT_TRIALS``
    class mixes drawn from a flat Dirichlet, the side resampled to each (seeded), accuracy of
    the calibrated posteriors with and without EM. No label of the lab is involved."""
    from wbc.core.seeding import rng_for

    probs, labels = np.asarray(probs, np.float64), np.asarray(labels, np.int64)
    n_classes = probs.shape[1]
    present = [c for c in range(n_classes) if np.any(labels == c)]
    if len(present) < 2:
        return {"trials": 0, "gain": None, "reason": "fewer than two classes held out"}
    rng = rng_for(seed, "adapt-shift")
    size = max(len(labels), 100)
    gains, before, after = [], [], []
    for _ in range(SHIFT_TRIALS):
        mix = rng.dirichlet(np.ones(len(present)))
        counts = rng.multinomial(size, mix)
        picked = np.concatenate(
            [
                rng.choice(np.flatnonzero(labels == c), k, replace=True)
                for c, k in zip(present, counts)
                if k
            ]
        )
        p, y = probs[picked], labels[picked]
        prior, _ = em_priors(p, source)
        plain = float((p.argmax(axis=1) == y).mean())
        corrected = float((reweighted(p, source, prior).argmax(axis=1) == y).mean())
        before.append(plain)
        after.append(corrected)
        gains.append(corrected - plain)
    return {
        "trials": SHIFT_TRIALS,
        "cells_per_trial": size,
        "accuracy_without_em": round(float(np.mean(before)), 4),
        "accuracy_with_em": round(float(np.mean(after)), 4),
        "gain": round(float(np.mean(gains)), 4),
    }


# --------------------------------------------------------------------------- the correction


@dataclass(frozen=True)
class PriorCorrection:
    """What an adapted run does to every probability vector: temper by ``temperature``, then
    move from the ``source`` class shares to the lab's ``target`` ones (Bayes' rule)."""

    temperature: float
    source: tuple[float, ...]
    target: tuple[float, ...]

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 2 or not len(probs):
            return probs
        return reweighted(tempered(probs, self.temperature), self.source, self.target)

    def to_json(self) -> dict[str, Any]:
        return {
            "method": "temperature, then p(y|x) * target(y) / source(y), renormalised",
            "temperature": self.temperature,
            "source_prior": list(self.source),
            "target_prior": list(self.target),
        }


def write_correction(correction: PriorCorrection, run_dir: Path) -> Path:
    from wbc.core.manifest import write_json

    path = Path(run_dir) / PRIOR_NAME
    write_json(path, correction.to_json())
    return path


def read_correction(run_dir: Path, n_classes: int) -> Optional[PriorCorrection]:
    """The run's ``prior_correction.json``; None when it has none (not adapted, or EM was not
    kept)."""
    path = Path(run_dir) / PRIOR_NAME
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        correction = PriorCorrection(
            float(data["temperature"]),
            tuple(float(v) for v in data["source_prior"]),
            tuple(float(v) for v in data["target_prior"]),
        )
    except (OSError, ValueError, KeyError, TypeError):
        raise ModelError(f"{path}: not a valid prior correction") from None
    if (
        not correction.temperature > 0
        or len(correction.source) != n_classes
        or len(correction.target) != n_classes
        or min(correction.source + correction.target) <= 0
    ):
        raise ModelError(f"{path}: expected a positive temperature and {n_classes} priors > 0")
    return correction


class CorrectedEngine(Engine):
    def __init__(self, inner: Engine, correction: PriorCorrection):
        self.inner = inner
        self.correction = correction
        self.engine = inner.engine + "+priors"
        self.fallback = inner.fallback

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self.correction(self.inner(batch))


class AdaptedClassifier(Classifier):
    """A run's classifier with its ``prior_correction.json`` applied to every output, so that
    predict, evaluate, count and explain all give the adapted probabilities."""

    def __init__(self, inner: Classifier, correction: PriorCorrection):
        self.inner = inner
        self.correction = correction
        self.path = inner.path
        self.image_size = inner.image_size
        self.n_classes = inner.n_classes
        self.uses_tta = inner.uses_tta
        self.export_formats = inner.export_formats

    def engine(self, name: str = "auto", cache: bool = True, tta: bool = False) -> Engine:
        return CorrectedEngine(self.inner.engine(name, cache, tta), self.correction)

    def explain(self, pixels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        found = self.inner.explain(pixels, classes)
        found["probabilities"] = self.correction(np.asarray(found["probabilities"])[None])[0]
        return found

    def export(self, fmt: str, path: Path) -> dict[str, Any]:
        # The exported graph would give the probabilities before the correction: a consumer
        # would silently get other answers than wbc predict.
        raise ModelError(
            f"{self.path.parent / PRIOR_NAME}: an adapted run's prior correction is not part of "
            "an exported graph; export the run it was adapted from, or remove the file"
        )

    def export_inputs(self, batch: np.ndarray) -> np.ndarray:
        return self.inner.export_inputs(batch)

    def __getattr__(self, name: str):  # the family's own extras (model, pipeline, ...)
        return getattr(self.__dict__["inner"], name)


# --------------------------------------------------------------------------- BatchNorm (AdaBN)


def batchnorm_layers(model) -> list[Any]:
    """Every BatchNormalization layer of a Keras model, nested models included, in graph order."""
    import keras

    found = []
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            found.append(layer)
        elif isinstance(layer, keras.Model):
            found += batchnorm_layers(layer)
    return found


def adapt_batchnorm(
    model,
    batches: Callable[[], Any],
    weights: Optional[np.ndarray] = None,
) -> None:
    """AdaBN: each BatchNorm layer's moving mean and variance set to the statistics of its
    inputs over every batch of ``batches()`` (an iterable of float inputs the model takes, the
    same cells in the same order on every call), layer by layer so that each sees the earlier
    layers already adapted. ``weights``: one per cell (summing to 1; None: equal), for
    statistics in which each predicted class weighs the same (``class_balanced_weights``)."""
    import keras

    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs
    for layer in batchnorm_layers(model):
        try:
            probe = keras.Model(inputs, layer.input)
        except Exception as exc:  # noqa: BLE001 - a layer inside a nested model
            raise ModelError(
                f"AdaBN: cannot reach the inputs of BatchNorm layer {layer.name} "
                f"({type(exc).__name__})"
            ) from None
        axis = layer.axis if isinstance(layer.axis, int) else layer.axis[0]
        seen, total, squares = 0, 0.0, 0.0
        for batch in batches():
            values = np.asarray(probe(batch, training=False), np.float64)
            values = np.moveaxis(values, axis, -1).reshape(len(values), -1, values.shape[axis])
            # each cell's spatial mean and mean square, then the (weighted) mean over cells
            cell_w = (
                np.full(len(values), 1.0)
                if weights is None
                else np.asarray(weights[seen : seen + len(values)], np.float64)
            )
            total = total + cell_w @ values.mean(axis=1)
            squares = squares + cell_w @ (values**2).mean(axis=1)
            seen += len(values)
        if not seen:
            raise ModelError("AdaBN: no input to estimate the BatchNorm statistics from")
        norm = float(seen) if weights is None else 1.0
        mean = total / norm
        variance = np.maximum(squares / norm - mean**2, 0.0)
        dtype = np.asarray(layer.moving_mean).dtype
        layer.moving_mean.assign(mean.astype(dtype))
        layer.moving_variance.assign(variance.astype(dtype))


def batchnorm_statistics(model) -> dict[str, tuple[np.ndarray, np.ndarray, float]]:
    """Each BatchNorm layer's (moving mean, moving variance, epsilon), copied."""
    return {
        layer.name: (
            np.array(layer.moving_mean),
            np.array(layer.moving_variance),
            float(layer.epsilon),
        )
        for layer in batchnorm_layers(model)
    }


def batchnorm_shifts(before: dict, model) -> dict[str, float]:
    """How far each layer's mean moved from ``before``, in units of the old standard deviation
    (averaged over channels)."""
    shifts = {}
    for name, (mean, _, _) in batchnorm_statistics(model).items():
        old_mean, old_var, eps = before[name]
        shifts[name] = round(float(np.abs((mean - old_mean) / np.sqrt(old_var + eps)).mean()), 4)
    return shifts


def class_balanced_weights(posterior: np.ndarray) -> np.ndarray:
    """One weight per cell, summing to 1, so that every predicted class weighs the same:
    sum_c p(c|x) / mass_c, where mass_c (the class's summed posterior) is at least
    ``SCALER_MIN_MASS`` of the cells, so that a class predicted for one or two cells does not
    put all its weight on them."""
    posterior = np.asarray(posterior, np.float64)
    masses = np.maximum(posterior.sum(axis=0), SCALER_MIN_MASS * len(posterior))
    weights = (posterior / masses[None]).sum(axis=1)
    return weights / weights.sum()


# --------------------------------------------------------------------------- standardisation


def class_balanced_scaler(
    pipeline,
    features: np.ndarray,
    echo: Callable[[str], None] = lambda _m: None,
    balanced: bool = True,
) -> dict[str, Any]:
    """Re-estimate ``pipeline``'s StandardScaler (its first step, changed in place) on a lab's
    ``features`` weighted so that every predicted class weighs the same: the lab's class mix
    does not move the statistics, as the training scaler saw balanced classes.

    Each round predicts the lab's cells with the current scaler (soft: the posterior of each
    class), weights each cell by sum_c p(c|x) / mass_c (mass_c = the class's summed posterior,
    at least ``SCALER_MIN_MASS`` of the cells, so that a class predicted for one or two cells
    does not put all its weight on them) and sets the scaler's mean and scale to the weighted
    statistics. ``SCALER_ITERATIONS`` rounds. ``balanced`` False: the pooled mean and standard
    deviation of all cells, equally weighted (one round; for comparison)."""
    scaler = pipeline[0]
    if not hasattr(scaler, "mean_") or not hasattr(scaler, "scale_"):
        raise ModelError("the features model has no standardisation step to adapt")
    features = np.asarray(features, np.float64)
    source_mean, source_scale = scaler.mean_.copy(), scaler.scale_.copy()
    n = len(features)
    rounds = SCALER_ITERATIONS if balanced else 1
    for round_ in range(1, rounds + 1):
        posterior = pipeline.predict_proba(features)
        weights = class_balanced_weights(posterior) if balanced else np.full(n, 1.0 / n)
        mean = weights @ features
        variance = weights @ (features - mean) ** 2
        scale = np.sqrt(variance)
        # a feature constant on the lab's cells keeps the training scale (no division by 0)
        scale = np.where(scale > 1e-12, scale, source_scale)
        scaler.mean_, scaler.scale_, scaler.var_ = mean, scale, scale**2
        echo(
            f"standardisation round {round_}: predicted class shares "
            + " ".join(f"{m / n:.2f}" for m in posterior.sum(axis=0))
        )
    moved = np.abs(scaler.mean_ - source_mean) / source_scale
    return {
        "weighting": "class-balanced" if balanced else "pooled",
        "rounds": rounds,
        "mean_shift_sd": round(float(moved.mean()), 4),
        "largest_shift_sd": round(float(moved.max()), 4),
        "predicted_shares": [round(float(m / n), 4) for m in posterior.sum(axis=0)],
    }
