"""Held-out crops overexposed until their background clips, and a dimmed control.

Produced docs/RESULTS.md's "A saturated background" rows (issue 23, fourteenth pass).

Why: tecom's crops have a background clipped at 255 in red (and mostly green), while
dataset-master's never do. White balance divides each image by its background, so a pure
change of light (a gain per channel) cancels, unless a channel clipped: then its true level is
lost and pale regions lose their colour. This writes a prepared folder's held-out test crops
under three fixed per-channel gains, each a class-folder tree scored with
``research/adapted_dev.py RUN... --folders OUT/*``:

- ``clip-yellow``: red x1.5, green x1.4, blue x1.0, clipped to 255 (an overexposed yellow light);
- ``dim-yellow``: the same colour of light reached by dimming, red x1.0, green x1.4/1.5, blue
  x1/1.5 (nothing clips: the control);
- ``clip-all``: every channel x1.5, clipped (overexposed white light).

Usage: python research/clipped_exposure.py DATA/processed/full/test OUT
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402

GAINS = {
    "clip-yellow": (1.5, 1.4, 1.0),
    "dim-yellow": (1.0, 1.4 / 1.5, 1.0 / 1.5),
    "clip-all": (1.5, 1.5, 1.5),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("test", type=Path, help="held-out crops: CLASS/*.jpg")
    parser.add_argument("out", type=Path, help="output folder: one class-folder tree per gain")
    args = parser.parse_args(argv)
    files = sorted(args.test.glob("*/*.jpg"))
    if not files:
        parser.error(f"{args.test}: no CLASS/*.jpg crops")
    for name, gain in GAINS.items():
        for path in files:
            rgb = read_rgb(path).astype(np.float32) * np.asarray(gain, np.float32)
            target = args.out / name / path.parent.name / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            # PNG: the gain, not a second JPEG pass, is what differs from the original
            Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)).save(
                target.with_suffix(".png")
            )
        print(f"{name}: {len(files)} crops, gain {tuple(round(g, 3) for g in gain)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
