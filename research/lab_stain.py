"""White balance only, and one stain map for a whole lab: a features probe (issue 23, eighth pass).

Produced docs/RESULTS.md's "One stain map per lab" rows.

Why: the default's Reinhard maps each crop by its **own** stained pixels' LAB statistics. A
crop's stained pixels are its white cell and any red cells around it; another lab's crops (tecom's)
hold few red cells, so each crop is mapped by the statistics of its own cell, and those depend on
the cell's class. Two rows avoid a per-crop map:
- a run trained with ``color.normalize=balance`` (each crop divided by its own background colour,
  nothing else), scored as is and adapted (``wbc adapt --priors never``: the class-balanced scaler);
- the same run with one Reinhard map for the whole lab: every crop white-balanced, then mapped from
  the lab's median per-crop LAB statistics to the training set's (``training_stain``), the same
  map for every crop; as is, and adapted on the mapped crops.

Settings and rule were written down before any score (RESULTS). The folder's class names are read
**only to score**. Prints each folder's accuracy / macro-F1 and each stage's mean over the folders.

Usage: python research/lab_stain.py RUN [RUN ...] --folders F [F ...] [--input auto|crop]
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import (  # noqa: E402
    accuracy_and_f1,
    as_is_and_adapted,
    labelled_cells,
    score_folders,
)

from wbc.imaging.color import reinhard, reinhard_stats, training_reference  # noqa: E402
from wbc.imaging.feeds import list_class_files  # noqa: E402
from wbc.imaging.preprocess import load_resized  # noqa: E402
from wbc.workflows.adapt import load_cells  # noqa: E402


def training_stain(run_dir: Path, run):
    """The training set's median per-crop LAB statistics, drawn as a reinhard run draws them:
    the same seeded sample of the run's training crops (beside its test folder)."""
    test_dir = Path(json.loads((run_dir / "metrics.json").read_text())["data"])
    _, files, _ = list_class_files(test_dir.parent / "train")
    size = tuple(run.config.train.image_size)
    return training_reference(
        "reinhard", files, lambda path: load_resized(path, size), run.config.seed
    )


def lab_map(raw: np.ndarray, reference) -> np.ndarray:
    """Every crop mapped by one Reinhard map: the lab's median per-crop statistics -> reference."""
    stats = [reinhard_stats(crop) for crop in raw]
    source = (np.median([s[0] for s in stats], axis=0), np.median([s[1] for s in stats], axis=0))
    source = (source[0], np.maximum(source[1], 1.0))
    return np.stack([reinhard(crop, reference, source=source) for crop in raw])


def scores(run_dir: Path, folder: Path, input_kind: str) -> dict[str, tuple[float, float]]:
    run, cells, truth = labelled_cells(run_dir, folder, input_kind)
    answers = as_is_and_adapted(run, run_dir, cells)
    if run.spec.stain_normalize == "balance":
        unmapped = dataclasses.replace(
            run, spec=dataclasses.replace(run.spec, stain_normalize="none")
        )
        raw, _ = load_cells(unmapped, folder, input_kind=input_kind)
        mapped = lab_map(raw, training_stain(run_dir, run))
        answers.update(
            {f"lab map, {k}": v for k, v in as_is_and_adapted(run, run_dir, mapped).items()}
        )
    return accuracy_and_f1(truth, answers)


def main(argv: list[str] | None = None) -> int:
    return score_folders(__doc__.splitlines()[0], scores, argv)


if __name__ == "__main__":
    sys.exit(main())
