"""Summarise run folders as a Markdown table (docs/RESULTS.md: the run tables at its top).

Usage: python research/summarize_runs.py RUN_DIR [RUN_DIR ...]

Per run: protocol, crop mode, subset, epochs run, wall time (sum of epoch seconds), final and best
val accuracy and loss, and test accuracy, macro-F1 and per-class F1 of model.keras (best val_loss).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import yaml

from wbc.core.runfolder import read_history


def summarize(run_dir: Path) -> dict:
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    rows = read_history(run_dir / "history.csv")
    metrics = json.loads((run_dir / "metrics.json").read_text())
    best = min(rows, key=lambda r: r["val_loss"])
    return {
        "run": run_dir.name,
        "protocol": config["split"]["protocol"],
        "crop": config["crop"]["mode"],
        "subset": config["train"]["subset"],
        "lr": config["train"]["learning_rate"],
        "epochs": len(rows),
        "minutes": sum(r["seconds"] for r in rows) / 60,
        "final_val_acc": rows[-1]["val_accuracy"],
        "final_val_loss": rows[-1]["val_loss"],
        "best_val_acc": max(r["val_accuracy"] for r in rows),
        "lowest_val_loss": best["val_loss"],
        "best_epoch": int(best["epoch"]) + 1,
        "test_acc": metrics["accuracy"],
        "macro_f1": metrics["macro_f1"],
        "n_test": metrics["n_images"],
        "f1": {c: v["f1"] for c, v in metrics["per_class"].items()},
        "collapsed": metrics.get("collapsed", False),
    }


def main(argv: list[str]) -> int:
    if not argv:
        print(__doc__)
        return 2
    runs = [summarize(Path(p)) for p in argv]
    classes = sorted({c for r in runs for c in r["f1"]})
    header = [
        "run",
        "protocol",
        "crop",
        "subset",
        "lr",
        "epochs",
        "wall min",
        "final val acc",
        "best val acc",
        "final val loss",
        "lowest val loss (epoch)",
        "model.keras test acc",
        "macro-F1",
        *[f"F1 {c[:4]}" for c in classes],
        "collapsed",
    ]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for r in runs:
        cells = [
            r["run"],
            r["protocol"],
            r["crop"],
            r["subset"],
            f"{r['lr']:g}",
            str(r["epochs"]),
            f"{r['minutes']:.0f}",
            f"{r['final_val_acc']:.3f}",
            f"{r['best_val_acc']:.3f}",
            f"{r['final_val_loss']:.3f}",
            f"{r['lowest_val_loss']:.3f} ({r['best_epoch']})",
            f"{r['test_acc']:.3f} (n={r['n_test']})",
            f"{r['macro_f1']:.3f}",
            *[f"{r['f1'].get(c, float('nan')):.2f}" for c in classes],
            "yes" if r["collapsed"] else "no",
        ]
        print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
