"""How single-cell crops framed by other labs are re-framed: the dev set of ``reframe_box``.

Produced docs/RESULTS.md's framing table (issue 23).

Why: a lab's crops frame the cell their own way (a CellaVision crop shows the cell at a third of
its side, wbc's own crops at about three quarters), and the features measure the cell against
the crop. ``wbc.data.cells.reframe_box`` re-cuts a crop around its cell when its margin is much
wider than wbc's. This cuts dataset-master's VOC-boxed smears as crops with margins 0 (tight),
0.15 (wbc's own), 0.5 and 1.0 around the VOC box (only where the square fits in the smear),
applies the rule, and prints how many were re-cut and the IoU of the final window with wbc's
framing (the VOC box padded by 0.15), against the crop as it was.

``--loose OUT --test DATA/processed/full/test --renamed DATA/interim/renamed --margin M`` also
writes the held-out test originals as crops of margin M around the detector's box (the smear's
edges replicated where the square overflows), for ``wbc compare RUN... --data OUT``.

Usage: python research/crop_framing.py [--raw ../shared/data/dataset-master] [--padding 0.15]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data.cells import (  # noqa: E402
    crop_square,
    detect_cells,
    iou,
    largest_box,
    read_voc_boxes,
    reframe_box,
    square_box,
)

MARGINS = (0.0, 0.15, 0.5, 1.0)


def framing_table(raw: Path, padding: float) -> None:
    results: dict[float, list[tuple[bool, float, float]]] = {}
    for xml in sorted(raw.rglob("Annotations/*.xml")):
        images = list(raw.rglob(f"JPEGImages/{xml.stem}.jpg"))
        boxes = read_voc_boxes(xml) if images else []
        if not boxes:
            continue
        rgb = read_rgb(images[0])
        voc = largest_box(boxes)
        target = square_box(voc, padding, rgb.shape)
        for margin in MARGINS:
            window = square_box(voc, margin, rgb.shape)
            x0, y0, x1, y1 = window
            if x0 < 0 or y0 < 0 or x1 > rgb.shape[1] or y1 > rgb.shape[0]:
                continue
            crop = rgb[y0:y1, x0:x1]
            box = reframe_box(crop, padding)
            final = window
            if box is not None:
                p = square_box(box, padding, crop.shape)
                final = (p[0] + x0, p[1] + y0, p[2] + x0, p[3] + y0)
            results.setdefault(margin, []).append(
                (box is not None, iou(final, target), iou(window, target))
            )
    print(
        "| margin | crops | re-cut | IoU with wbc's framing, as is | after the rule "
        "| IoU >= 0.5 after |"
    )
    print("|---|---|---|---|---|---|")
    for margin, rows in sorted(results.items()):
        a = np.array(rows, float)
        print(
            f"| {margin} | {len(a)} | {a[:, 0].mean():.1%} | {a[:, 2].mean():.3f} | "
            f"{a[:, 1].mean():.3f} | {np.mean(a[:, 1] >= 0.5):.1%} |"
        )


def write_loose(test: Path, renamed: Path, out: Path, margin: float) -> None:
    written = 0
    for path in sorted(test.glob("*/*.jpg")):
        rgb = read_rgb(renamed / path.name)
        boxes = detect_cells(rgb)
        if not boxes:
            continue
        target = out / path.parent.name / f"{path.stem}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop_square(rgb, boxes[0], margin, 360)).save(target)
        written += 1
    print(f"wrote {written} crops of margin {margin} under {out}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/dataset-master"))
    parser.add_argument("--padding", type=float, default=0.15)
    parser.add_argument("--loose", type=Path, help="write loose crops of the test originals here")
    parser.add_argument("--test", type=Path, help="DATA/processed/full/test (with --loose)")
    parser.add_argument("--renamed", type=Path, help="DATA/interim/renamed (with --loose)")
    parser.add_argument("--margin", type=float, default=1.0, help="margin of the loose crops")
    args = parser.parse_args(argv)
    if args.loose:
        if not (args.test and args.renamed):
            parser.error("--loose needs --test and --renamed")
        write_loose(args.test, args.renamed, args.loose, args.margin)
        return 0
    framing_table(args.raw, args.padding)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
