"""Score test-time augmentation and family averages on the folds of finished ``wbc cv`` runs.

Produced docs/RESULTS.md's TTA and family-average rows ("Test-time augmentation").

Why: TTA and an average of families change only how trained models are used, so they can be
measured on the models a CV already trained, on the same test folds, without training again.
Give it one or more ``wbc cv`` output folders made with the same seed, folds and data (their
``folds.json`` must agree: the script checks). For every fold it loads each folder's final
model (``last.keras``, or the one model a features run has), predicts that fold's test images
through ``wbc.workflows.predict.Predictor`` (the path ``wbc predict`` takes), with and without TTA,
and
scores:

- each folder's model alone, and with TTA (``Predictor(tta=True)``: the 8 dihedral views);
- the mean of the folders' probabilities (what ``model.ensemble`` computes), with and without
  TTA for the CNN members.

It prints one row per variant: accuracy and macro-F1 (mean +/- sample std over folds), each
class's recall (pooled over folds), and the milliseconds per cell of the prediction calls.

Usage: python research/cv_variants.py CV_DIR [CV_DIR ...] [--json out.json] [--markdown]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.errors import WbcError  # noqa: E402


def final_model(run_dir: Path) -> Path:
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    last = metrics.get("last_model", "last.keras" if (run_dir / "last.keras").is_file() else None)
    return run_dir / (last or metrics.get("evaluated_model", "model.keras"))


def fold_probabilities(cv_dir: Path, fold: dict, tta: bool):
    """(probabilities, labels, seconds, cells) of one folder's final model on one fold."""
    from wbc.imaging.feeds import list_class_files
    from wbc.models.runs import load_run
    from wbc.workflows.predict import Predictor, classify_files

    name = fold["fold"]
    run = load_run(final_model(cv_dir / f"fold-{name}"))
    test_dir = cv_dir / "data" / f"fold-{name}" / "test"
    _, files, labels = list_class_files(test_dir, list(run.classes))
    predictor = Predictor.from_run(run, cache=False, tta=tta)
    started = time.perf_counter()
    results = classify_files(predictor, files, run.spec, run.crop_size)
    seconds = time.perf_counter() - started
    if any(r.error for r in results):
        raise WbcError(f"{test_dir}: unreadable test images")
    return (
        np.stack([r.probabilities[0] for r in results]),
        labels,
        seconds,
        len(files),
        list(run.classes),
    )


def score(rows):
    """Mean/std of accuracy and macro-F1 over folds, pooled recall per class."""
    from wbc.core.metrics import compute_metrics

    per_fold = [
        compute_metrics(labels, probs.argmax(1), classes) for probs, labels, classes in rows
    ]
    classes = rows[0][2]
    pooled = compute_metrics(
        np.concatenate([r[1] for r in rows]),
        np.concatenate([r[0].argmax(1) for r in rows]),
        classes,
    )
    acc = np.array([m["accuracy"] for m in per_fold])
    f1 = np.array([m["macro_f1"] for m in per_fold])
    return {
        "accuracy": float(acc.mean()),
        "accuracy_std": float(acc.std(ddof=1)),
        "macro_f1": float(f1.mean()),
        "macro_f1_std": float(f1.std(ddof=1)),
        "recall": {c: pooled["per_class"][c]["recall"] for c in classes},
        "folds": len(rows),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("cv_dirs", nargs="+", type=Path)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--no-tta", action="store_true", help="skip the TTA variants")
    args = parser.parse_args(argv)
    try:
        plans = [json.loads((d / "folds.json").read_text(encoding="utf-8")) for d in args.cv_dirs]
        # Folds match by their test sources (a repeated CV's repeat 1 is dealt as a single CV).
        by_members = [{json.dumps(f["test"], sort_keys=True): f for f in p["folds"]} for p in plans]
        shared = [key for key in by_members[0] if all(key in other for other in by_members[1:])]
        done = [
            [m[key] for m in by_members]
            for key in shared
            if all(
                (d / f"fold-{m[key]['fold']}" / "metrics.json").is_file()
                for d, m in zip(args.cv_dirs, by_members)
            )
        ]
        if not done:
            raise WbcError(
                "no fold with the same test sources has finished in every folder "
                "(same seed, folds and data are needed)"
            )
        modes = (False,) if args.no_tta else (False, True)
        variants: dict[str, list] = {}
        seconds: dict[str, float] = {}
        cells: dict[str, int] = {}
        for folds in done:
            for tta in modes:
                parts = []
                for d, fold in zip(args.cv_dirs, folds):
                    probs, labels, spent, n, classes = fold_probabilities(d, fold, tta)
                    key = f"{d.name}{' + TTA' if tta else ''}"
                    variants.setdefault(key, []).append((probs, labels, classes))
                    seconds[key] = seconds.get(key, 0.0) + spent
                    cells[key] = cells.get(key, 0) + n
                    parts.append((probs, labels, classes))
                if len(parts) > 1:
                    key = (
                        "mean of "
                        + " + ".join(d.name for d in args.cv_dirs)
                        + (" (each with TTA)" if tta else "")
                    )
                    mean = np.mean([p[0] for p in parts], axis=0)
                    variants.setdefault(key, []).append((mean, parts[0][1], parts[0][2]))
    except WbcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    table = {}
    for key, rows in variants.items():
        table[key] = score(rows)
        if key in seconds:
            table[key]["ms_per_cell"] = 1000 * seconds[key] / cells[key]
        else:  # an average runs every member
            suffix = " + TTA" if key.endswith("(each with TTA)") else ""
            table[key]["ms_per_cell"] = sum(
                table[f"{d.name}{suffix}"]["ms_per_cell"] for d in args.cv_dirs
            )
    classes = next(iter(variants.values()))[0][2]
    head = [
        "variant",
        "folds",
        "accuracy",
        "macro-F1",
        *[f"recall {c[:4]}" for c in classes],
        "ms/cell",
    ]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for key, row in table.items():
        print(
            "| "
            + " | ".join(
                [
                    key,
                    str(row["folds"]),
                    f"{row['accuracy']:.3f} +/- {row['accuracy_std']:.3f}",
                    f"{row['macro_f1']:.3f} +/- {row['macro_f1_std']:.3f}",
                    *[f"{row['recall'][c]:.2f}" for c in classes],
                    f"{row['ms_per_cell']:.1f}",
                ]
            )
            + " |"
        )
    if args.json:
        args.json.write_text(json.dumps(table, indent=2) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
