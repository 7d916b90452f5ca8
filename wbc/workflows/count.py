"""``wbc count``: a WBC differential of one sample, through ``wbc.workflows.predict``'s input
path."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import DataError
from wbc.core.progress import no_echo
from wbc.imaging.domain import adaptation_advice, saturation_summary, saturation_warning
from wbc.workflows.predict import (
    DEFAULT_BATCH,
    Predictor,
    Progress,
    classify_sample,
    require_images,
    text_table,
)


def percentages(counts: Sequence[int], decimals: int = 2) -> list[float]:
    """Percent of each count, rounded so that they add up to exactly 100 (largest remainder)."""
    total = sum(counts)
    if total == 0:
        return [0.0 for _ in counts]
    unit = 10**decimals
    exact = [c * 100 * unit / total for c in counts]
    floors = [math.floor(x) for x in exact]
    short = 100 * unit - sum(floors)
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:short]:
        floors[i] += 1
    return [f / unit for f in floors]


def count_cells(
    run,
    folder: Path | str,
    *,
    input_kind: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    workers: Optional[int] = None,
    progress: Progress = None,
    predictor: Optional[Predictor] = None,
    files: Optional[Sequence[Path]] = None,
    details: bool = False,
    ray_options: Any = None,
    adapt: str = "never",
    engine: str = "auto",
    echo: Callable[[str], None] = no_echo,
) -> dict[str, Any]:
    """A WBC differential of one sample: how many cells of each class, and the percentages.

    With a run trained on crops (crop.mode boxes/detect) every WBC that
    ``wbc.data.cells.detect_cells``
    finds in an image is classified and counted; with crop.mode none each image is one cell.
    Unreadable images are listed in ``failed`` and not counted. ``details``: also ``files``,
    each image's cells (box, class, probability, out_of_domain), for ``wbc count --report``.
    ``ray_options``: classify on a Ray cluster (``wbc.workflows.predict.classify_on_ray``).
    ``adapt``: ``never``, ``auto`` or ``always``: adapt a copy of the run on this sample's cells
    first (``wbc.workflows.predict.adapt_on_sample``); ``adapted`` then says what was done.
    """
    folder = Path(folder)
    if files is None:
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
        files = require_images([folder])
    per_cell = run.spec.crop_mode != "none"
    results, adaptation = classify_sample(
        run,
        files,
        all_cells=per_cell,
        input_kind=input_kind,
        batch_size=batch_size,
        workers=workers,
        progress=progress,
        predictor=predictor,
        ray_options=ray_options,
        adapt=adapt,
        engine=engine,
        echo=echo,
    )
    return _differential(run, folder, results, per_cell, details, adaptation)


def _differential(
    run, folder: Path, results, per_cell: bool, details: bool, adaptation=None
) -> dict[str, Any]:
    classes = list(run.classes)
    counts = [0] * len(classes)
    failed, no_cells = [], []
    flagged = 0
    per_file = []
    for result in results:
        if result.error:
            failed.append({"file": str(result.path), "error": result.error})
            continue
        if not result.probabilities:
            no_cells.append(str(result.path))
        for probs in result.probabilities:
            counts[int(np.argmax(probs))] += 1
        outside = (
            run.domain.outside(result.distances)
            if run.domain is not None
            else np.zeros(len(result.probabilities), bool)
        )
        flagged += int(np.sum(outside))
        if details:
            per_file.append(
                {
                    "file": str(result.path),
                    "cells": [
                        {
                            "box": list(box) if box is not None else None,
                            "class": classes[int(np.argmax(probs))],
                            "probability": round(float(np.max(probs)), 6),
                            "out_of_domain": bool(out),
                        }
                        for box, probs, out in zip(result.boxes, result.probabilities, outside)
                    ],
                }
            )
    percent = percentages(counts)
    extra = {"files": per_file} if details else {}
    return {
        "folder": str(folder),
        "model": str(run.model_path),
        "per": "cell" if per_cell else "image",
        "images": len(results),
        "classified_images": len(results) - len(failed),
        "cells": sum(counts),
        "classes": classes,
        "counts": dict(zip(classes, counts)),
        "percent": dict(zip(classes, percent)),
        "failed": failed,
        "no_cells": no_cells,
        # cells whose stain lies beyond the run's out-of-domain threshold (None: no domain.json)
        "out_of_domain": flagged if run.domain is not None else None,
        # images whose background the camera clipped (wbc.imaging.domain.saturation_summary)
        "saturated_background": saturation_summary([r.saturated for r in results if not r.error])
        if run.domain is not None
        else None,
        "adaptation_advised": None
        if run.domain is None or adaptation is not None
        else adaptation_advice(flagged, sum(counts), run.run_dir, folder),
        # what adapting on this sample did (--adapt); None: the run as it is counted
        "adapted": adaptation,
        **extra,
    }


def format_count(result: dict[str, Any], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt != "table":
        raise ValueError(f"format must be table or json, not {fmt!r}")
    rows = [
        [c, str(result["counts"][c]), f"{result['percent'][c]:.1f}%"] for c in result["classes"]
    ]
    rows.append(["total", str(result["cells"]), "100.0%" if result["cells"] else "0.0%"])
    table = text_table(["class", "count", "percent"], rows, right=(1, 2))
    if result.get("out_of_domain"):
        table += (
            f"{result['out_of_domain']} of {result['cells']} cells are out of domain "
            "(stain unlike the training images): check them before trusting the counts\n"
        )
    if warning := saturation_warning(result.get("saturated_background")):
        table += warning + "\n"
    if result.get("adaptation_advised"):
        table += result["adaptation_advised"] + "\n"
    if result.get("adapted"):
        table += (
            f"counted after adapting the model on this sample's {result['adapted']['cells']} "
            "cells (no labels); --adapt never counts with the run as it is\n"
        )
    return table


def plot_counts(result: dict[str, Any], path: Path | str) -> Path:
    """A bar chart (PNG) of the differential: percent per class, counts on the bars."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    classes = result["classes"]
    percent = [result["percent"][c] for c in classes]
    counts = [result["counts"][c] for c in classes]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = colormaps["tab10"].colors  # one colour per class, up to ten classes
    bars = axes.bar(classes, percent, color=[palette[i % 10] for i in range(len(classes))])
    for bar, count, pct in zip(bars, counts, percent):
        axes.annotate(
            f"{count} ({pct:.1f}%)",
            (bar.get_x() + bar.get_width() / 2, bar.get_height()),
            ha="center",
            va="bottom",
            fontsize=9,
            xytext=(0, 2),
            textcoords="offset points",
        )
    axes.set_ylabel("percent of cells")
    axes.set_ylim(0, max(max(percent, default=0) * 1.15, 10))
    unit = "cells" if result.get("per") == "cell" else "images"
    axes.set_title(f"WBC differential: {result['cells']} {unit} in {Path(result['folder']).name}")
    figure.tight_layout()
    from wbc.core.manifest import atomic_path

    with atomic_path(Path(path)) as tmp:
        figure.savefig(tmp, format="png")
    return path
