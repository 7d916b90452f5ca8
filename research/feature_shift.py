"""Which nucleus/cell features survive a change of lab and stain? One table, per feature.

Produced docs/RESULTS.md's "Which features survive a stain change" table.

Why: the features family scores 0.84 under grouped CV on the shared data but calls almost every
cell of another lab one class. This measures where the features move. For each feature and
each class, the shift is the difference of the class means between the other lab and the
shared data, in units of the shared data's within-class standard deviation (a standardised
mean difference, |d|). A feature that keeps its meaning across labs has |d| near 0; |d| > 1
means the other lab's cells of a class look like a different class to the classifier.

Each feature is measured three ways on the other lab's cells: as they are, after Reinhard
normalisation to the shared crops' reference, and after Macenko normalisation. The shared side
is normalised to its own reference too, so both sides go through the same steps.

Stain augmentation (issue 23): ``--augmented NAME=FOLDER`` (repeatable) takes the augment
stage's output (CLASS/ folders) made with some ``color.*`` stain setting, draws its augmented
copies, and measures the other lab's shift in units of THEIR within-class spread, after Reinhard
with a reference from those copies (as training would). An augmentation that covers the other
lab's look for a feature widens the spread or moves the mean towards it, and its |d| shrinks;
compare each row with the folder made without stain augmentation (geometric copies only).

Usage: python research/feature_shift.py [--shared data/interim/cropped]
       [--other ../shared/data/tecom-crops] [--per-class 100] [--seed 42] [--json out.json]
       [--augmented NAME=DATA/interim/augmented ...]
--shared: a folder of CLASS.ID.jpg crops (the crop stage's output); --other: CLASS/ folders.
Prints a markdown table (features sorted by their shift as they are) and a summary per group.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.config import CLASSES  # noqa: E402
from wbc.imaging.color import apply_color, reference_from_images  # noqa: E402
from wbc.models.nucleus import SHAPE_FEATURES, cell_features, feature_names  # noqa: E402

SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


def load(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def shared_files(folder: Path) -> dict[str, list[Path]]:
    files = {cls: [] for cls in CLASSES}
    for path in sorted(folder.iterdir()):
        cls = path.name.split(".", 1)[0]
        if cls in files and path.suffix.lower() in SUFFIXES:
            files[cls].append(path)
    return files


def other_files(folder: Path) -> dict[str, list[Path]]:
    return {
        cls: sorted(p for p in (folder / cls).glob("*") if p.suffix.lower() in SUFFIXES)
        for cls in CLASSES
        if (folder / cls).is_dir()
    }


def draw(files: dict[str, list[Path]], per_class: int, rng) -> dict[str, list[Path]]:
    return {
        cls: [
            paths[i]
            for i in sorted(rng.choice(len(paths), min(per_class, len(paths)), replace=False))
        ]
        for cls, paths in files.items()
        if paths
    }


def augmented_files(folder: Path) -> dict[str, list[Path]]:
    """The augmented copies (CLASS/CLASS.ID.aNNNN.jpg) of an augment stage's output."""
    return {
        cls: sorted((folder / cls).glob(f"{cls}.*.a*.jpg"))
        for cls in CLASSES
        if (folder / cls).is_dir()
    }


def augmented_shifts(
    folder: Path, other_images: dict[str, list[np.ndarray]], per_class: int, seed: int
) -> np.ndarray:
    """Median-class |d| of the other lab against the copies in ``folder``, after Reinhard."""
    rng = np.random.default_rng(seed)
    images = {
        c: [load(p) for p in ps] for c, ps in draw(augmented_files(folder), per_class, rng).items()
    }
    pooled = [im for ims in images.values() for im in ims]
    reference = reference_from_images(pooled, "reinhard")
    d = shifts(measure(images, "reinhard", reference), measure(other_images, "reinhard", reference))
    return np.median(d, axis=0)


def measure(
    images: dict[str, list[np.ndarray]], normalize: str, reference
) -> dict[str, np.ndarray]:
    return {
        cls: np.stack([cell_features(apply_color(im, "rgb", normalize, reference)) for im in ims])
        for cls, ims in images.items()
    }


def shifts(shared: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> np.ndarray:
    """|d| per (class, feature): |mean_other - mean_shared| / std_shared (0-std features: 0)."""
    rows = []
    for cls in other:
        std = shared[cls].std(axis=0)
        diff = np.abs(other[cls].mean(axis=0) - shared[cls].mean(axis=0))
        rows.append(np.where(std > 1e-9, diff / np.maximum(std, 1e-9), 0.0))
    return np.array(rows)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", type=Path, default=Path("data/interim/cropped"))
    parser.add_argument("--other", type=Path, default=Path("../shared/data/tecom-crops"))
    parser.add_argument("--per-class", type=int, default=100)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--augmented",
        action="append",
        default=[],
        metavar="NAME=FOLDER",
        help="an augment stage output (CLASS/ folders) to measure the other lab against",
    )
    args = parser.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    shared_images = {
        c: [load(p) for p in ps]
        for c, ps in draw(shared_files(args.shared), args.per_class, rng).items()
    }
    other_images = {
        c: [load(p) for p in ps]
        for c, ps in draw(other_files(args.other), args.per_class, rng).items()
    }
    if not shared_images or not other_images:
        sys.exit("feature_shift: no images found (check --shared and --other)")
    names = feature_names("absolute")
    is_shape = np.array([name in SHAPE_FEATURES for name in names])
    if args.augmented:
        return augmented_report(args, other_images, names, is_shape)
    pooled = [im for ims in shared_images.values() for im in ims]
    table = {}
    for normalize in ("none", "reinhard", "macenko"):
        reference = None if normalize == "none" else reference_from_images(pooled, normalize)
        d = shifts(
            measure(shared_images, normalize, reference),
            measure(other_images, normalize, reference),
        )
        table[normalize] = np.median(d, axis=0)  # the median class: one outlier class aside

    order = np.argsort(-table["none"])
    print(
        f"shared: {sum(map(len, shared_images.values()))} crops from {args.shared}; "
        f"other: {sum(map(len, other_images.values()))} from {args.other}"
    )
    print("\n| feature | kind | shift as is | after Reinhard | after Macenko |")
    print("|---|---|---|---|---|")
    for i in order:
        print(
            f"| {names[i]} | {'shape' if is_shape[i] else 'colour'} | {table['none'][i]:.2f} "
            f"| {table['reinhard'][i]:.2f} | {table['macenko'][i]:.2f} |"
        )
    print(
        "\n| group | features | median shift as is | after Reinhard | after Macenko "
        "| share with shift < 0.5 (as is / Reinhard / Macenko) |"
    )
    print("|---|---|---|---|---|---|")
    for label, mask in (("shape", is_shape), ("colour", ~is_shape)):
        cells = [f"{np.median(table[k][mask]):.2f}" for k in table]
        small = " / ".join(f"{np.mean(table[k][mask] < 0.5):.0%}" for k in table)
        print(f"| {label} | {int(mask.sum())} | {' | '.join(cells)} | {small} |")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "features": list(names),
                    "is_shape": is_shape.tolist(),
                    **{k: v.round(4).tolist() for k, v in table.items()},
                },
                indent=1,
            )
        )
    return 0


def augmented_report(args, other_images, names, is_shape) -> int:
    table = {}
    for item in args.augmented:
        name, _, folder = item.partition("=")
        table[name] = augmented_shifts(Path(folder), other_images, args.per_class, args.seed)
    rows = list(table)
    print(f"other: {sum(map(len, other_images.values()))} crops; |d| after Reinhard, per row")
    print("\n| feature | kind | " + " | ".join(rows) + " |")
    print("|---|---|" + "---|" * len(rows))
    for i in np.argsort(-table[rows[0]]):
        cells = " | ".join(f"{table[r][i]:.2f}" for r in rows)
        print(f"| {names[i]} | {'shape' if is_shape[i] else 'colour'} | {cells} |")
    print(
        "\n| row | shape: median \\|d\\| | shape: share < 0.5 | colour: median \\|d\\| "
        "| colour: share < 0.5 |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        shape, colour = table[r][is_shape], table[r][~is_shape]
        print(
            f"| {r} | {np.median(shape):.2f} | {np.mean(shape < 0.5):.0%} "
            f"| {np.median(colour):.2f} | {np.mean(colour < 0.5):.0%} |"
        )
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "features": list(names),
                    "is_shape": is_shape.tolist(),
                    **{k: v.round(4).tolist() for k, v in table.items()},
                },
                indent=1,
            )
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
