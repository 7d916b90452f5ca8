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

``--shift`` scores the detector instead on a synthetic dev set for other labs' smears: the
images with a VOC WBC box under one shift at a time and under pairs of shifts (a seeded sample of
``--pair-limit`` images per pair; 40 by default for speed, ``--pair-limit 290`` for every boxed
smear, about ten minutes here). Why: the detector must not encode one lab's stain, background or
magnification, and the only annotated smears are one lab's. Shifts (every random draw is seeded by
``--seed``, the shift and the image):

* bg-cyan / bg-yellow / bg-green / bg-magenta: the pale background tinted (the red, the blue, the
  red and blue, or the green channel scaled down on the bright pixels, fading to untinted on dark
  ones);
* hed: colour-deconvolution jitter, each stain's concentration x U(0.7, 1.3) + U(-0.01, 0.01);
* bright+30 / bright-30: every channel x 1.3 (clipped) or x 0.7;
* gamma0.6 / gamma1.6: intensity ** gamma on the 0..1 scale;
* blur: Gaussian, sigma 2 pixels; jpeg50: JPEG round trip at quality 50;
* zoom0.5 / zoom2: the field at half magnification (four copies of the image, 2 x 2, shrunk
  into the frame, so the WBC appears four times and a box on any copy counts) or double
  (a half-size window around the WBC enlarged to the frame);
* bar / text: a printed black scale bar with its label, or a line of black text, placed off the
  WBC box.

Per shift it prints the share of images whose top-1 box has IoU >= 0.5 against the largest VOC
box, the mean top-1 IoU, and how many images got a frame-sized box (any box over half the frame).

Usage: python scripts/eval_detector.py [--raw ../shared/data/dataset-master] [--worst 10]
       python scripts/eval_detector.py --shift [--limit N] [--pair-limit 40] [--seed 0]
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
from skimage.color import hed2rgb, rgb2hed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data.cells import (  # noqa: E402
    box_area,
    crop_square,
    detect_cells,
    iou,
    read_voc_boxes,
    square_box,
)

Box = tuple[int, int, int, int]
FRAME_SIZED = 0.5  # a box over this fraction of the frame area boxes the frame, not a cell


# ----------------------------------------------------------------------------- synthetic shifts


def _tint(gains: tuple[float, float, float]) -> Callable:
    def shift(
        rgb: np.ndarray, boxes: tuple[Box, ...], rng: np.random.Generator
    ) -> tuple[np.ndarray, tuple[Box, ...]]:
        image = rgb.astype(np.float32)
        luma = image.mean(axis=2)
        lo, hi = np.percentile(luma, (50, 90))
        # Background weight: 1 on the pale background, 0 on cells darker than the median.
        weight = np.clip((luma - lo) / max(hi - lo, 1.0), 0.0, 1.0)[..., None]
        out = image * (1.0 - weight + weight * np.asarray(gains, np.float32))
        return np.clip(out, 0, 255).astype(np.uint8), boxes

    return shift


def _hed(
    rgb: np.ndarray, boxes: tuple[Box, ...], rng: np.random.Generator
) -> tuple[np.ndarray, tuple[Box, ...]]:
    hed = rgb2hed(rgb)
    alpha = rng.uniform(0.7, 1.3, 3)
    beta = rng.uniform(-0.01, 0.01, 3)
    out = hed2rgb(hed * alpha + beta)
    return np.clip(out * 255.0 + 0.5, 0, 255).astype(np.uint8), boxes


def _gain(factor: float) -> Callable:
    def shift(rgb, boxes, rng):
        return np.clip(rgb.astype(np.float32) * factor, 0, 255).astype(np.uint8), boxes

    return shift


def _gamma(gamma: float) -> Callable:
    table = np.clip(255.0 * (np.arange(256) / 255.0) ** gamma + 0.5, 0, 255).astype(np.uint8)

    def shift(rgb, boxes, rng):
        return cv2.LUT(rgb, table), boxes

    return shift


def _blur(rgb, boxes, rng):
    return cv2.GaussianBlur(rgb, (0, 0), 2.0), boxes


def _jpeg(rgb, boxes, rng):
    ok, data = cv2.imencode(".jpg", rgb[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 50])
    return np.ascontiguousarray(cv2.imdecode(data, cv2.IMREAD_COLOR)[..., ::-1]), boxes


def _zoom(factor: float) -> Callable:
    def shift(rgb, boxes, rng):
        height, width = rgb.shape[:2]
        if factor >= 1:
            # A window 1/factor of the frame, around the WBC (centred on it, kept inside).
            win_w, win_h = int(round(width / factor)), int(round(height / factor))
            box = boxes[0]
            cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
            x0 = int(np.clip(round(cx - win_w / 2), 0, width - win_w))
            y0 = int(np.clip(round(cy - win_h / 2), 0, height - win_h))
            window = rgb[y0 : y0 + win_h, x0 : x0 + win_w]
            out = cv2.resize(window, (width, height), interpolation=cv2.INTER_CUBIC)
            k = width / win_w
            moved = []
            for box in boxes:
                new = tuple(
                    int(round(min(max((v - o) * k, 0), lim)))
                    for v, o, lim in zip(box, (x0, y0) * 2, (width, height) * 2)
                )
                if new[2] > new[0] and new[3] > new[1]:
                    moved.append(new)
            return out, tuple(moved)
        # Half magnification: four copies of the field side by side, shrunk to the frame, so
        # that the frame shows four times the area of a smear of the same stain and background.
        # The WBC then appears four times; any of them is the right answer. (Mirrored copies
        # would put a WBC that touches an edge next to its own mirror image: one double cell.)
        tiled = np.vstack([np.hstack([rgb, rgb])] * 2)
        out = cv2.resize(tiled, (width, height), interpolation=cv2.INTER_AREA)
        copies = [
            tuple(int(round((v + o) * factor)) for v, o in zip(box, (dx, dy) * 2))
            for box in boxes
            for dx in (0, width)
            for dy in (0, height)
        ]
        return out, tuple(copies)

    return shift


def _free_spot(shape, size, boxes, rng) -> tuple[int, int] | None:
    """A seeded top-left corner for a ``size`` (w, h) patch that stays off every WBC box."""
    height, width = shape[:2]
    w, h = size
    for _ in range(200):
        x = int(rng.integers(5, max(6, width - w - 5)))
        y = int(rng.integers(5, max(6, height - h - 5)))
        if all(x + w < b[0] - 5 or x > b[2] + 5 or y + h < b[1] - 5 or y > b[3] + 5 for b in boxes):
            return x, y
    return None


def _bar(rgb, boxes, rng):
    out = rgb.copy()
    height, width = rgb.shape[:2]
    bar_w, bar_h = (
        int(width * rng.uniform(0.12, 0.25)),
        max(3, int(height * rng.uniform(0.015, 0.03))),
    )
    scale = width / 640
    (text_w, text_h), _ = cv2.getTextSize("10 um", cv2.FONT_HERSHEY_SIMPLEX, 0.8 * scale, 2)
    spot = _free_spot(rgb.shape, (max(bar_w, text_w), bar_h + text_h + 8), boxes, rng)
    if spot is not None:
        x, y = spot
        cv2.putText(
            out,
            "10 um",
            (x, y + text_h),
            cv2.FONT_HERSHEY_SIMPLEX,
            0.8 * scale,
            (0, 0, 0),
            max(1, int(2 * scale)),
            cv2.LINE_AA,
        )
        cv2.rectangle(out, (x, y + text_h + 8), (x + bar_w, y + text_h + 8 + bar_h), (0, 0, 0), -1)
    return out, boxes


def _text(rgb, boxes, rng):
    out = rgb.copy()
    width = rgb.shape[1]
    scale = width / 640
    label = f"Sample {int(rng.integers(100, 999))}  100x oil  2019-{int(rng.integers(1, 12)):02d}"
    font_scale = rng.uniform(0.6, 1.0) * scale
    (text_w, text_h), _ = cv2.getTextSize(label, cv2.FONT_HERSHEY_SIMPLEX, font_scale, 2)
    spot = _free_spot(rgb.shape, (text_w, text_h + 6), boxes, rng)
    if spot is not None:
        x, y = spot
        cv2.putText(
            out,
            label,
            (x, y + text_h),
            cv2.FONT_HERSHEY_SIMPLEX,
            font_scale,
            (0, 0, 0),
            max(1, int(2 * scale)),
            cv2.LINE_AA,
        )
    return out, boxes


# In the order a pair applies them: the slide's stain, then the background and the optics,
# magnification, print, blur, encoding. (HED jitter after a tint would re-stain the tinted
# background itself: a cyan plasma deconvolves into haematoxylin and turns as purple as a nucleus.)
SHIFTS: dict[str, Callable] = {
    "hed": _hed,
    "bg-cyan": _tint((0.7, 1.0, 1.0)),
    "bg-yellow": _tint((1.0, 1.0, 0.7)),
    "bg-green": _tint((0.8, 1.0, 0.8)),
    "bg-magenta": _tint((1.0, 0.7, 1.0)),
    "bright+30": _gain(1.3),
    "bright-30": _gain(0.7),
    "gamma0.6": _gamma(0.6),
    "gamma1.6": _gamma(1.6),
    "zoom0.5": _zoom(0.5),
    "zoom2": _zoom(2.0),
    "bar": _bar,
    "text": _text,
    "blur": _blur,
    "jpeg50": _jpeg,
}
# Two shifts of one family (two tints, two zooms) make no pair: one image has one of each.
_FAMILY = {name: name.rstrip("+-0123456789.").split("-")[0] for name in SHIFTS}


def pairs() -> list[tuple[str, str]]:
    return [(a, b) for a, b in itertools.combinations(SHIFTS, 2) if _FAMILY[a] != _FAMILY[b]]


def _rng(seed: int, names: tuple[str, ...], stem: str) -> np.random.Generator:
    return np.random.default_rng(
        [seed, zlib.crc32("+".join(names).encode()), zlib.crc32(stem.encode())]
    )


def shifted(rgb, boxes, names, seed, stem):
    rng = _rng(seed, names, stem)
    for name in names:
        rgb, boxes = SHIFTS[name](rgb, boxes, rng)
    return rgb, boxes


def run_shifts(args) -> int:
    samples = []
    for path in sorted((args.raw / "JPEGImages").glob("*.jpg")):
        truth = read_voc_boxes(args.raw / "Annotations" / f"{path.stem}.xml")
        if truth:
            samples.append((path.stem, read_rgb(path), (max(truth, key=box_area),)))
    order = np.random.default_rng(args.seed).permutation(len(samples))
    singles = [samples[i] for i in order[: args.limit or len(samples)]]
    paired = [samples[i] for i in order[: args.pair_limit]]
    seconds: list[float] = []
    rows = []
    worst_pass, worst_frame = 1.0, 0

    def score(names, chosen):
        nonlocal worst_pass, worst_frame
        ious, frames = [], 0
        for stem, rgb, boxes in chosen:
            image, truth = shifted(rgb, boxes, names, args.seed, stem) if names else (rgb, boxes)
            started = time.perf_counter()
            found = detect_cells(image)
            seconds.append(time.perf_counter() - started)
            ious.append(max(iou(found[0], t) for t in truth) if found else 0.0)
            limit = FRAME_SIZED * image.shape[0] * image.shape[1]
            frames += any(box_area(b) > limit for b in found)
        ious = np.array(ious)
        passed = float(np.mean(ious >= 0.5))
        if names:
            worst_pass, worst_frame = min(worst_pass, passed), worst_frame + frames
        label = " + ".join(names) or "none"
        rows.append((label, len(chosen), passed, float(ious.mean()), frames))
        print(
            f"{label:<24} {len(chosen):>4}  {passed:7.1%}  {ious.mean():.3f}  {frames:>5}",
            flush=True,
        )

    print(
        f"raw folder: {args.raw}; seed {args.seed}; "
        f"frame-sized: a box over {FRAME_SIZED:.0%} of the frame"
    )
    print(f"{'shift':<24} {'n':>4}  {'IoU>=.5':>7}  {'mean':>5}  {'frame':>5}")
    score((), singles)
    for name in SHIFTS:
        score((name,), singles)
    if args.pair_limit:
        for pair in pairs():
            score(pair, paired)
    print(
        f"worst IoU>=0.5 share over shifts: {worst_pass:.1%}; "
        f"frame-sized boxes in all: {worst_frame}"
    )
    print(
        f"time per image (detect)  : {1000 * np.mean(seconds):.1f} ms "
        f"(max {1000 * np.max(seconds):.1f} ms)"
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/dataset-master"))
    parser.add_argument("--worst", type=int, default=0, help="list the N worst images")
    parser.add_argument("--shift", action="store_true", help="score the synthetic-shift dev set")
    parser.add_argument(
        "--limit", type=int, default=0, help="--shift: images per single shift (0: all)"
    )
    parser.add_argument(
        "--pair-limit", type=int, default=40, help="--shift: images per pair (0: no pairs)"
    )
    parser.add_argument("--seed", type=int, default=0, help="--shift: seed of every random draw")
    args = parser.parse_args(argv)
    if args.shift:
        return run_shifts(args)

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
