"""Held-out crops under synthetic shifts: the classifier's dev set for other labs' stains.

Produced docs/RESULTS.md's "A stain-independent nucleus" dev table (issue 23).

Why: another lab's labelled cells are the test, so a choice between two settings (here the
features family's nucleus rule) needs a dev set of its own. This one takes a prepared data
folder's held-out test originals (``processed/SUBSET/test/CLASS/*.jpg``) and writes them under
each shift of ``scripts/eval_detector.py`` that applies to a crop (the background tinted cyan,
yellow or green; HED jitter; brightness +-30%; gamma 0.6 and 1.6; blur; JPEG 50), plus
``hed-strong`` (each stain x U(0.5, 1.5) + U(-0.03, 0.03)), three seeded draws of each random
shift. One class-folder tree per shift, scored with ``wbc compare RUN... --data OUT/SHIFT``.

Usage: python research/shifted_crops.py DATA/processed/full/test OUT [--seed 0]
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.color import hed2rgb, rgb2hed

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import eval_detector  # noqa: E402

from wbc.core.imageio import read_rgb  # noqa: E402

CROP_SHIFTS = (
    "hed", "bg-cyan", "bg-yellow", "bg-green", "bright+30", "bright-30",
    "gamma0.6", "gamma1.6", "blur", "jpeg50",
)  # fmt: skip
RANDOM_SHIFTS = {"hed", "hed-strong"}
DRAWS = 3


def hed_strong(rgb, boxes, rng):
    out = hed2rgb(rgb2hed(rgb) * rng.uniform(0.5, 1.5, 3) + rng.uniform(-0.03, 0.03, 3))
    return np.clip(out * 255 + 0.5, 0, 255).astype(np.uint8), boxes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", type=Path, help="held-out crops: CLASS/*.jpg")
    parser.add_argument("out", type=Path, help="output folder: one class-folder tree per shift")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    shifts = {name: eval_detector.SHIFTS[name] for name in CROP_SHIFTS}
    shifts["hed-strong"] = hed_strong
    files = sorted(args.test.glob("*/*.jpg"))
    if not files:
        parser.error(f"{args.test}: no CLASS/*.jpg crops")
    for name, shift in shifts.items():
        for draw in range(DRAWS if name in RANDOM_SHIFTS else 1):
            for path in files:
                rgb = read_rgb(path)
                rng = np.random.default_rng(
                    [args.seed + draw, zlib.crc32(name.encode()), zlib.crc32(path.name.encode())]
                )
                out, _ = shift(rgb, ((0, 0, rgb.shape[1], rgb.shape[0]),), rng)
                target = args.out / name / path.parent.name / f"{path.stem}-{draw}.png"
                target.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(out).save(target)
    print(f"wrote {len(shifts)} shifts of {len(files)} crops under {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
