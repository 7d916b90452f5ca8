"""The K-curve: adapt a model to another lab with K labelled cells per class, score on the rest.

For each family, seed and K, exactly the README's walkthrough ("Use wbc on your lab's cells"),
through the installed CLI:

1. a base run per family and seed, trained on the prepared dataset-master data (``--base-data``);
2. a seeded draw of K cells per class from the lab's class folders (``--lab``): they become
   ``LAB-K/train/CLASS/``, every other cell of the lab ``LAB-K/test/CLASS/`` (the layout's given
   split, so the rest is never trained on);
3. ``wbc prepare --raw LAB-K`` then ``wbc train --init BASE`` (the adapted final run);
4. ``wbc evaluate`` of the base run (no labels used) and of the adapted run on all the rest.

Prints one table row per (family, K, seed) and writes ``--work/k_curve.json``; reruns reuse every
finished run (wbc's own manifests and metrics.json). The settings were fixed before any score:
each family's config as shipped, its training epochs for the Keras families capped by
``--epochs`` to fit 2 cores.

Usage: python research/k_curve.py --lab ../shared/data/tecom-crops --base-data data \
       [--families features,cnn,study] [--k 5,10,20] [--seeds 42,7] [--work runs/k-curve]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {
    "features": ROOT / "configs" / "default.yaml",
    "cnn": ROOT / "configs" / "cnn.yaml",
    "study": ROOT / "configs" / "study-crops.yaml",
}
MODEL_FILE = {"features": "model.skops", "cnn": "model.keras", "study": "model.keras"}
SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


def wbc(*args: str) -> str:
    command = [str(Path(sys.executable).parent / "wbc"), *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(command)}\n{done.stderr[-3000:]}")
    return done.stdout


def draw_lab(lab: Path, k: int, seed: int, target: Path) -> None:
    """``target/train/CLASS``: K cells per class (seeded); ``target/test/CLASS``: the rest."""
    if (target / ".done").is_file():
        return
    shutil.rmtree(target, ignore_errors=True)
    rng = np.random.default_rng([seed, k])
    for folder in sorted(p for p in lab.iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in SUFFIXES)
        order = rng.permutation(len(files))
        for rank, index in enumerate(order):
            side = "train" if rank < k else "test"
            (target / side / folder.name).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(files[index], target / side / folder.name / files[index].name)
    (target / ".done").touch()


def train(config: Path, data: Path, run: Path, seed: int, epochs: int | None, *extra: str) -> Path:
    if not (run / "metrics.json").is_file():
        shutil.rmtree(run, ignore_errors=True)
        args = ["train", "--config", str(config), "--data-dir", str(data), "--run-dir", str(run)]
        args += ["--set", f"seed={seed}", *extra]
        if epochs:
            args += ["--epochs", str(epochs)]
        wbc(*args)
    return run


def score(run: Path, test: Path) -> dict:
    result = json.loads(
        wbc("evaluate", "--model", str(run), "--data", str(test), "--format", "json")
    )
    return {"accuracy": result["accuracy"], "macro_f1": result["macro_f1"], "n": result["n_images"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lab", type=Path, default=Path("../shared/data/tecom-crops"))
    parser.add_argument("--base-data", type=Path, required=True, help="prepared dataset-master")
    parser.add_argument("--families", default="features,cnn,study")
    parser.add_argument("--k", default="5,10,20")
    parser.add_argument("--seeds", default="42,7")
    parser.add_argument("--epochs", type=int, default=10, help="Keras families: epochs of each run")
    parser.add_argument("--subset", default="small", help="Keras families: subset trained on")
    parser.add_argument("--work", type=Path, default=Path("runs/k-curve"))
    args = parser.parse_args(argv)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results_path = work / "k_curve.json"
    results = json.loads(results_path.read_text()) if results_path.is_file() else {}
    print("| family | K | seed | no labels: acc. / macro-F1 | adapted: acc. / macro-F1 | rest |")
    print("|---|---|---|---|---|---|")
    for family in args.families.split(","):
        config = CONFIGS[family]
        keras = family != "features"
        epochs = args.epochs if keras else None
        subset = ["--subset", args.subset] if keras else []
        for seed in map(int, args.seeds.split(",")):
            base = train(
                config, args.base_data, work / f"base-{family}-s{seed}", seed, epochs, *subset
            )
            for k in map(int, args.k.split(",")):
                key = f"{family}/k{k}/s{seed}"
                if key not in results:
                    lab = work / f"lab-s{seed}-k{k}"
                    draw_lab(args.lab, k, seed, lab)
                    data = work / f"labdata-s{seed}-k{k}"
                    wbc(
                        "prepare",
                        "--config",
                        str(config),
                        "--raw",
                        str(lab),
                        "--data-dir",
                        str(data),
                    )
                    adapted = train(
                        config,
                        data,
                        work / f"adapted-{family}-s{seed}-k{k}",
                        seed,
                        epochs,
                        "--init",
                        str(base / MODEL_FILE[family]),
                        *subset,
                    )
                    rest = data / "processed" / "split" / "test"
                    results[key] = {"base": score(base, rest), "adapted": score(adapted, rest)}
                    results_path.write_text(json.dumps(results, indent=2))
                row = results[key]
                b, a = row["base"], row["adapted"]
                print(
                    f"| {family} | {k} | {seed} | {b['accuracy']:.3f} / {b['macro_f1']:.3f} | "
                    f"{a['accuracy']:.3f} / {a['macro_f1']:.3f} | {a['n']} |",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("MPLBACKEND", "Agg")
    raise SystemExit(main())
