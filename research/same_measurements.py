"""Do two versions of wbc measure the same? Detector boxes, re-framing, white balance, stain
vectors and every colour mode's measurements, written to one .npz per version, then compared.

Produced docs/RESULTS.md's "The measuring trimmed" check (issue 23, twelfth pass): a change
meant only to be faster must leave every number the trained models see as it was, to the bit,
or the runs trained before it would be fed other measurements.

Run it once from each checkout (the script imports the wbc beside it), then compare:

    python research/same_measurements.py --out before.npz          # in the old checkout
    python research/same_measurements.py --out after.npz --compare before.npz

Inputs: crops (CLASS/ folders or flat; default tecom-crops and the shared data's crops given
with --crops) and smears (default every third dataset-master JPEG, for the detector).
Prints how many values differ; exits 1 when any does.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data import cells  # noqa: E402
from wbc.imaging import color, domain  # noqa: E402
from wbc.imaging.preprocess import resize  # noqa: E402
from wbc.models import nucleus  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
PADDING = 0.15  # the crop stage's default padding, for the re-framing box


def images_under(folder: Path, every: int = 1) -> list[Path]:
    found = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    return found[::every]


def measure_crop(rgb: np.ndarray) -> dict[str, np.ndarray]:
    box = cells.reframe_box(rgb, PADDING)
    work = resize(rgb, (nucleus.WORK_SIDE, nucleus.WORK_SIDE))
    values = {
        "reframe": np.asarray(box if box is not None else (-1, -1, -1, -1), np.float64),
        "white_balance": color.white_balance(rgb),
        "stain_vector": domain.stain_vector(rgb),
        "contrast_nucleus": nucleus.cell_features(work, "absolute", "contrast"),
    }
    for mode in nucleus.COLOUR_MODES:
        values[f"features_{mode}"] = nucleus.cell_features(work, mode)
    return values


def measure_smear(rgb: np.ndarray) -> dict[str, np.ndarray]:
    boxes = cells.detect_cells(rgb)
    return {
        "boxes": np.asarray(boxes, np.float64).reshape(-1, 4),
        "background": color.background(rgb),
    }


def measure(crops: list[Path], smears: list[Path]) -> dict[str, np.ndarray]:
    out: dict[str, np.ndarray] = {}
    for paths, measure_one in ((crops, measure_crop), (smears, measure_smear)):
        for path in paths:
            try:
                rgb = read_rgb(path)
            except Exception as exc:  # noqa: BLE001 - an unreadable file is skipped alike in both
                print(f"skipped {path}: {exc}", file=sys.stderr)
                continue
            for name, value in measure_one(rgb).items():
                out[f"{path}|{name}"] = np.asarray(value)
    return out


def compare(now: dict[str, np.ndarray], before: dict[str, np.ndarray]) -> int:
    differ = sorted(k for k in now.keys() & before.keys() if not np.array_equal(now[k], before[k]))
    only = sorted(now.keys() ^ before.keys())
    for key in differ[:20]:
        print(f"differs: {key}")
    for key in only[:20]:
        print(f"in one only: {key}")
    images = len({key.split("|")[0] for key in now})
    print(
        f"{len(now)} values of {images} images compared: {len(differ)} differ, {len(only)} unpaired"
    )
    return 1 if differ or only else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="the .npz to write")
    parser.add_argument("--compare", type=Path, help="an .npz another version wrote")
    parser.add_argument(
        "--crops",
        type=Path,
        action="append",
        help="a folder of crops (repeatable; default ../shared/data/tecom-crops)",
    )
    parser.add_argument("--smears", type=Path, default=Path("../shared/data/dataset-master"))
    args = parser.parse_args(argv)
    crops = [
        p
        for folder in args.crops or [Path("../shared/data/tecom-crops")]
        for p in images_under(folder)
    ]
    smears = images_under(args.smears / "JPEGImages", every=3)
    values = measure(crops, smears)
    np.savez_compressed(args.out, **values)
    print(f"wrote {args.out}: {len(crops)} crops, {len(smears)} smears")
    if args.compare is None:
        return 0
    with np.load(args.compare) as before:
        return compare(values, {key: before[key] for key in before.files})


if __name__ == "__main__":
    raise SystemExit(main())
