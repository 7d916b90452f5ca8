"""Score trained runs on another lab's cells (default: tecom-crops) and print one table.

Why: a model that scores well on the test side of dataset-master may only have learnt that lab's
stain and microscope. tecom-crops (299 single-cell BMP crops, yellow background, another stain;
see its README) shows how a model carries over. Use it ONLY to evaluate, never to choose
settings by hand: compare a few runs trained with different ``color.*`` settings, e.g.

    wbc train --subset small --run-dir runs/rgb
    wbc train --subset small --run-dir runs/macenko --set color.normalize=macenko
    wbc train --subset small --run-dir runs/hema --set color.input=hematoxylin \
        --set color.brightness=0.1 --set color.hue=0.05
    python scripts/eval_cross_domain.py runs/rgb runs/macenko runs/hema

Each run is scored with ``wbc.evaluate.evaluate`` (the run's own preprocessing: crop mode, colour
input, stain reference; ``--input auto``, so square or nearly square crops are not cropped again).
Columns: the run's colour settings, its in-domain test accuracy (from its metrics.json), then on
the other lab's data: images, accuracy, macro-F1, each class's recall, and (for runs with a
``domain.json``) the share of images the out-of-domain flag marks, with the accuracy of the
flagged and of the other images. The last line is the
majority-class baseline (always naming the most frequent class), which matters because
tecom-crops is imbalanced (59 % neutrophils).

Usage: python scripts/eval_cross_domain.py RUN [RUN ...] [--data ../shared/data/tecom-crops]
       [--json results.json]
RUN: a run folder or its model.keras.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.errors import WbcError  # noqa: E402

DEFAULT_DATA = Path("../shared/data/tecom-crops")


def describe(run) -> str:
    """The settings that matter across labs: crop mode, colour input, normalisation, jitter."""
    c = run.config.color
    jitter = [
        f"{k[0]}{getattr(c, k):g}"
        for k in ("brightness", "contrast", "saturation", "hue")
        if getattr(c, k) > 0
    ]
    model = run.config.model
    family = "+".join(model.ensemble) if model.ensemble else model.family
    if family == "features":
        family += f"({model.features.colour})"
    parts = [
        family + ("+tta" if model.tta else ""),
        f"crop={run.config.crop.mode}",
        f"in={c.input}",
        f"norm={c.normalize}",
    ]
    if jitter:
        parts.append("jit=" + ",".join(jitter))
    return " ".join(parts)


def in_domain_accuracy(run_dir: Path) -> str:
    try:
        return f"{json.loads((run_dir / 'metrics.json').read_text())['accuracy']:.3f}"
    except (OSError, ValueError, KeyError, TypeError):
        return "-"


def majority_baseline(counts: list[int]) -> tuple[float, float]:
    """Accuracy and macro-F1 of always answering the most frequent class."""
    total, best = sum(counts), max(counts)
    precision = best / total
    f1 = 2 * precision / (precision + 1)
    return best / total, f1 / sum(1 for n in counts if n > 0)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN")
    parser.add_argument(
        "--data",
        type=Path,
        default=DEFAULT_DATA,
        help=f"folder of class folders (default {DEFAULT_DATA})",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write all metrics here")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)

    from wbc.tfsetup import import_tensorflow

    import_tensorflow()  # quietly, as the CLI does
    from wbc.evaluate import evaluate
    from wbc.runs import load_run, resolve_model_path

    if not args.data.is_dir():
        print(f"{args.data}: folder not found", file=sys.stderr)
        return 2
    rows, results, classes, counts = [], {}, None, None
    for given in args.runs:
        try:
            path = resolve_model_path(given)
            run = load_run(path)
            metrics = evaluate(path, args.data, batch_size=args.batch_size)
        except WbcError as exc:
            print(f"error: {exc}", file=sys.stderr)
            rows.append([str(given), "-", "-", "-", "-", "-"])
            continue
        results[str(given)] = metrics
        classes = metrics["classes"]
        counts = [metrics["per_class"][c]["support"] for c in classes]
        recall = " ".join(f"{metrics['per_class'][c]['recall']:.2f}" for c in classes)
        domain = metrics.get("out_of_domain")
        flag = (
            "-"
            if not domain
            else (
                f"{domain['flagged_share']:.2f}: "
                + "/".join(
                    "-" if domain[k] is None else f"{domain[k]:.2f}"
                    for k in ("accuracy_flagged", "accuracy_unflagged")
                )
            )
        )
        rows.append(
            [
                str(given),
                describe(run),
                in_domain_accuracy(path.parent),
                str(metrics["n_images"]),
                f"{metrics['accuracy']:.3f}",
                f"{metrics['macro_f1']:.3f}",
                recall,
                flag,
            ]
        )
        if metrics["errors"]:
            print(f"{given}: skipped {len(metrics['errors'])} unreadable images", file=sys.stderr)
    recall_head = "recall " + "/".join(c[:3] for c in classes) if classes else "recall"
    headers = [
        "run",
        "settings",
        "own test acc",
        "images",
        "accuracy",
        "macro-F1",
        recall_head,
        "flagged: acc flagged/others",
    ]
    if counts:
        accuracy, macro = majority_baseline(counts)
        rows.append(
            ["(majority class)", "", "", str(sum(counts)), f"{accuracy:.3f}", f"{macro:.3f}", ""]
        )
    widths = [
        max(len(h), *(len(r[i]) if i < len(r) else 0 for r in rows)) for i, h in enumerate(headers)
    ]
    print(f"cross-domain evaluation on {args.data}")
    for line in [headers, *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip())
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}", file=sys.stderr)
    return 0 if results else 1


if __name__ == "__main__":
    sys.exit(main())
