"""Find same-field duplicates in a dataset-master folder, print the evidence, draw two examples.

Produced docs/duplicates.png and the duplicate thresholds' evidence in docs/RESULTS.md.

Why: the duplicate thresholds (``wbc.data.duplicates``) were chosen by looking at the score
distribution and at the pairs themselves; this script is how to look again, e.g. on the full
public folder. It prints every prefiltered candidate pair with some evidence (inliers,
overlap correlation, overlap, shared cell), the accepted pairs with their labels from
labels.csv, the groups, and the pairs whose two labels differ. It draws two accepted pairs
into a PNG: image a | image b | a warped onto b and blended (a clean blend proves the match).

Usage: python research/show_duplicates.py [--raw ../shared/data/dataset-master]
                                         [--out docs/duplicates.png] [--min-inliers N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wbc.core.imageio import read_rgb  # noqa: E402
from wbc.data.duplicates import (  # noqa: E402
    DEFAULT_MIN_INLIERS,
    MIN_CORRELATION,
    _match,
    _prepare,
    group_ids,
    is_duplicate,
    match_candidates,
)
from wbc.data.labels import read_labels  # noqa: E402

PANEL = (256, 192)  # width, height of each drawn image


def read_label_map(path: Path) -> dict[int, str]:
    """id -> categories joined by '+' ('' when empty), via the project's labels.csv parser."""
    return {
        row.image_id: "+".join(row.categories)
        for row in read_labels(path)
        if row.image_id is not None
    }


def _panel(rgb: np.ndarray) -> np.ndarray:
    return cv2.resize(rgb, PANEL, interpolation=cv2.INTER_AREA)


def draw_pair(raw: Path, a: int, b: int, caption: str) -> np.ndarray:
    image_a = read_rgb(raw / "JPEGImages" / f"BloodImage_{a:05d}.jpg")
    image_b = read_rgb(raw / "JPEGImages" / f"BloodImage_{b:05d}.jpg")
    match = _match(_prepare(image_a), _prepare(image_b))
    work_b = cv2.resize(
        image_b,
        (320, round(320 * image_b.shape[0] / image_b.shape[1])),
        interpolation=cv2.INTER_AREA,
    )
    work_a = cv2.resize(
        image_a,
        (320, round(320 * image_a.shape[0] / image_a.shape[1])),
        interpolation=cv2.INTER_AREA,
    )
    warped = cv2.warpAffine(work_a, match.transform, (work_b.shape[1], work_b.shape[0]))
    blend = cv2.addWeighted(warped, 0.5, work_b, 0.5, 0)
    row = np.hstack([_panel(image_a), _panel(image_b), _panel(blend)])
    bar = np.full((26, row.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (6, 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 0, 0), 1, cv2.LINE_AA)
    return np.vstack([bar, row])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--raw", type=Path, default=Path("../shared/data/dataset-master"))
    parser.add_argument("--out", type=Path, default=Path("docs/duplicates.png"))
    parser.add_argument("--min-inliers", type=int, default=DEFAULT_MIN_INLIERS)
    args = parser.parse_args(argv)

    images = {
        int(p.stem.split("_")[-1]): p
        for p in sorted((args.raw / "JPEGImages").glob("BloodImage_*.jpg"))
    }
    labels = read_label_map(args.raw / "labels.csv")
    started = time.perf_counter()
    candidates = match_candidates(images)
    seconds = time.perf_counter() - started
    print(f"{len(images)} images, {len(candidates)} candidate pairs matched in {seconds:.1f} s")
    print(
        f"rule: inliers >= {args.min_inliers}, correlation >= {MIN_CORRELATION}, "
        "overlap >= 10 %, shared WBC"
    )
    print("candidates with >= 4 inliers or correlation >= 0.3:")
    print("  id_a  id_b  inliers  corr  overlap  same_cell  accepted")
    ranked = sorted(candidates.items(), key=lambda kv: (-kv[1].inliers, kv[0]))
    for (a, b), m in ranked:
        if m.inliers >= 4 or m.correlation >= 0.3:
            ok = is_duplicate(m, args.min_inliers)
            print(
                f"  {a:4d}  {b:4d}  {m.inliers:7d}  {m.correlation:4.2f}  {m.overlap:7.2f}  "
                f"{str(m.same_cell):9s}  {'yes' if ok else ''}"
            )
    rejected = [m for m in candidates.values() if not is_duplicate(m, args.min_inliers)]
    chance = [m.correlation for m in rejected if m.same_cell is not False]
    if chance:
        print(
            f"highest correlation among rejected pairs (other than overlaps without a shared "
            f"cell): {max(chance):.2f}"
        )
    no_cell = sorted(
        (a, b)
        for (a, b), m in candidates.items()
        if m.same_cell is False and m.inliers >= 3 and m.correlation >= MIN_CORRELATION
    )
    print(
        "overlapping fields without a shared WBC (not duplicates):",
        ", ".join(f"{a}-{b}" for a, b in no_cell) or "none",
    )

    pairs = sorted(
        ((a, b, m) for (a, b), m in candidates.items() if is_duplicate(m, args.min_inliers)),
        key=lambda p: p[:2],
    )
    groups = group_ids(sorted(images), [(a, b) for a, b, _ in pairs])
    members: dict[int, list[int]] = {}
    for image_id, group in groups.items():
        members.setdefault(group, []).append(image_id)
    multi = {g: ids for g, ids in members.items() if len(ids) > 1}
    print(
        f"\naccepted pairs: {len(pairs)}; groups of 2+ images: {len(multi)} "
        f"({sum(len(v) for v in multi.values())} images)"
    )
    conflicts = []
    for a, b, m in pairs:
        la, lb = labels.get(a, "(no row)"), labels.get(b, "(no row)")
        flag = "" if la == lb else "  <- labels differ"
        if la != lb:
            conflicts.append((a, b, la, lb))
        print(
            f"  {a:4d} {b:4d}  inliers {m.inliers:3d}  corr {m.correlation:.2f}  "
            f"{la!r} / {lb!r}{flag}"
        )
    print("groups:", "; ".join(",".join(map(str, ids)) for ids in multi.values()))
    print(f"pairs whose labels differ: {len(conflicts)}")
    for a, b, la, lb in conflicts:
        print(f"  {a} {la!r} vs {b} {lb!r}")

    if pairs:
        by_score = sorted(pairs, key=lambda p: -p[2].inliers)
        chosen = [max(by_score[: max(1, len(by_score) // 2)], key=lambda p: 1 - p[2].overlap)]
        conflict = [
            p
            for p in pairs
            if labels.get(p[0]) != labels.get(p[1])
            and "+" not in labels.get(p[0], "+") + labels.get(p[1], "+")
        ]
        second = conflict[0] if conflict else by_score[-1]
        if second[:2] != chosen[0][:2]:
            chosen.append(second)
        rows = []
        for a, b, m in chosen:
            caption = (
                f"{a} ({labels.get(a, '?')}) | {b} ({labels.get(b, '?')}) | a onto b: "
                f"{m.inliers} inliers, corr {m.correlation:.2f}"
            )
            rows.append(draw_pair(args.raw, a, b, caption))
        figure = np.vstack(rows)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(args.out), figure[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 9])
        print(
            f"\nwrote {args.out} ({args.out.stat().st_size // 1024} KB): pairs "
            + ", ".join(f"{a}-{b}" for a, b, _ in chosen)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
