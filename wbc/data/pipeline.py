"""The data stages in order: what ``wbc prepare`` runs.

Folder names follow the stage that writes them (DVC / cookiecutter-data-science style), so a
folder under ``data/`` says where it came from, and its ``manifest.json`` says how.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from wbc.core.config import Config
from wbc.core.errors import DataError
from wbc.core.manifest import Manifest, os_error_message

STAGES = ("rename", "crop", "augment", "split", "subsets")


@dataclass(frozen=True)
class DataPaths:
    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "raw"

    @property
    def default_raw(self) -> Path:
        return self.raw / "dataset-master"

    @property
    def renamed(self) -> Path:
        return self.root / "interim" / "renamed"

    @property
    def cropped(self) -> Path:
        return self.root / "interim" / "cropped"

    @property
    def augmented(self) -> Path:
        return self.root / "interim" / "augmented"

    @property
    def split(self) -> Path:
        return self.root / "processed" / "split"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    def subset(self, name: str) -> Path:
        return self.processed / name


def prepared_crop(data_dir: Path) -> dict | None:
    """The crop settings the prepared training images were made with, read from the manifests.

    The augment stage records the digest of the folder it read: the crop stage's output (then
    the crop manifest's params say how) or the rename stage's (no crop). None when unknown
    (nothing prepared, or folders made by hand). Training trusts this over the config it is
    given, because a model must record how ITS images were cut for predict to repeat it.
    """
    import dataclasses

    from wbc.core.config import CropConfig

    paths = DataPaths(Path(data_dir))
    try:
        augmented = Manifest.load(paths.augmented)
    except DataError:
        return None
    source = augmented.inputs.get("images")
    for folder in (paths.cropped, paths.renamed):
        try:
            manifest = Manifest.load(folder)
        except DataError:
            continue
        if manifest.digest != source:
            continue
        if folder == paths.renamed:
            return {"mode": "none"}
        names = {f.name for f in dataclasses.fields(CropConfig)}
        return {k: v for k, v in manifest.params.items() if k in names}
    return None


def data_origin(data_dir: Path) -> dict | None:
    """Where prepared data came from: the rename stage's layout, raw path and classes."""
    try:
        summary = Manifest.load(DataPaths(Path(data_dir)).renamed).summary
    except DataError:
        return None
    return {
        "layout": summary.get("layout", "dataset-master"),
        "raw": summary.get("raw"),
        "classes": summary.get("classes") or list(summary.get("counts", {})),
        "source_images": summary.get("kept"),
    }


def _describe(manifest: Manifest) -> str:
    summary = manifest.summary
    counts = summary.get("counts")
    if isinstance(counts, dict) and counts:
        parts = []
        for cls, value in counts.items():
            if isinstance(value, dict):
                parts.append(f"{cls} " + "/".join(str(v) for v in value.values()))
            else:
                parts.append(f"{cls} {value}")
        return "; ".join(parts)
    return f"{len(manifest.outputs)} files"


def _report(echo: Callable[[str], None], name: str, manifest: Manifest, dst: Path) -> None:
    if manifest.skipped:
        echo(f"{name}: up to date, skipped (manifest matches) -> {dst}")
    else:
        echo(f"{name}: done in {manifest.seconds:.1f}s -> {dst} ({_describe(manifest)})")
    for line in manifest.summary.get("shortfalls", []) if not manifest.skipped else []:
        echo(f"  {name}: fewer images than asked in {line}")


def _ensure_writable(root: Path) -> None:
    try:
        root.mkdir(parents=True, exist_ok=True)
        probe = root / ".wbc-write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise DataError(os_error_message(exc, root)) from None


def prepare(
    config: Config,
    data_dir: Path,
    raw: Path | None = None,
    only: str | None = None,
    force: bool = False,
    echo: Callable[[str], None] = print,
) -> dict[str, Manifest]:
    """Run every stage (or only ``only``) and return their manifests by stage name.

    Holds ``data_dir``'s lock (``wbc.core.locks``): a second prepare on the same folder stops at once
    instead of racing this one's stage renames."""
    from wbc.core.locks import folder_lock

    if only is not None and only not in STAGES:
        raise DataError(f"unknown stage '{only}' (stages: {', '.join(STAGES)})")
    _ensure_writable(Path(data_dir))
    with folder_lock(Path(data_dir), "preparing data"):
        return _prepare(config, data_dir, raw, only, force, echo)


def _prepare(
    config: Config,
    data_dir: Path,
    raw: Path | None,
    only: str | None,
    force: bool,
    echo: Callable[[str], None],
) -> dict[str, Manifest]:
    from wbc.data.stages.augment import augment
    from wbc.data.stages.rename import rename
    from wbc.data.stages.split import split
    from wbc.data.stages.subsets import subsets

    paths = DataPaths(Path(data_dir))
    cropping = config.crop.mode != "none"
    results: dict[str, Manifest] = {}

    def wanted(name: str) -> bool:
        return only is None or only == name

    if wanted("rename"):
        from wbc.data.layouts import detect_layout
        from wbc.data.raw import locate_raw

        source = Path(raw) if raw is not None else paths.default_raw
        if raw is None and not source.exists():
            raise DataError(
                f"{source}: no raw data; pass --raw PATH (class folders, a CSV of file and "
                "label, the dataset-master folder or its zip) or run `wbc fetch`"
            )
        if not source.exists():
            raise DataError(f"{source}: not found")
        layout = detect_layout(source)
        if layout == "dataset-master":
            source = locate_raw(source, raw_dir=paths.raw).root
        echo(f"layout: {layout} ({source})")
        results["rename"] = rename(source, paths.renamed, config, force=force, echo=echo)
        _report(echo, "rename", results["rename"], paths.renamed)
        summary = results["rename"].summary
        echo(
            f"  rename: kept {summary['kept']}, skipped {summary['skipped']} "
            f"(see {paths.renamed / 'skipped.csv'}); same-field groups: "
            f"{summary['duplicate_groups']}"
        )
        for cls, why in summary.get("dropped_classes", {}).items():
            echo(f"  rename: class {cls} dropped: {why}")

    if wanted("crop"):
        if cropping:
            from wbc.data.stages.crop import crop

            results["crop"] = crop(
                paths.renamed,
                paths.cropped,
                config,
                boxes_csv=paths.renamed / "boxes.csv",
                force=force,
            )
            _report(echo, "crop", results["crop"], paths.cropped)
            summary = results["crop"].summary
            echo(
                f"  crop: {summary.get('from_boxes', 0)} cut from boxes, "
                f"{summary.get('detected', 0)} by the detector, "
                f"{summary.get('fallback_centre', 0)} centre squares (no cell found); crops "
                f"{summary.get('kept_whole', 0)} kept whole, {summary.get('reframed', 0)} re-cut "
                "around their cell"
            )
        elif only == "crop":
            echo("crop: nothing to do (crop.mode is none)")

    if wanted("augment"):
        source = paths.cropped if cropping else paths.renamed
        results["augment"] = augment(source, paths.augmented, config, force=force, echo=echo)
        _report(echo, "augment", results["augment"], paths.augmented)

    if wanted("split"):
        results["split"] = split(
            paths.augmented,
            paths.split,
            config,
            groups_csv=paths.renamed / "groups.csv",
            force=force,
            given_csv=paths.renamed / "given_split.csv",
        )
        _report(echo, "split", results["split"], paths.split)
        if results["split"].summary.get("protocol") == "given":
            echo("  split: the raw folder's own train/val/test split is kept (val and test: test)")

    if wanted("subsets"):
        for name, manifest in subsets(paths.split, paths.processed, config, force=force).items():
            results[f"subsets:{name}"] = manifest
            _report(echo, f"subsets/{name}", manifest, paths.subset(name))
    return results
