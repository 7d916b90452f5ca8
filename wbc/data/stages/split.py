"""Stage 3, split: train and test sides, per class.

Two protocols:

- ``report`` (the study): shuffle the augmented images of each class and put 10% in test. Copies
  of one source cell then sit on both sides, so test accuracy measures memory of a cell seen in
  training under another rotation: the study's 93% is inflated by this leak.
- ``grouped`` (default): split the *source images* of each class first (stratified by class, with
  same-field duplicates kept together), so every copy of a cell sits on one side, and keep only the
  original images on the test side: the test measures cells the model has never seen.

Files are hard-linked where the file system allows (no extra disk), else copied.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections import defaultdict
from pathlib import Path

from wbc.core.config import Config
from wbc.core.errors import DataError
from wbc.core.manifest import Manifest, run_stage, sha256_file, upstream
from wbc.core.seeding import rng_for
from wbc.data.stages.naming import parse_name

STAGE = "split"
SIDES = ("train", "test")


def link_or_copy(source: Path, target: Path) -> None:
    """Hard link when possible (same file system, supported), else a plain copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def class_files(root: Path) -> dict[str, list[Path]]:
    """``root/CLASS/*.jpg`` named by wbc, per class, sorted by name."""
    found: dict[str, list[Path]] = {}
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        files = sorted(p for p in folder.iterdir() if p.is_file() and parse_name(p.name))
        if files:
            found[folder.name] = files
    return found


def read_groups(path: Path | None) -> dict[int, int]:
    """``groups.csv`` (id, group) from the rename stage; absent means every image alone."""
    if path is None or not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["id"]): int(row["group"]) for row in csv.DictReader(handle)}


def n_test_sources(n: int, fraction: float) -> int:
    """How many of ``n`` go to test: rounded, at least one when there are two or more."""
    if n < 2:
        return 0
    return min(n - 1, max(1, int(round(n * fraction))))


def assign_grouped(
    files: dict[str, list[Path]], groups: dict[int, int], fraction: float, seed: int
) -> tuple[dict[str, dict[str, list[Path]]], dict[str, dict[str, list[int]]]]:
    """Per class: pick whole groups of source ids for test; test keeps originals only."""
    chosen: dict[str, dict[str, list[Path]]] = {}
    ids_by_side: dict[str, dict[str, list[int]]] = {}
    for cls, paths in files.items():
        by_source: dict[int, list[Path]] = defaultdict(list)
        for path in paths:
            by_source[parse_name(path.name).source_id].append(path)
        units: dict[int, list[int]] = defaultdict(list)
        for source_id in sorted(by_source):
            units[groups.get(source_id, source_id)].append(source_id)
        order = sorted(units)
        rng_for(seed, "split", cls).shuffle(order)
        wanted = n_test_sources(len(by_source), fraction)
        test_ids: list[int] = []
        for unit in order:
            if len(test_ids) >= wanted:
                break
            if len(test_ids) + len(units[unit]) > wanted and test_ids:
                continue  # a big group would overshoot; a later, smaller one may fit
            test_ids.extend(units[unit])
        test_set = set(test_ids)
        train_ids = sorted(set(by_source) - test_set)
        chosen[cls] = {
            "train": [p for i in train_ids for p in by_source[i]],
            "test": [
                p for i in sorted(test_set) for p in by_source[i] if parse_name(p.name).copy is None
            ],
        }
        ids_by_side[cls] = {"train": train_ids, "test": sorted(test_set)}
    return chosen, ids_by_side


def assign_report(
    files: dict[str, list[Path]], fraction: float, seed: int
) -> dict[str, dict[str, list[Path]]]:
    """The study's split: augmented images of each class shuffled, 10% to test."""
    chosen = {}
    for cls, paths in files.items():
        order = list(paths)
        rng_for(seed, "split", cls).shuffle(order)
        n_test = int(math.floor(len(order) * fraction + 0.5))
        chosen[cls] = {"train": sorted(order[n_test:]), "test": sorted(order[:n_test])}
    return chosen


def read_given_split(path: Path | None) -> dict[int, str]:
    """``given_split.csv`` (id, side): a lab's own train/test folders, from the rename stage."""
    if path is None or not Path(path).is_file():
        return {}
    with open(path, newline="", encoding="utf-8") as handle:
        return {int(row["id"]): row["side"] for row in csv.DictReader(handle)}


def assign_given(
    files: dict[str, list[Path]], sides: dict[int, str]
) -> tuple[dict[str, dict[str, list[Path]]], dict[str, dict[str, list[int]]]]:
    """The lab's split as it is; its test side keeps the originals only."""
    chosen, ids_by_side = {}, {}
    for cls, paths in files.items():
        by_side: dict[str, list[Path]] = {"train": [], "test": []}
        for path in paths:
            name = parse_name(path.name)
            side = sides.get(name.source_id, "train")
            if side == "train" or name.copy is None:
                by_side[side].append(path)
        chosen[cls] = by_side
        ids_by_side[cls] = {
            side: sorted({parse_name(p.name).source_id for p in by_side[side]}) for side in SIDES
        }
    return chosen, ids_by_side


def assign_across_classes(
    files: dict[str, list[Path]], groups: dict[int, int], fraction: float, seed: int
) -> tuple[dict[str, dict[str, list[Path]]], dict[str, dict[str, list[int]]]]:
    """Groups that hold several classes (a patient's or a slide's cells): whole groups go to
    one side for every class at once, stratified by class as far as the groups allow
    (scikit-learn's StratifiedGroupKFold; its first fold is the test side)."""
    import warnings

    import numpy as np
    from sklearn.model_selection import StratifiedGroupKFold

    members = [(cls, path, parse_name(path.name)) for cls, paths in files.items() for path in paths]
    originals = [(cls, name.source_id) for cls, _, name in members if name.copy is None]
    labels = np.array([cls for cls, _ in originals])
    ids = [source_id for _, source_id in originals]
    group_of = np.array([groups.get(i, -i - 1) for i in ids])
    n_splits = max(2, min(int(round(1 / fraction)), len(set(group_of.tolist()))))
    splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a class with fewer groups than folds: said by the counts
        warnings.simplefilter("ignore", UserWarning)
        _, test_index = next(splitter.split(np.zeros(len(ids)), labels, group_of))
    test_ids = {ids[i] for i in test_index}
    sides = {i: ("test" if i in test_ids else "train") for i in ids}
    return assign_given(files, sides)


def split(
    src: Path,
    dst: Path,
    config: Config,
    groups_csv: Path | None = None,
    force: bool = False,
    given_csv: Path | None = None,
) -> Manifest:
    """Split the augmented class folders in ``src`` into ``dst/{train,test}/CLASS``.

    A lab's own split (``given_csv``, from ``ROOT/{train,val,test}/CLASS``) is kept as it is."""
    augmented = upstream(src, "augment")
    given = read_given_split(given_csv)
    protocol = "given" if given else config.split.protocol
    params = {
        "protocol": protocol,
        "test_fraction": config.split.test_fraction,
        "seed": config.seed,
    }
    inputs = {"augmented": augmented.digest}
    if given:
        inputs["given"] = sha256_file(given_csv)
    groups: dict[int, int] = {}
    if protocol == "grouped":
        groups = read_groups(groups_csv)
        if groups_csv is not None and Path(groups_csv).is_file():
            inputs["groups"] = sha256_file(groups_csv)

    def build(tmp: Path) -> dict:
        files = class_files(src)
        if not files:
            raise DataError(f"{src}: no class folders with images")
        if protocol == "given":
            chosen, ids_by_side = assign_given(files, given)
        elif protocol == "grouped" and _spans_classes(files, groups):
            chosen, ids_by_side = assign_across_classes(
                files, groups, config.split.test_fraction, config.seed
            )
        elif protocol == "grouped":
            chosen, ids_by_side = assign_grouped(
                files, groups, config.split.test_fraction, config.seed
            )
        else:
            chosen, ids_by_side = assign_report(files, config.split.test_fraction, config.seed), {}
        counts: dict[str, dict[str, int]] = {}
        for cls, sides in chosen.items():
            for side in SIDES:
                folder = tmp / side / cls
                folder.mkdir(parents=True, exist_ok=True)
                for path in sides[side]:
                    link_or_copy(path, folder / path.name)
            counts[cls] = {side: len(sides[side]) for side in SIDES}
        leaked = _sources_on_both_sides(chosen)
        return {
            "protocol": protocol,
            "counts": counts,
            "source_ids": ids_by_side,
            "sources_on_both_sides": len(leaked),
        }

    return run_stage(STAGE, dst, params, inputs, build, force=force)


def _spans_classes(files: dict[str, list[Path]], groups: dict[int, int]) -> bool:
    """Whether some group holds images of two classes (a patient), not just duplicates."""
    class_of: dict[int, str] = {}
    for cls, paths in files.items():
        for path in paths:
            group = groups.get(parse_name(path.name).source_id)
            if group is not None and class_of.setdefault(group, cls) != cls:
                return True
    return False


def _sources_on_both_sides(chosen: dict[str, dict[str, list[Path]]]) -> set[int]:
    """Source ids with images on both sides: the leak the grouped protocol exists to prevent."""
    sides = {
        side: {parse_name(p.name).source_id for c in chosen.values() for p in c[side]}
        for side in SIDES
    }
    return sides["train"] & sides["test"]
