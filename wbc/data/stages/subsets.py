"""Stage 4, subsets: the study's small (300/class), medium (900) and full (3,000) training sets.

Each subset takes ``train_fraction`` (90%) of its images per class from the split's train side and
the rest from its test side. Draws are prefixes of one seeded order per class and side, so small
is inside medium, which is inside full: a bigger subset only adds images. Where a side holds fewer
images than asked (the grouped test side holds originals only, e.g. 2 monocytes), the subset takes
what exists and the manifest and the console say so.
"""

from __future__ import annotations

from pathlib import Path

from wbc.core.config import Config
from wbc.core.manifest import Manifest, run_stage, upstream
from wbc.core.seeding import rng_for
from wbc.data.stages.split import SIDES, class_files, link_or_copy

STAGE = "subsets"
SUBSET_NAMES = ("small", "medium", "full")


def side_quota(per_class: int, train_fraction: float) -> dict[str, int]:
    n_train = int(round(per_class * train_fraction))
    return {"train": n_train, "test": per_class - n_train}


def subset(src: Path, dst: Path, config: Config, name: str, force: bool = False) -> Manifest:
    """Draw subset ``name`` from the split folder ``src`` into ``dst/{train,test}/CLASS``."""
    per_class = getattr(config.subsets, name)
    quota = side_quota(per_class, config.subsets.train_fraction)
    params = {"name": name, "per_class": per_class, "quota": quota, "seed": config.seed}
    inputs = {"split": upstream(src, "split").digest}

    def build(tmp: Path) -> dict:
        counts: dict[str, dict[str, int]] = {}
        shortfalls: list[str] = []
        for side in SIDES:
            for cls, files in class_files(src / side).items():
                order = list(files)
                rng_for(config.seed, "subsets", side, cls).shuffle(order)
                picked = order[: quota[side]]
                if len(picked) < quota[side]:
                    shortfalls.append(f"{side}/{cls}: {len(picked)} of {quota[side]}")
                folder = tmp / side / cls
                folder.mkdir(parents=True, exist_ok=True)
                for path in picked:
                    link_or_copy(path, folder / path.name)
                counts.setdefault(cls, {})[side] = len(picked)
        return {"per_class": per_class, "quota": quota, "counts": counts, "shortfalls": shortfalls}

    return run_stage(f"{STAGE}:{name}", dst, params, inputs, build, force=force)


def subsets(src: Path, dst_root: Path, config: Config, force: bool = False) -> dict[str, Manifest]:
    """All three subsets, each in its own folder ``dst_root/<name>`` with its own manifest."""
    return {name: subset(src, Path(dst_root) / name, config, name, force) for name in SUBSET_NAMES}
