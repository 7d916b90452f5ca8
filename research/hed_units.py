"""How large a published HED-jitter strength is in today's scikit-image units.

Produced the conversion in docs/RESULTS.md, "HED jitter at the published strengths" (issue 23).

Why: Tellez et al. (2019) give their HED jitter as sigma 0.05 ("light") and 0.2 ("strong") in the
units of the scikit-image of their time, whose ``separate_stains`` computed ``-log(rgb + 2) @ M``
(rgb in [0, 1]). scikit-image 0.18 (pull request #4725) changed it to ``log(rgb) / log(1e-6) @ M``,
the units ``wbc``'s ``color.hed_shift`` uses. A shift of the same number is therefore a different
change of colour. This script fits, over the pixels of a folder of crops, the slope of each stain
channel in today's units against the old ones: a shift ``b`` in the old units is about
``slope * b`` now (the scale ``color.hed_jitter`` is a ratio and needs no conversion).

Usage: python research/hed_units.py DATA/interim/cropped [--every 10]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from skimage.color import hed_from_rgb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data.stain import unclipped_hed  # noqa: E402  (today's units, before the clip at 0)

STAINS = ("haematoxylin", "eosin", "DAB")
PUBLISHED = {"light": 0.05, "strong": 0.2}  # Tellez et al. 2019, old scikit-image units


def old_units(rgb: np.ndarray) -> np.ndarray:
    """scikit-image <= 0.17's ``separate_stains`` (with its ``rgb += 2``) of uint8 pixels."""
    return -np.log(rgb / 255.0 + 2.0) @ hed_from_rgb


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("crops", type=Path, help="folder of crops (any nesting)")
    parser.add_argument("--every", type=int, default=10, help="use every Nth crop")
    args = parser.parse_args(argv)
    files = sorted(p for p in args.crops.rglob("*") if p.suffix.lower() in {".jpg", ".png"})
    files = files[:: max(args.every, 1)]
    if not files:
        print(f"error: {args.crops}: no .jpg or .png crops", file=sys.stderr)
        return 1
    pixels = np.vstack([read_rgb(p).reshape(-1, 3) for p in files])
    old, new = old_units(pixels), unclipped_hed(pixels)
    print(f"{len(files)} crops, {len(pixels):,} pixels")
    slopes = []
    for channel, name in enumerate(STAINS):
        slope = float(np.polyfit(old[:, channel], new[:, channel], 1)[0])
        slopes.append(slope)
        print(f"{name:<13} slope new/old {slope:.3f}")
    for label, sigma in PUBLISHED.items():
        shifts = ", ".join(f"{name} {sigma * s:.3f}" for name, s in zip(STAINS, slopes))
        print(f"published {label} shift {sigma} -> today's units: {shifts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
