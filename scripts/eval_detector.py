"""Measure ``wbc.data.cells.detect_cells`` against the BCCD VOC WBC boxes of a dataset-master
folder.

Why: the detector is what crops images that have no annotation (new images at predict time,
``crop.mode=detect``), so its agreement with the human boxes is the number that says whether
detect-mode crops are as good as box-mode crops. Reports, over the images with a VOC WBC box:

* top-1 IoU: the detector's best box against the largest VOC WBC box (what training crops);
* best-match IoU: for every VOC WBC box, the best IoU of any detected box (what counting needs);
* how often the number of detected cells equals the number of VOC WBC boxes;
* the same top-1 IoU on simulated single-cell crops (the VOC box cut out with 15 % margin and
  resized to 256 x 256), which checks that an already-cropped image is handled;
* the detector's time per image (decode excluded).

Usage: python scripts/eval_detector.py [--raw ../shared/data/dataset-master] [--worst 10]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data.cells import crop_square, detect_cells, iou, read_voc_boxes, square_box  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/dataset-master"))
    parser.add_argument("--worst", type=int, default=0, help="list the N worst images")
    args = parser.parse_args(argv)

    images = sorted((args.raw / "JPEGImages").glob("*.jpg"))
    top1, best, count_ok, crop_iou, seconds, rows = [], [], [], [], [], []
    empty = 0
    for path in images:
        truth = read_voc_boxes(args.raw / "Annotations" / f"{path.stem}.xml")
        if not truth:
            continue
        rgb = read_rgb(path)
        started = time.perf_counter()
        found = detect_cells(rgb)
        seconds.append(time.perf_counter() - started)
        empty += not found
        main_truth = max(truth, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))
        score = iou(found[0], main_truth) if found else 0.0
        top1.append(score)
        rows.append((score, path.name, len(found), len(truth)))
        best.extend(max((iou(f, t) for f in found), default=0.0) for t in truth)
        count_ok.append(len(found) == len(truth))

        # Simulated single-cell crop: the true box with a 15 % margin, resized to 256 x 256.
        square = square_box(main_truth, 0.15, rgb.shape)
        crop = crop_square(rgb, main_truth, 0.15, 256)
        k = 256 / (square[2] - square[0])
        truth_in_crop = tuple(int(round((v - o) * k)) for v, o in zip(main_truth, square[:2] * 2))
        got = detect_cells(crop)
        crop_iou.append(iou(got[0], truth_in_crop) if got else 0.0)

    top1_a, best_a, crop_a = np.array(top1), np.array(best), np.array(crop_iou)
    print(f"raw folder: {args.raw}")
    print(f"images with a VOC WBC box: {len(top1)} ({len(best_a)} WBC boxes)")
    print(
        f"top-1 vs largest VOC box : mean IoU {top1_a.mean():.3f}, "
        f"median {np.median(top1_a):.3f}, IoU>=0.5 {np.mean(top1_a >= 0.5):.1%}, "
        f"IoU 0 {int(np.sum(top1_a == 0))} (nothing found: {empty})"
    )
    print(
        f"best match per VOC box   : mean IoU {best_a.mean():.3f}, "
        f"IoU>=0.5 {np.mean(best_a >= 0.5):.1%}"
    )
    print(f"cell count == VOC count  : {np.mean(count_ok):.1%}")
    print(
        f"simulated 256px crops    : mean IoU {crop_a.mean():.3f}, "
        f"IoU>=0.5 {np.mean(crop_a >= 0.5):.1%}"
    )
    print(
        f"time per image (detect)  : {1000 * np.mean(seconds):.1f} ms "
        f"(max {1000 * np.max(seconds):.1f} ms)"
    )
    if args.worst:
        print(f"worst {args.worst}: IoU, image, detected, VOC boxes")
        for score, name, n_found, n_truth in sorted(rows)[: args.worst]:
            print(f"  {score:.2f}  {name}  {n_found}  {n_truth}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
