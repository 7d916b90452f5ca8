"""What ``wbc cv`` folds: the source images of each class (same-field duplicates kept together),
dealt into K stratified groups (scikit-learn's ``StratifiedGroupKFold``), capped per class, and
each fold's ``train``/``test`` class folders, built atomically (a temp folder renamed into place).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.config import Config
from wbc.core.errors import ConfigError, DataError
from wbc.core.manifest import load_if_current, sha256_file, sha256_json, stage_key, upstream
from wbc.core.progress import no_echo
from wbc.core.seeding import derived_seed, rng_for
from wbc.data.stages.naming import parse_name

Echo = Callable[[str], None]


def deal_folds(
    units: dict[str, Sequence[Sequence[Hashable]]], k: int, seed: int
) -> list[dict[str, list]]:
    """Split each class's units (groups of members) into ``k`` folds; returns folds[i][cls].

    scikit-learn's ``StratifiedGroupKFold`` (shuffled, seeded from ``seed``) does the dealing: a
    unit never straddles folds, and each fold gets about 1/k of every class. Units are put in a
    canonical order first, so the folds depend only on the units and the seed.
    """
    from sklearn.model_selection import StratifiedGroupKFold

    if k < 2:
        raise ConfigError(f"--folds: need at least 2 folds, got {k}")
    members, labels, groups = [], [], []
    for cls in sorted(units):
        order = sorted(
            (list(unit) for unit in units[cls] if len(unit)),
            key=lambda unit: str(sorted(map(str, unit))),
        )
        for unit in order:
            group = len(members) and groups[-1] + 1
            for member in unit:
                members.append((cls, member))
                labels.append(cls)
                groups.append(group)
    folds: list[dict[str, list]] = [{cls: [] for cls in units} for _ in range(k)]
    if len(set(groups)) < k:
        raise DataError(f"--folds {k}: only {len(set(groups))} source groups to deal")
    splitter = StratifiedGroupKFold(
        n_splits=k, shuffle=True, random_state=derived_seed(seed, "cv") % 2**32
    )
    import warnings

    with warnings.catch_warnings():  # "least populated class has only n members": said by cv
        warnings.simplefilter("ignore", UserWarning)
        splits = list(splitter.split(np.zeros(len(labels)), labels, groups))
    for index, (_, test) in enumerate(splits):
        for row in test:
            cls, member = members[row]
            folds[index][cls].append(member)
    for fold in folds:
        for cls in fold:
            fold[cls].sort(key=_member_key)
    return folds


def _member_key(member: Hashable):
    return (0, member, "") if isinstance(member, int) else (1, 0, str(member))


def cap_files(
    files_by_member: dict[Hashable, Sequence[Path]], limit: Optional[int], seed: int, *keys: object
) -> list[Path]:
    """At most ``limit`` of the files, spread evenly over the members, with a seeded draw.

    Files are ranked within their member (the original first, then copies by number); all rank-0
    files come before any rank-1 file, and so on, with a seeded random order inside a rank. So a
    cap keeps every source's original before any copy, and gives each source the same number of
    copies (+/- 1). ``limit`` None: every file.
    """
    every = [
        p for member in sorted(files_by_member, key=_member_key) for p in files_by_member[member]
    ]
    if limit is None or limit >= len(every):
        return sorted(every, key=lambda p: p.name)
    rng = rng_for(seed, "cv-cap", *keys)
    ranked = []
    for member in sorted(files_by_member, key=_member_key):
        for rank, path in enumerate(sorted(files_by_member[member], key=_copy_order)):
            ranked.append((rank, path))
    noise = rng.random(len(ranked))
    order = sorted(range(len(ranked)), key=lambda i: (ranked[i][0], noise[i]))
    return sorted((ranked[i][1] for i in order[:limit]), key=lambda p: p.name)


def _copy_order(path: Path):
    name = parse_name(path.name)
    if name is None:
        return (0, 0, path.name)
    return (0 if name.copy is None else 1, name.copy or 0, path.name)


@dataclass
class FoldSource:
    """What cross-validation draws from: per class, each member's train and test files.

    A member is a source id (prepared data) or a file's group key (``--data`` folder).
    """

    mode: str  # "prepared" | "folder"
    where: str  # the folder(s) read, for the report
    identity: str  # digest of the inputs: a changed input makes a new plan
    train_files: dict[str, dict[Hashable, list[Path]]]
    test_files: dict[str, dict[Hashable, list[Path]]]
    groups: dict[Hashable, Hashable] = field(default_factory=dict)

    @property
    def classes(self) -> list[str]:
        return sorted(self.test_files)

    def units(self) -> dict[str, list]:
        result: dict[str, list] = {}
        for cls in self.classes:
            bundles: dict[Hashable, list] = defaultdict(list)
            for member in sorted(self.test_files[cls], key=_member_key):
                bundles[self.groups.get(member, member)].append(member)
            result[cls] = [bundles[key] for key in sorted(bundles, key=_member_key)]
        return result


def resolve_augmented(
    config: Config, data_dir: Path, cache_dir: Path, echo: Echo = no_echo
) -> tuple[Path, Path]:
    """``(sources folder, augmented folder)`` for ``config``.

    The sources are the rename stage's output (the crop stage's when crop.mode is not none, which
    must have been made with the same crop settings). The augmented folder is the prepared
    ``DATA/interim/augmented`` when its manifest matches the config's augment settings, else
    ``cache_dir/augmented-<key>``, made now by the augment stage (and skipped next time).
    """
    from wbc.data.pipeline import DataPaths
    from wbc.data.stages.augment import STAGE, augment, augment_params

    paths = DataPaths(Path(data_dir))
    cropping = config.crop.mode != "none"
    src = paths.cropped if cropping else paths.renamed
    manifest = upstream(src, "crop" if cropping else "rename")
    if cropping:
        made = {k: manifest.params.get(k) for k in ("mode", "padding", "size")}
        wanted = {
            "mode": config.crop.mode,
            "padding": config.crop.padding,
            "size": config.crop.size,
        }
        if made != wanted:
            raise DataError(
                f"{src}: made with crop settings {made}, not {wanted}; run "
                "`wbc prepare --stage crop` with this config first"
            )
    key = stage_key(STAGE, augment_params(config), {"images": manifest.digest})
    if load_if_current(paths.augmented, key) is not None:
        return src, paths.augmented
    target = Path(cache_dir) / f"augmented-{key[:12]}"
    if load_if_current(target, key) is None:
        echo(
            f"cv: {paths.augmented} does not match the augment settings of this config; "
            f"augmenting {src} into {target}"
        )
    augment(src, target, config, echo=echo)
    return src, target


def prepared_source(
    config: Config, data_dir: Path, cache_dir: Path, echo: Echo = no_echo
) -> FoldSource:
    """Sources, their augmented images and their same-field groups, from a prepared data dir."""
    from wbc.data.pipeline import DataPaths
    from wbc.data.stages.split import class_files, read_groups

    src, augmented = resolve_augmented(config, data_dir, cache_dir, echo)
    test_files: dict[str, dict[Hashable, list[Path]]] = defaultdict(dict)
    for path in sorted(Path(src).iterdir()):
        name = parse_name(path.name)
        if name is not None and name.copy is None and path.is_file():
            test_files[name.cls][name.source_id] = [path]
    if not test_files:
        raise DataError(f"{src}: no CLASS.ID.jpg source images")
    train_files: dict[str, dict[Hashable, list[Path]]] = {}
    for cls, paths in class_files(augmented).items():
        by_source: dict[Hashable, list[Path]] = defaultdict(list)
        for path in paths:
            by_source[parse_name(path.name).source_id].append(path)
        train_files[cls] = dict(by_source)
    for cls, sources in test_files.items():
        missing = sorted(set(sources) - set(train_files.get(cls, {})))
        if missing:
            raise DataError(
                f"{augmented}: no images of {cls} source(s) "
                f"{', '.join(map(str, missing[:5]))}; run `wbc prepare` again"
            )
    groups_csv = DataPaths(Path(data_dir)).renamed / "groups.csv"
    groups = read_groups(groups_csv)
    identity = sha256_json(
        {
            "sources": upstream(src, "rename").digest,
            "augmented": upstream(augmented, "augment").digest,
            "groups": sha256_file(groups_csv) if groups_csv.is_file() else None,
        }
    )
    return FoldSource(
        "prepared", f"{src} + {augmented}", identity, train_files, dict(test_files), dict(groups)
    )


def folder_source(folder: Path) -> FoldSource:
    """A plain folder of class folders: every file is used as is (no augmentation).

    Files named ``CLASS.ID[.aNNNN].jpg`` are grouped by their source id, so copies of one cell
    never straddle folds.
    """
    from wbc.imaging.feeds import list_class_files

    folder = Path(folder)
    classes, files, labels = list_class_files(folder)
    by_class: dict[str, dict[Hashable, list[Path]]] = defaultdict(dict)
    groups: dict[Hashable, Hashable] = {}
    listing = []
    for path, label in zip(files, labels):
        cls = classes[int(label)]
        member = f"{cls}/{path.name}"
        by_class[cls][member] = [path]
        name = parse_name(path.name)
        if name is not None:
            groups[member] = f"{cls}/source-{name.source_id}"
        listing.append([member, path.stat().st_size])
    return FoldSource(
        "folder", str(folder), sha256_json(listing), dict(by_class), dict(by_class), groups
    )


def is_wbc_folder(folder: Path) -> bool:
    """Whether ``folder``'s class folders hold wbc's own image names only (a prepared side)."""
    from wbc.imaging.feeds import list_class_files

    try:
        _, files, _ = list_class_files(Path(folder))
    except DataError:
        return False
    return bool(files) and all(parse_name(path.name) is not None for path in files)


def data_source(data: Path, config: Config, cache_dir: Path, echo: Echo = no_echo) -> FoldSource:
    """What ``wbc cv --data`` reads: a folder of wbc's prepared class folders as it is, else a
    lab's layout (class folders, a CSV, dataset-master) read as ``wbc prepare`` reads it: the
    rename stage (groups, duplicates, bad files skipped) and the crop stage's per-image rule
    (smears cropped to their WBC, crops kept whole), cached in ``cache_dir/lab-data``."""
    if Path(data).is_dir() and is_wbc_folder(Path(data)):
        return folder_source(Path(data))
    return lab_source(Path(data), config, Path(cache_dir) / "lab-data", echo)


def lab_source(raw: Path, config: Config, work: Path, echo: Echo = no_echo) -> FoldSource:
    from wbc.data.stages.crop import crop
    from wbc.data.stages.rename import rename
    from wbc.data.stages.split import read_groups

    renamed = rename(raw, work / "renamed", config)
    echo(
        f"--data {raw}: {renamed.summary.get('layout')}, {renamed.summary['kept']} images kept, "
        f"{renamed.summary['skipped']} skipped (see {work / 'renamed' / 'skipped.csv'})"
    )
    folder, identity = work / "renamed", renamed.digest
    if config.crop.mode != "none":
        cropped = crop(work / "renamed", work / "cropped", config)
        folder, identity = work / "cropped", cropped.digest
    groups = read_groups(work / "renamed" / "groups.csv")
    by_class: dict[str, dict[Hashable, list[Path]]] = defaultdict(dict)
    members: dict[Hashable, Hashable] = {}
    for path in sorted(folder.iterdir()):
        name = parse_name(path.name)
        if name is None or name.copy is not None:
            continue
        member = f"{name.cls}/{path.name}"
        by_class[name.cls][member] = [path]
        if name.source_id in groups:
            members[member] = f"group-{groups[name.source_id]}"
    return FoldSource("folder", str(raw), identity, dict(by_class), dict(by_class), members)


def build_fold_data(
    source: FoldSource,
    members: dict[str, list],
    target: Path,
    per_class: Optional[int],
    seed: int,
    fold: int,
) -> dict[str, Any]:
    """``target/{train,test}/CLASS/`` for one fold (atomic: a temp folder renamed into place).

    Test: the test files (originals) of ``members``; train: the train files of every other
    member of the class, capped at ``per_class`` per class by ``cap_files``.
    """
    from wbc.data.stages.split import link_or_copy

    target = Path(target)
    summary_path = target / "fold.json"
    if summary_path.is_file():
        return json.loads(summary_path.read_text(encoding="utf-8"))
    tmp = target.with_name(f".{target.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    counts: dict[str, dict[str, int]] = {}
    for cls in source.classes:
        in_fold = set(members.get(cls, []))
        test = [p for m in sorted(in_fold, key=_member_key) for p in source.test_files[cls][m]]
        pool = {
            m: files for m, files in source.train_files.get(cls, {}).items() if m not in in_fold
        }
        train = cap_files(pool, per_class, seed, fold, cls)
        for side, paths in (("train", train), ("test", test)):
            if not paths:
                continue
            folder = tmp / side / cls
            folder.mkdir(parents=True, exist_ok=True)
            for path in paths:
                link_or_copy(path, folder / path.name)
        counts[cls] = {"train": len(train), "test": len(test), "test_sources": len(in_fold)}
    summary = {
        "fold": fold,
        "counts": counts,
        "test_members": {c: list(members.get(c, [])) for c in source.classes},
    }
    (tmp / "fold.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if target.exists():
        shutil.rmtree(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, target)
    return summary
