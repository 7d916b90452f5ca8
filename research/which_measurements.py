"""Which measurements send a lab's cells to one answer as is: a diagnosis, not a method.

Produced docs/RESULTS.md's "Stain strength as augmentation" diagnosis (issue 23, thirteenth
pass).

Why: the default run answers "neutrophil" for every tecom cell as is. This prints, for a features
run and a lab's folder, where the lab's measurements lie in the run's own standardised units
(the training scaler): the measurements that moved most (median over the lab's cells, in training
standard deviations), and what the run answers when one group of measurements (shape, or each
region's colour) is moved back by the lab's own mean and spread, the other groups left as they
are. A group whose re-standardisation alone changes the answers is where the lab's look enters.
Labels are read only to score; nothing here chooses a setting.

Usage: python research/which_measurements.py FOLDER RUN [RUN ...] [--input auto|crop] [--top 12]
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from labelled_folder import accuracy_and_f1, folder_and_runs, labelled_cells  # noqa: E402

from wbc.models.base import resize_batch  # noqa: E402
from wbc.models.nucleus import REGIONS, batch_features, feature_names  # noqa: E402


def measurement_groups(names: tuple[str, ...]) -> dict[str, list[int]]:
    """Indices of the shape measurements, of each region's colour, and of all colour."""
    groups = {
        region: [i for i, name in enumerate(names) if name.startswith(region + "_")]
        for region in REGIONS
    }
    colour = sorted(i for indices in groups.values() for i in indices)
    return {
        "shape": [i for i in range(len(names)) if i not in colour],
        **groups,
        "all colour": colour,
    }


def diagnose(run_dir: Path, folder: Path, input_kind: str, top: int) -> None:
    run, cells, truth = labelled_cells(run_dir, folder, input_kind)
    model, pipeline = run.model, run.model.pipeline
    measured = batch_features(resize_batch(cells, model.image_size), model.colour, model.nucleus)
    standardised = (measured.astype(np.float64) - pipeline[0].mean_) / pipeline[0].scale_
    classifier, classes = pipeline[-1], list(run.classes)
    names = feature_names(model.colour)

    def report(label: str, values: np.ndarray) -> None:
        answers = classifier.predict_proba(values).argmax(axis=1)
        accuracy, macro_f1 = accuracy_and_f1(truth, {label: answers})[label]
        counts = np.bincount(answers, minlength=len(classes))
        shares = ", ".join(f"{c.lower()} {n}" for c, n in zip(classes, counts))
        print(f"{run_dir.name}, {label}: {accuracy:.3f} / {macro_f1:.3f} ({shares})")

    report("as is", standardised)
    shift = np.median(standardised, axis=0)
    print(f"{run_dir.name}: the {top} measurements that moved most (median, training SDs; spread)")
    for i in np.argsort(-np.abs(shift))[:top]:
        print(f"  {names[i]:34s} {shift[i]:+7.2f}  {standardised[:, i].std():5.2f}")
    for group, indices in measurement_groups(names).items():
        moved = standardised.copy()
        part = moved[:, indices]
        moved[:, indices] = (part - part.mean(axis=0)) / np.maximum(part.std(axis=0), 1e-12)
        report(f"{group} ({len(indices)}) re-standardised by the lab", moved)


def main(argv: list[str] | None = None) -> int:
    parser = folder_and_runs(__doc__.splitlines()[0])
    parser.add_argument("--top", type=int, default=12, help="measurements listed per run")
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        diagnose(run_dir, args.folder, args.input, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
