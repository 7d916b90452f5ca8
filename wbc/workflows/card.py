"""``MODEL_CARD.md``: what a trained model is for, what it learnt from, how well it does, and
where it fails, in the Hugging Face model-card layout (YAML metadata, then sections).

Why: a ``model.keras`` or ``.onnx`` handed to a colleague says nothing about its data, its
protocol or its limits. ``wbc train`` writes the card into every run, ``wbc cv`` writes one for
the recipe it cross-validated, and ``wbc export`` ships the run's card beside the exported file.
Every number about the model is read from the run's own files (``metrics.json``, a ``wbc cv``
summary); the limits quote the project's measurements in ``docs/RESULTS.md``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import yaml

from wbc.core.manifest import write_atomic
from wbc.imaging.domain import ADVISE_SHARE
from wbc.models.registry import describe

CARD_NAME = "MODEL_CARD.md"


INTENDED_USE = """\
- Research and teaching: name the type of a white blood cell (one of the classes above) in a
  stained peripheral blood-smear photograph, or count a differential over many smears, to
  explore methods and compare them honestly.
- A second reader in a laboratory that has validated it on its own slides, with every result
  reviewed by a qualified person."""

OUT_OF_SCOPE = """\
- **This is not a diagnostic device.** It is not cleared or approved for clinical use; do not
  use it to diagnose, treat or triage a patient, or to replace a manual differential.
- Cell types it was not trained on (for the public data's model: basophils, blasts, immature
  granulocytes, atypical or reactive lymphocytes, nucleated red cells) are named as one of the
  trained classes anyway.
- Slides from another laboratory, microscope, camera or stain without checking it there first:
  accuracy falls far (see Limitations); label a few of the lab's cells and use
  `wbc train --init RUN` to adapt (`wbc cv --data LAB --init RUN` measures it)."""


def _metadata(config: dict, metrics: Optional[dict], cv: Optional[dict]) -> dict[str, Any]:
    results = []
    for name, source, values in (
        ("test side", "test", metrics),
        ("cross-validation", "cv", (cv or {}).get("mean")),
    ):
        if values and values.get("accuracy") is not None:
            results.append(
                {
                    "task": {"type": "image-classification"},
                    "dataset": {"name": f"dataset-master ({name})", "type": source},
                    "metrics": [
                        {"type": "accuracy", "value": round(float(values["accuracy"]), 4)},
                        {
                            "type": "f1",
                            "name": "macro-F1",
                            "value": round(float(values["macro_f1"]), 4),
                        },
                    ],
                }
            )
    meta: dict[str, Any] = {
        "license": "mit",
        "library_name": "wbc",
        "pipeline_tag": "image-classification",
        "tags": [
            "white-blood-cells",
            "hematology",
            "blood-smear",
            "not-for-diagnosis",
            (config.get("model") or {}).get("family", ""),
        ],
        "metrics": ["accuracy", "f1"],
    }
    if results:
        meta["model-index"] = [{"name": "wbc", "results": results}]
    return meta


def _per_class_table(metrics: dict) -> str:
    rows = ["| class | precision | recall | F1 | images |", "|---|---|---|---|---|"]
    for cls, values in metrics.get("per_class", {}).items():
        rows.append(
            f"| {cls} | {values['precision']:.3f} | {values['recall']:.3f} | "
            f"{values['f1']:.3f} | {values['support']} |"
        )
    return "\n".join(rows)


def _cv_section(cv: Optional[dict], run_dir: Path) -> str:
    if not cv or not cv.get("mean"):
        return (
            "Not measured for this run. `wbc cv --config RUN/config.yaml --folds 5` "
            "cross-validates the same recipe on source-grouped folds; its folder gets a card "
            "with the numbers."
        )
    mean, std = cv["mean"], cv.get("std") or {}
    folds = len(cv.get("folds") or [])
    repeats = cv.get("repeats") or 1
    text = (
        f"Grouped cross-validation ({cv.get('k')} folds x {repeats} repeat(s), {folds} folds "
        f"scored; source images and same-field duplicates never straddle a fold): accuracy "
        f"**{mean['accuracy']:.3f} +/- {std.get('accuracy', 0.0):.3f}**, macro-F1 "
        f"**{mean['macro_f1']:.3f} +/- {std.get('macro_f1', 0.0):.3f}** (mean +/- sample "
        "standard deviation over folds)."
    )
    f1 = mean.get("per_class_f1") or {}
    if f1:
        text += "\n\n| class | F1 (mean over folds) |\n|---|---|\n" + "\n".join(
            f"| {cls} | {value:.3f} |" for cls, value in f1.items()
        )
    return text


DATASET_MASTER = (
    "the public BCCD-derived `dataset-master` folder (Kaggle 'Blood Cell Images'): 640x480 "
    "Giemsa/Wright-stained smear photographs from one laboratory, one labelled WBC each"
)


def _describe_data(data: Optional[dict]) -> str:
    if not data or data.get("layout", "dataset-master") == "dataset-master":
        return DATASET_MASTER
    return (
        f"a laboratory's own images, `{data.get('raw')}` ({data.get('layout')} layout): "
        f"{data.get('source_images')} source images of {', '.join(data.get('classes') or [])}"
    )


def _data_lines(info: dict) -> list[str]:
    """Where the model's training images came from, and what it was adapted from (run.json)."""
    lines = [f"- Trained on {_describe_data(info.get('data'))}."]
    origin = info.get("adapted_from")
    adaptation = info.get("adaptation")
    if isinstance(origin, dict) and adaptation:
        methods = ", ".join(
            ("" if "member" not in part else f"member {part['member']} ")
            + f"{part.get('part')}: {part.get('method')}"
            for part in adaptation.get("parts", [])
            if part.get("kept", True)
        )
        lines.append(
            f"- **Adapted without labels** (`wbc adapt`) from the run `{origin.get('run')}` to "
            f"the {adaptation.get('cells')} cells of `{adaptation.get('folder')}` "
            f"({methods}); trained on {_describe_data(origin.get('data'))}."
        )
    elif isinstance(origin, dict):
        lines.append(
            f"- **Adapted** from the run `{origin.get('run')}` (`{origin.get('model')}`), "
            f"trained on {_describe_data(origin.get('data'))}: it started from that model "
            "(the features family refits with that model's training crops as well, weighted "
            "to equal the lab's)."
        )
    return lines


def render_card(
    run_dir: Path,
    *,
    config: dict,
    metrics: Optional[dict] = None,
    cv: Optional[dict] = None,
    title: Optional[str] = None,
    info: Optional[dict] = None,
) -> str:
    """The card's markdown for a run (``metrics``: its metrics.json, ``info``: its run.json) or
    a cv folder (``cv``)."""
    model = config.get("model") or {}
    family = "ensemble" if model.get("ensemble") else model.get("family", "?")
    crop, color, split = (
        config.get("crop") or {},
        config.get("color") or {},
        config.get("split") or {},
    )
    classes = (
        (metrics or {}).get("classes")
        or (cv or {}).get("classes")
        or (config.get("rename") or {}).get("classes")
        or []
    )
    meta = yaml.safe_dump(_metadata(config, metrics, cv), sort_keys=False).strip()
    lines = [
        "---",
        meta,
        "---",
        "",
        f"# Model card: {title or Path(run_dir).name}",
        "",
        "## Model details",
        "",
        f"- **Family:** `{family}`: {describe(family)}."
        + (f" Members: {', '.join(model['ensemble'])}." if model.get("ensemble") else ""),
        f"- **Classes** (output order): {', '.join(classes)}."
        + (
            " Basophils are absent: too rare in the source data to learn."
            if "BASOPHIL" not in classes
            else ""
        ),
        f"- **Input:** a cell crop ({crop.get('mode', 'none')} crop of the smear, padding "
        f"{crop.get('padding')}), colour `{color.get('input', 'rgb')}`, stain normalisation "
        f"`{color.get('normalize', 'none')}`"
        + (", test-time augmentation on" if model.get("tta") else "")
        + ".",
        f"- **Seed:** {config.get('seed')}. The full resolved settings are `config.yaml` beside "
        "this card; `wbc train --config config.yaml` retrains the same model.",
        "- **Made with:** wbc, a reproducible command-line pipeline for the Kaggle "
        "'Blood Cell Images' study.",
        "",
        "## Intended use",
        "",
        INTENDED_USE,
        "",
        "## Out-of-scope use",
        "",
        OUT_OF_SCOPE,
        "",
        "## Training data",
        "",
        *_data_lines(info or {}),
        f"- Protocol: `{split.get('protocol', 'grouped')}` split"
        + (
            " (leak-free: source images, and same-field duplicates, are split before "
            "augmentation, so no copy of a test cell is trained on)"
            if split.get("protocol", "grouped") == "grouped"
            else " (the study's leaky protocol: augmented copies of one cell fall on both sides; "
            "its "
            "test accuracy is inflated)"
        )
        + f"; test fraction {split.get('test_fraction')}.",
        "- Augmentation: the study's transforms up to "
        f"{(config.get('augment') or {}).get('per_class')} "
        "images per class, on the training side only.",
    ]
    if metrics and metrics.get("train_images") is not None:
        lines.append(
            f"- Trained on {metrics.get('train_images')} images of subset "
            f"`{metrics.get('subset')}`."
        )
    lines += ["", "## Evaluation", ""]
    if metrics and metrics.get("accuracy") is None:
        lines += [f"Not scored: {metrics.get('note', 'no test side')}.", ""]
    elif metrics:
        lines += [
            f"On the run's held-out test side ({metrics.get('n_images')} images): accuracy "
            f"**{metrics['accuracy']:.3f}**, macro-F1 **{metrics['macro_f1']:.3f}**. With so few "
            "test images this figure moves by several points between seeds; the "
            "cross-validation below is the one to quote.",
            "",
            _per_class_table(metrics),
            "",
        ]
    lines += ["### Cross-validation", "", _cv_section(cv, run_dir), ""]
    lines += [
        "## Limitations",
        "",
        "- **Monocytes** are the weakest class: about 20 source images in the public data, so "
        "their recall varies most between folds.",
        "- **Other laboratories' stains and microscopes:** measured on another lab's crops "
        "(tecom-crops, 299 cells), no model measured in this project reaches useful accuracy "
        "without labels or adaptation (the default recipe answers 'neutrophil' for every cell, "
        "and flags every cell out of domain; no model above 0.65 / 0.50; docs/RESULTS.md). "
        "`wbc adapt` on the lab's unlabelled cells takes the default to 0.79-0.82 accuracy, "
        "macro-F1 0.71-0.75 (weighted by the lab's true classes, the same re-standardisation "
        "reaches 0.79-0.83); `wbc count` does the same on the sample it counts when the "
        "out-of-domain flag advises it (`--adapt auto`, its default). Adapting with 20 "
        "labelled cells per class (`wbc train --init`) lifts it to 0.88-0.89 (the K-curve in "
        "docs/RESULTS.md).",
        "- **Out-of-domain flag:** each prediction carries `out_of_domain`, from the distance "
        "of the image's stain statistics to the training images' (`domain.json`). It marks "
        "images unlike the training data; it is not a guarantee that unflagged answers are "
        "right.",
        "- **Exposure:** the colour measurements need an unclipped background. Where the "
        "camera saturated it (`saturated_background` on a prediction; a warning when "
        f"{ADVISE_SHARE:.0%} of a batch's images are), white balance cannot recover the "
        "clipped channels, and the answers move.",
        "- **Basophils** (and every cell type outside the classes above) are never predicted.",
        "- One lab, one camera, 349 source images in the public data: small for a medical "
        "image classifier.",
        "",
        "## How to use",
        "",
        "```",
        f"wbc predict smear.jpg --model {Path(run_dir).name}",
        f"wbc count smears/ --model {Path(run_dir).name} --report count.html",
        f"wbc export {Path(run_dir).name} --format onnx",
        "```",
        "",
    ]
    return "\n".join(lines)


def write_run_card(
    run_dir: Path, cv: Optional[dict] = None, metrics: Optional[dict] = None
) -> Path:
    """Write ``RUN/MODEL_CARD.md`` from the run's config.yaml and ``metrics`` (default: its
    metrics.json), and ``cv``, a ``wbc cv`` summary of the same recipe, when known."""
    run_dir = Path(run_dir)
    config = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    metrics_path = run_dir / "metrics.json"
    if metrics is None and metrics_path.is_file():
        metrics = json.loads(metrics_path.read_text(encoding="utf-8"))
    path = run_dir / CARD_NAME
    from wbc.core.runfolder import read_run_info

    info = read_run_info(run_dir)
    write_atomic(path, render_card(run_dir, config=config, metrics=metrics, cv=cv, info=info))
    return path


def write_cv_card(out: Path, summary: dict) -> Path:
    """Write ``OUT/MODEL_CARD.md`` for a ``wbc cv`` folder: the recipe and its CV metrics."""
    out = Path(out)
    path = out / CARD_NAME
    write_atomic(
        path,
        render_card(
            out,
            config=summary.get("config") or {},
            cv=summary,
            title=f"{out.name} (cross-validated recipe)",
        ),
    )
    return path
