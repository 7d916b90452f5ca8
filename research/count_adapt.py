"""``wbc count --adapt``: the differential of a sample, as is and adapted on the sample itself.

Each folder is one sample of class folders. The class folder names are read **only to score**.
For every run and folder, ``wbc.workflows.count.count_cells`` (the shipped code path) counts
the sample with ``--adapt never`` and ``--adapt auto`` (and ``always``, for the record), and this
prints accuracy, macro-F1, and the differential error: the total variation distance between the
counted and the true class shares, 0.5 * sum |counted - true|.

``--mixes N``: also N seeded sub-samples of each folder of ``--cells`` cells, their class mix
drawn from a flat Dirichlet (without replacement, so a class with few cells is capped). They show
whether the adapted differential follows a sample's own mix.

It produced the table of ``docs/RESULTS.md``, "Adapting on the sample being counted (issue 23,
ninth pass)".

    python research/count_adapt.py R/bal-s42 R/bal-s7 --folders SHIFTS/* D/processed/full/test
    python research/count_adapt.py R/bal-s42 R/bal-s7 R/bal-s1 --folders TECOM --mixes 10
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from labelled_folder import accuracy_and_f1  # noqa: E402

from wbc.core.seeding import rng_for  # noqa: E402
from wbc.models.runs import load_run, resolve_model_path  # noqa: E402
from wbc.workflows.count import count_cells  # noqa: E402
from wbc.workflows.predict import require_images  # noqa: E402

MODES = ("never", "auto", "always")
MIX_SEED = 1  # the sub-samples' draw: one fixed seed, so every run is scored on the same samples


def differential_error(truth: np.ndarray, answers: np.ndarray, n_classes: int) -> float:
    true = np.bincount(truth, minlength=n_classes) / len(truth)
    counted = np.bincount(answers, minlength=n_classes) / len(answers)
    return 0.5 * float(np.abs(true - counted).sum())


def score_sample(run, folder: Path, files: list[Path], input_kind: str) -> dict[str, tuple]:
    classes = list(run.classes)
    scores = {}
    for mode in MODES:
        result = count_cells(
            run,
            folder,
            files=files,
            input_kind=input_kind,
            adapt=mode,
            details=True,
            engine="tensorflow",
        )
        truth, answers = [], []
        for item in result["files"]:
            for cell in item["cells"]:
                truth.append(classes.index(Path(item["file"]).parent.name))
                answers.append(classes.index(cell["class"]))
        truth, answers = np.array(truth), np.array(answers)
        accuracy, f1 = accuracy_and_f1(truth, {mode: answers})[mode]
        scores[mode] = (
            accuracy,
            f1,
            differential_error(truth, answers, len(classes)),
            result["adapted"] is not None,
            result["out_of_domain"],
        )
    return scores


def mixed_samples(files: list[Path], classes: list[str], n: int, cells: int, seed: int):
    """``n`` seeded sub-samples of ``cells`` files with Dirichlet(1) class mixes."""
    by_class = {c: sorted(p for p in files if p.parent.name == c) for c in classes}
    rng = rng_for(seed, "count-mixes")
    for _ in range(n):
        mix = rng.dirichlet(np.ones(len(classes)))
        picked = []
        for share, name in zip(mix, classes):
            pool = by_class[name]
            take = min(len(pool), int(round(share * cells)))
            picked += [pool[i] for i in sorted(rng.choice(len(pool), take, replace=False))]
        yield mix, picked


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--folders", type=Path, nargs="+", required=True)
    parser.add_argument("--input", choices=("auto", "crop"), default="crop")
    parser.add_argument("--mixes", type=int, default=0)
    parser.add_argument("--cells", type=int, default=100)
    args = parser.parse_args(argv)
    for run_dir in args.runs:
        run = load_run(resolve_model_path(run_dir))
        rows = []
        for folder in args.folders:
            files = require_images([folder])
            samples = [(folder.name, files)]
            if args.mixes:
                samples = [
                    (f"{folder.name} mix {i} ({' '.join(f'{m:.2f}' for m in mix)})", picked)
                    for i, (mix, picked) in enumerate(
                        mixed_samples(files, list(run.classes), args.mixes, args.cells, MIX_SEED)
                    )
                ]
            for name, picked in samples:
                scores = score_sample(run, folder, picked, args.input)
                rows.append(scores)
                print(
                    f"{run_dir.name} {name} ({len(picked)} cells, "
                    f"{scores['never'][4]} out of domain): "
                    + "; ".join(
                        f"{mode} {a:.3f} / {f:.3f} / TV {tv:.3f}{' (adapted)' if done else ''}"
                        for mode, (a, f, tv, done, _) in scores.items()
                    ),
                    flush=True,
                )
        for mode in MODES:
            mean = np.mean([[r[mode][0], r[mode][1], r[mode][2]] for r in rows], axis=0)
            print(
                f"{run_dir.name} mean over {len(rows)} samples, {mode}: accuracy {mean[0]:.3f}, "
                f"macro-F1 {mean[1]:.3f}, differential error {mean[2]:.3f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
