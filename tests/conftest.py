"""Shared fixtures: tiny synthetic datasets the tests make themselves (no real data needed).

Synthetic "smears" are pinkish backgrounds with one dark purple blob (the "WBC") whose size and
shape depend on the class, so that a small CNN can learn them and the stain detector finds them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The study's recipe with every key written out: tests of the study's model (and of the
# commands on a study run) pin it, since the built-in default is another family.
STUDY_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "study.yaml"
CLASSES = ("NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE")
# Per class: blob radius as a fraction of the image height, and aspect (x stretch).
_CLASS_SHAPES = {
    "NEUTROPHIL": (0.10, 1.0),
    "EOSINOPHIL": (0.18, 1.0),
    "LYMPHOCYTE": (0.12, 2.0),
    "MONOCYTE": (0.22, 0.5),
}


def tree_hash(root: Path) -> str:
    """One hash of every path and byte under ``root`` (links by target): "byte-identical"."""
    import hashlib

    digest = hashlib.sha256()
    for path in sorted(Path(root).rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            digest.update(str(path.readlink()).encode())
        elif path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


def synthetic_smear(cls: str, rng: np.random.Generator, size=(48, 64)) -> tuple[np.ndarray, tuple]:
    """An (H, W, 3) uint8 image with one class-shaped purple blob, and the blob's box."""
    height, width = size
    image = np.empty((height, width, 3), np.uint8)
    image[:] = (228, 190, 200)
    image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    radius_frac, aspect = _CLASS_SHAPES[cls]
    ry = max(2, int(radius_frac * height))
    rx = max(2, int(ry * aspect))
    cy = int(rng.integers(ry + 1, height - ry - 1))
    cx = int(rng.integers(min(rx + 1, width // 2), max(width - rx - 1, width // 2 + 1)))
    yy, xx = np.mgrid[:height, :width]
    mask = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0
    image[mask] = (95, 40, 140)
    box = (max(cx - rx, 0), max(cy - ry, 0), min(cx + rx, width - 1), min(cy + ry, height - 1))
    return image, box


def voc_xml(filename: str, width: int, height: int, boxes: list[tuple]) -> str:
    objects = "".join(
        f"<object><name>WBC</name><bndbox><xmin>{x0}</xmin><ymin>{y0}</ymin>"
        f"<xmax>{x1}</xmax><ymax>{y1}</ymax></bndbox></object>"
        for (x0, y0, x1, y1) in boxes
    )
    return (
        f"<annotation><filename>{filename}</filename><size><width>{width}</width>"
        f"<height>{height}</height><depth>3</depth></size>{objects}</annotation>"
    )


def make_raw_folder(root: Path, counts: dict[str, int], size=(48, 64), seed: int = 0) -> Path:
    """A dataset-master look-alike: labels.csv (CRLF, index column), JPEGImages/, Annotations/."""
    rng = np.random.default_rng(seed)
    images = root / "JPEGImages"
    annotations = root / "Annotations"
    images.mkdir(parents=True)
    annotations.mkdir()
    rows = [",Image,Category"]
    image_id = 0
    for cls, n in counts.items():
        for _ in range(n):
            array, box = synthetic_smear(cls, rng, size)
            name = f"BloodImage_{image_id:05d}"
            Image.fromarray(array).save(images / f"{name}.jpg", quality=95)
            (annotations / f"{name}.xml").write_text(
                voc_xml(f"{name}.jpg", size[1], size[0], [box])
            )
            rows.append(f",{image_id},{cls}")
            image_id += 1
    (root / "labels.csv").write_bytes("\r\n".join(rows).encode())
    return root


def make_class_folders(
    root: Path, counts: dict[str, int], size=(48, 64), seed: int = 0, ext: str = ".jpg"
) -> Path:
    """``root/CLASS/CLASS.ID.jpg`` images (the layout of a prepared split side)."""
    rng = np.random.default_rng(seed)
    image_id = 0
    for cls, n in counts.items():
        (root / cls).mkdir(parents=True, exist_ok=True)
        for _ in range(n):
            array, _ = synthetic_smear(cls, rng, size)
            Image.fromarray(array).save(root / cls / f"{cls}.{image_id}{ext}", quality=95)
            image_id += 1
    return root


def make_run(run_dir: Path, overrides=(), image_size=(40, 56), seed: int = 0) -> Path:
    """A run folder as `wbc train` leaves it: model.keras, config.yaml, classes.json."""
    import keras

    from wbc.core.config import dump_config, load_config
    from wbc.models.study import build_model

    run_dir.mkdir(parents=True, exist_ok=True)
    config = load_config(
        STUDY_CONFIG, [f"train.image_size=[{image_size[0]}, {image_size[1]}]", *overrides]
    )
    keras.utils.set_random_seed(seed)
    model = build_model(config.model, config.train.image_size, len(CLASSES))
    model.save(run_dir / "model.keras")
    dump_config(config, run_dir / "config.yaml")
    (run_dir / "classes.json").write_text(json.dumps(list(CLASSES)))
    return run_dir / "model.keras"


@pytest.fixture(scope="session", autouse=True)
def litert_cache(tmp_path_factory):
    """Converted models go to a per-session folder, not the user's ~/.cache (also in the
    subprocesses that tests start, which inherit the environment)."""
    folder = tmp_path_factory.mktemp("litert-cache")
    saved = os.environ.get("WBC_CACHE_DIR")
    os.environ["WBC_CACHE_DIR"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("WBC_CACHE_DIR", None)
    else:
        os.environ["WBC_CACHE_DIR"] = saved


@pytest.fixture
def tiny_raw(tmp_path) -> Path:
    """A small raw folder: 12 neutrophils, 8 eosinophils, 6 lymphocytes, 5 monocytes."""
    return make_raw_folder(
        tmp_path / "dataset-master",
        {"NEUTROPHIL": 12, "EOSINOPHIL": 8, "LYMPHOCYTE": 6, "MONOCYTE": 5},
    )


@pytest.fixture(scope="session")
def real_lab() -> Path:
    """Another lab's class folders at $WBC_LAB (tecom-crops); required when CI is set."""
    value = os.environ.get("WBC_LAB")
    path = Path(value) if value else None
    if path is None or not path.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but WBC_LAB={value!r} is not a folder of class folders")
        pytest.skip("set WBC_LAB to a lab's class folders (tecom-crops) to run this test")
    return path


@pytest.fixture(scope="session")
def real_raw() -> Path:
    """The real dataset-master at $WBC_RAW; required (never skipped) when CI is set."""
    value = os.environ.get("WBC_RAW")
    path = Path(value) if value else None
    if path is None or not (path / "labels.csv").is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but WBC_RAW={value!r} is not a dataset-master folder")
        pytest.skip("set WBC_RAW to the dataset-master folder to run the real-data tests")
    return path
