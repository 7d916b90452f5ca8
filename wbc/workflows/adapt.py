"""``wbc adapt RUN --unlabelled FOLDER --out NEW_RUN``: a copy of a run adapted to one lab from
that lab's unlabelled cells (``wbc.models.adaptation`` has the methods and why).

Both a command of its own and ``wbc count --adapt``. This command adapts once per lab, and its
result is a run folder, which every other command then uses unchanged (predict, count,
evaluate, compare, explain) and which records what it was adapted on; ``compare`` can score it
beside the run it came from. ``wbc count`` (``--adapt auto``, its default) and ``wbc predict
--adapt`` do the same in memory on the cells they are given
(``wbc.workflows.predict.adapt_on_sample``), when the out-of-domain flag advises it: a lab
that never runs this command still gets a differential from a model adapted to its stain. Its
answer then depends on the sample, so the run folder stays the way to fix one model for a lab.

What it does:

1. every image under FOLDER (any nesting; folder names are never read: no labels) becomes the
   model input that ``wbc predict`` would give it (``wbc.workflows.predict.load_input``: a
   whole-field smear is cut to its main WBC, a near-square image is taken as a crop, as with
   ``--input auto``); the cells are put in the order of their content digests, so the result
   does not depend on file names or folders;
2. the family re-estimates its input statistics on them (``Classifier.adapt_to``: AdaBN for the
   Keras families, re-standardisation for the features family, each member of an ensemble as
   its family does), each cell weighted by 1 / its predicted class's mass (``balanced``, the
   default) or all equally (``--pooled``);
3. class priors, only with ``--priors auto`` or ``always`` (``DEFAULT_PRIORS`` is ``never``):
   a temperature is fitted on the run's own held-out side (the test side of its
   subset, or ``calibration``), EM with bounded priors is checked there under simulated class
   mixes, and only if it gains there are the lab's priors estimated and written to
   ``prior_correction.json``, which every later command applies;
4. the new run folder is written whole under a temporary name and renamed into place: the
   adapted model file, the run's config.yaml, classes.json, stain reference and training
   features, ``domain.json`` refitted on the lab's cells (the adapted run's domain), run.json
   (what it was adapted on, the method per part), then metrics.json (the adapted run on the
   held-out source side) last.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import BadImage, DataError, ModelError
from wbc.core.progress import no_echo

PRIOR_MODES = ("auto", "always", "never")  # auto: EM only if it gains on held-out source data
# Why EM is off unless asked for: naive EM lowered accuracy on three of the four withheld
# labs, and on tecom-crops every default run that ``auto`` let EM into lost 0.03-0.04 accuracy
# and 0.10-0.13 macro-F1 (EM put monocytes at 5% of the lab, 16% in truth; their recall fell from
# 0.31-0.40 to 0.00-0.02). ``auto``'s check runs on the source lab, where the temperature fits;
# off it the posteriors are miscalibrated in ways the check cannot see (docs/RESULTS.md, "EM
# priors off by default").
DEFAULT_PRIORS = "never"


def folder_digest(files: list[Path]) -> tuple[str, list[str]]:
    """``(digest, per-file digests)``: SHA-256 over the sorted SHA-256s of the files' contents,
    so that names and folders (class folders included) do not change it."""
    from wbc.core.manifest import sha256_file

    each = [sha256_file(path) for path in files]
    return hashlib.sha256("\n".join(sorted(each)).encode()).hexdigest(), each


def load_cells(
    run,
    folder: Path,
    input_kind: str = "auto",
    echo: Callable[[str], None] = no_echo,
) -> tuple[np.ndarray, dict[str, Any]]:
    """The lab's cells as the run's uint8 model inputs (N, H, W, 3), in content-digest order,
    and what was read: folder, images, cells, skipped, digest, and how many images have a
    saturated background (``wbc.imaging.domain.saturation_summary``; echoed as a warning)."""
    from wbc.core.imageio import read_rgb
    from wbc.imaging.color import saturated_channels
    from wbc.imaging.domain import saturation_summary, saturation_warning
    from wbc.workflows.predict import iter_loaded, main_input, require_images

    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found (expected a folder of a lab's images)")
    files = require_images([folder])
    digest, each = folder_digest(files)
    files = [path for _, path in sorted(zip(each, files), key=lambda pair: pair[0])]
    echo(f"reading {len(files)} images under {folder}")

    def load(path: Path) -> tuple[np.ndarray, tuple[str, ...]]:
        rgb = read_rgb(path)
        pixels = main_input(rgb, path, run.spec, run.crop_size, input_kind=input_kind)
        return pixels, saturated_channels(rgb)

    cells, skipped, saturated = [], [], []
    for path, loaded in iter_loaded(files, load):
        if isinstance(loaded, BadImage):
            skipped.append({"path": str(path), "reason": loaded.reason})
        else:
            cells.append(loaded[0])
            saturated.append(loaded[1])
    if not cells:
        reason = skipped[0]["reason"] if skipped else "no image"
        raise DataError(
            f"{folder}: none of its {len(files)} images gave a cell to adapt on ({reason})"
        )
    facts = {
        "folder": str(folder.resolve()),
        "images": len(files),
        "cells": len(cells),
        "skipped": skipped,
        "digest": f"sha256:{digest}",
        "input": input_kind,
        "labels_used": False,
        "saturated_background": saturation_summary(saturated),
    }
    if warning := saturation_warning(facts["saturated_background"]):
        echo(warning)
    return np.stack(cells), facts


def calibration_folder(run, given: Optional[Path]) -> Optional[Path]:
    """Held-out source data to calibrate on: ``given``, else the test side of the run's subset
    (from run.json's data folder); None when neither exists."""
    from wbc.core.runfolder import recorded_data_dir

    if given is not None:
        if not Path(given).is_dir():
            raise DataError(f"{given}: calibration folder not found")
        return Path(given)
    data_dir = recorded_data_dir(run.run_dir)
    if data_dir is None:
        return None
    side = data_dir / "processed" / run.config.train.subset / "test"
    return side if side.is_dir() else None


def prior_part(
    source_run,
    lab_probs: np.ndarray,
    calibration: Optional[Path],
    echo: Callable[[str], None],
    force: bool = False,
):
    """The class-prior part: ``(PriorCorrection or None, its record for run.json)``."""
    from wbc.imaging.feeds import list_class_files
    from wbc.models.adaptation import (
        PRIOR_FLOOR,
        PRIOR_PSEUDO_CELLS,
        PriorCorrection,
        em_priors,
        fit_temperature,
        simulated_shift_gain,
        tempered,
    )
    from wbc.workflows.evaluate import predict_files

    n_classes = len(source_run.classes)
    # wbc trains on classes balanced by augmentation (and the SVM weighs them so): the model's
    # posteriors are those of equal priors.
    source = np.full(n_classes, 1.0 / n_classes)
    record: dict[str, Any] = {
        "part": "priors",
        "method": "EM (Saerens et al. 2002) on temperature-calibrated posteriors, priors "
        f"shrunk toward the training prior ({PRIOR_PSEUDO_CELLS:g} pseudo-cells) and floored "
        f"at {PRIOR_FLOOR:g}; kept only if it gains on held-out source data under simulated "
        "class mixes",
        "source_prior": source.round(4).tolist(),
    }
    if calibration is None:
        record.update(kept=False, reason="no held-out source data to calibrate on")
        echo("priors: skipped (no held-out source data; pass --calibration FOLDER)")
        return None, record
    _, files, labels = list_class_files(calibration, list(source_run.classes))
    echo(f"calibrating on {len(files)} held-out source images in {calibration}")
    probs, kept, _, _ = predict_files(source_run, files)
    labels = labels[kept]
    temperature = fit_temperature(probs, labels)
    check = simulated_shift_gain(
        tempered(probs, temperature), labels, source, source_run.config.seed
    )
    target, iterations = em_priors(tempered(lab_probs, temperature), source)
    record.update(
        calibration={"folder": str(Path(calibration).resolve()), "images": int(len(labels))},
        temperature=round(temperature, 4),
        held_out_check=check,
        em_iterations=iterations,
        estimated_prior=target.round(4).tolist(),
    )
    gain = check.get("gain")
    if (gain is None or gain <= 0) and not force:
        record.update(kept=False, reason="EM did not gain on held-out source data")
        echo(f"priors: EM not kept (held-out gain {gain}); the model's own priors stay")
        return None, record
    record["kept"] = True
    if gain is None or gain <= 0:
        record["forced"] = "--priors always: kept although it did not gain on held-out data"
    echo(
        f"priors: temperature {temperature:.3f}, EM in {iterations} iterations -> "
        + " ".join(f"{c} {p:.3f}" for c, p in zip(source_run.classes, target))
        + f" (held-out gain {gain:+.4f})"
    )
    return PriorCorrection(temperature, tuple(source.tolist()), tuple(target.tolist())), record


def adapt(
    model: Path,
    unlabelled: Path,
    out: Path,
    *,
    input_kind: str = "auto",
    calibration: Optional[Path] = None,
    priors: str = DEFAULT_PRIORS,
    balanced: bool = True,
    echo: Callable[[str], None] = no_echo,
) -> dict[str, Any]:
    """Write ``out``: the run at ``model`` adapted to the cells under ``unlabelled``. Returns
    the ``adaptation`` record that run.json holds."""
    from wbc import __version__
    from wbc.core.manifest import atomic_path, write_json
    from wbc.core.runfolder import RUN_INFO_NAME
    from wbc.imaging.domain import (
        few_cells_warning,
        fit_reference,
        stain_vector,
        write_reference,
    )
    from wbc.models.adaptation import AdaptedClassifier, write_correction
    from wbc.models.runs import RUN_DEFINITION_FILES, load_run, resolve_model_path
    from wbc.workflows.evaluate import evaluate
    from wbc.workflows.predict import Predictor

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: already exists; choose another --out")
    source_path = resolve_model_path(model)
    run = load_run(source_path)
    if isinstance(run.model, AdaptedClassifier):
        raise ModelError(
            f"{run.run_dir}: already adapted (it has a prior correction); adapt the run it "
            "came from instead"
        )
    cells, facts = load_cells(run, unlabelled, input_kind, echo)
    echo(f"adapting {run.model_path} on {facts['cells']} cells")
    if warning := few_cells_warning(facts["cells"]):
        echo(warning)
    if priors not in PRIOR_MODES:
        raise ValueError(f"priors must be one of {PRIOR_MODES}, not {priors!r}")
    calib = calibration_folder(run, calibration) if priors != "never" else None
    # A second copy of the run: the source model is needed unchanged for calibration.
    adapted = load_run(source_path)
    parts = adapted.model.adapt_to(cells, echo, balanced)
    correction = None
    if priors != "never":
        lab_probs = Predictor(adapted.model, engine="tensorflow", cache=False)(cells)
        correction, record = prior_part(run, lab_probs, calib, echo, force=priors == "always")
        record["predicted_shares_before"] = (
            (np.bincount(lab_probs.argmax(axis=1), minlength=len(run.classes)) / len(lab_probs))
            .round(4)
            .tolist()
        )
        parts.append(record)
    else:
        parts.append(
            {"part": "priors", "method": "none", "kept": False, "reason": "--priors never"}
        )

    source_info: dict[str, Any] = {}
    try:
        source_info = json.loads((run.run_dir / RUN_INFO_NAME).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    adaptation = {**facts, "source_run": str(run.run_dir.resolve()), "parts": parts}
    with atomic_path(out) as tmp:
        tmp.mkdir(parents=True)
        adapted.model.save(tmp / run.model_path.name)
        for name in RUN_DEFINITION_FILES:  # the model file is written anew
            if (run.run_dir / name).is_file():
                (tmp / name).write_bytes((run.run_dir / name).read_bytes())
        write_reference(fit_reference(np.stack([stain_vector(c) for c in cells])), tmp)
        if correction is not None:
            write_correction(correction, tmp)
        info = {
            "started": datetime.now().isoformat(timespec="seconds"),
            "wbc": __version__,
            "data_dir": source_info.get("data_dir"),
            "strategy": source_info.get("strategy", "default"),
            "data": source_info.get("data"),
            # the same record as wbc train --init writes, so the model card reads both alike
            "adapted_from": {
                "run": str(run.run_dir.resolve()),
                "model": run.model_path.name,
                "data": source_info.get("data"),
                "labels_used": False,
            },
            "adaptation": adaptation,
        }
        write_json(tmp / RUN_INFO_NAME, info)
        # Last, as wbc train does: the adapted run on the held-out source side.
        if calib is None:
            calib = calibration_folder(run, calibration)
        if calib is not None:
            metrics = evaluate(tmp / run.model_path.name, calib)
            metrics["model"] = str(out / run.model_path.name)
        else:
            metrics = {"accuracy": None, "note": "no held-out source data to score on"}
        metrics.update(adapted_from=str(run.run_dir.resolve()), family=run.config.model.family)
        write_json(tmp / "metrics.json", metrics)
    from wbc.workflows.card import write_run_card

    write_run_card(out)  # says what it was adapted on, without labels
    echo(f"adapted run written to {out}")
    return adaptation
