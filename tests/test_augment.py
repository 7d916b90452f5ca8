"""The augment stage and its two engines.

Tiny synthetic images keep the stage tests fast; the engine tests check that the OpenCV engine is a
faithful stand-in for Keras's ImageDataGenerator (same parameter distributions, same images).
"""

import numpy as np
import pytest
from PIL import Image

from wbc.core.config import AugmentConfig, load_config
from wbc.core.errors import DataError
from wbc.core.manifest import run_stage
from wbc.data.augmenters import KerasAugmenter, OpenCVAugmenter
from wbc.data.stages.augment import augment, plan_copies
from wbc.data.stages.naming import parse_name

from conftest import synthetic_smear

# Ids chosen so that numeric and text order differ (100 < 12 as text): copies follow numeric order.
SOURCE_IDS = {
    "NEUTROPHIL": [3, 12, 100, 7, 40],
    "EOSINOPHIL": [5, 61, 9],
    "LYMPHOCYTE": [2, 30],
}


def make_src(root, ids=SOURCE_IDS, size=(48, 64), seed=0):
    """A renamed-stage look-alike: flat CLASS.ID.jpg files, a stray CSV and a manifest."""
    rng = np.random.default_rng(seed)

    def build(tmp):
        for cls, numbers in ids.items():
            for number in numbers:
                image, _ = synthetic_smear(cls, rng, size)
                Image.fromarray(image).save(tmp / f"{cls}.{number}.jpg", quality=95)
        (tmp / "skipped.csv").write_text("id,file,reason\n")
        return {"counts": {cls: len(numbers) for cls, numbers in ids.items()}}

    run_stage("rename", root, {}, {}, build)
    return root


def config(*overrides):
    return load_config(
        None,
        [
            "augment.per_class=8",
            "augment.workers=1",
            "augment.engine=imagedatagenerator",
            *overrides,
        ],
    )


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    return make_src(tmp_path_factory.mktemp("augment") / "renamed")


@pytest.fixture(scope="module")
def keras_run(src, tmp_path_factory):
    dst = tmp_path_factory.mktemp("augment") / "augmented"
    return dst, augment(src, dst, config())


def test_counts_names_and_byte_identical_originals(src, keras_run):
    dst, manifest = keras_run
    assert sorted(p.name for p in dst.iterdir() if p.is_dir()) == sorted(SOURCE_IDS)
    for cls, ids in SOURCE_IDS.items():
        files = sorted((dst / cls).iterdir())
        assert len(files) == 8
        names = [parse_name(f.name) for f in files]
        assert all(n is not None and n.cls == cls and n.source_id in ids for n in names)
        originals = [f for f, n in zip(files, names) if n.copy is None]
        assert sorted(parse_name(f.name).source_id for f in originals) == sorted(ids)
        for f in originals:
            assert f.read_bytes() == (src / f.name).read_bytes()
        copies = sorted(n.copy for n in names if n.copy is not None)
        assert copies == list(range(8 - len(ids)))
        counts = manifest.summary["counts"][cls]
        assert counts == {"originals": len(ids), "copies": 8 - len(ids), "total": 8}
    assert manifest.summary["over_per_class"] == {}
    assert not (dst / "skipped.csv").exists()


def test_copies_go_round_robin_over_sorted_source_ids(src):
    sources = [(3, src), (7, src), (12, src), (40, src), (100, src)]
    jobs = plan_copies("NEUTROPHIL", sources, per_class=12)  # 7 copies over 5 sources
    assert [(job.source_id, job.copies) for job in jobs] == [
        (3, (0, 5)),
        (7, (1, 6)),
        (12, (2,)),
        (40, (3,)),
        (100, (4,)),
    ]
    assert plan_copies("NEUTROPHIL", sources, per_class=7)[-1].source_id == 7


def test_copies_are_transformed_images_of_their_source(keras_run):
    dst, _ = keras_run
    copy = np.asarray(Image.open(dst / "NEUTROPHIL" / "NEUTROPHIL.3.a0000.jpg"), dtype=float)
    original = np.asarray(Image.open(dst / "NEUTROPHIL" / "NEUTROPHIL.3.jpg"), dtype=float)
    assert copy.shape == original.shape
    assert np.abs(copy - original).mean() > 2  # rotated/shifted, not a plain re-encode


def test_output_does_not_depend_on_the_number_of_workers(src, tmp_path):
    # OpenCV keeps this fast; the Keras engine's part (its seeding) is checked just below.
    one = augment(src, tmp_path / "one", config("augment.engine=opencv"))
    two = augment(src, tmp_path / "two", config("augment.engine=opencv", "augment.workers=2"))
    assert one.outputs == two.outputs
    assert one.key == two.key  # workers is not a parameter of the output


def test_keras_draws_depend_on_the_seed_alone(engines):
    keras = engines[0]
    first = keras.random_params((48, 64, 3), seed=123)
    np.random.seed(999)  # whatever a worker did before must not matter
    np.random.random(17)
    state = np.random.get_state()[1].copy()
    assert keras.random_params((48, 64, 3), seed=123) == first
    assert (np.random.get_state()[1] == state).all()  # and numpy's global state is put back
    assert keras.random_params((48, 64, 3), seed=124) != first


def test_engines_and_seeds_give_different_copies(src, keras_run, tmp_path):
    opencv = augment(src, tmp_path / "cv", config("augment.engine=opencv"))
    reseeded = augment(src, tmp_path / "seed", config("seed=7"))
    keras = keras_run[1]
    copy = "NEUTROPHIL/NEUTROPHIL.3.a0000.jpg"
    original = "NEUTROPHIL/NEUTROPHIL.3.jpg"
    assert len({keras.outputs[copy], opencv.outputs[copy], reseeded.outputs[copy]}) == 3
    assert keras.outputs[original] == opencv.outputs[original] == reseeded.outputs[original]


def test_rerun_is_skipped_and_a_changed_parameter_redoes_it(src, tmp_path):
    dst = tmp_path / "aug"
    cfg = config("augment.engine=opencv")
    first = augment(src, dst, cfg)
    assert not first.skipped
    again = augment(src, dst, cfg)
    assert again.skipped and again.outputs == first.outputs
    other_workers = augment(src, dst, config("augment.engine=opencv", "augment.workers=2"))
    assert other_workers.skipped
    rotated_less = augment(src, dst, config("augment.engine=opencv", "augment.rotation_range=10"))
    assert not rotated_less.skipped and rotated_less.outputs != first.outputs
    assert (
        augment(
            src, dst, config("augment.engine=opencv", "augment.rotation_range=10"), force=True
        ).skipped
        is False
    )


def test_per_class_below_the_originals_keeps_them_all(src, tmp_path):
    manifest = augment(src, tmp_path / "aug", config("augment.per_class=3"))
    counts = manifest.summary["counts"]
    assert counts["NEUTROPHIL"] == {"originals": 5, "copies": 0, "total": 5}
    assert counts["LYMPHOCYTE"] == {"originals": 2, "copies": 1, "total": 3}
    assert manifest.summary["over_per_class"] == {"NEUTROPHIL": 5}
    assert len(list((tmp_path / "aug" / "NEUTROPHIL").iterdir())) == 5


def test_missing_upstream_and_empty_source_are_clear_errors(tmp_path):
    with pytest.raises(DataError, match="missing; run `wbc prepare --stage rename`"):
        augment(tmp_path / "nowhere", tmp_path / "aug", config())
    empty = tmp_path / "empty"
    run_stage("rename", empty, {}, {}, lambda tmp: {})
    with pytest.raises(DataError, match="no CLASS.ID.jpg images"):
        augment(empty, tmp_path / "aug", config())


def test_unreadable_source_fails_naming_the_file_from_a_worker(tmp_path):
    def build(tmp):
        make_src(tmp_path / "good")
        for path in (tmp_path / "good").glob("*.jpg"):
            (tmp / path.name).write_bytes(path.read_bytes())
        (tmp / "EOSINOPHIL.61.jpg").write_bytes(b"not a jpeg")
        return {}

    bad = tmp_path / "bad"
    run_stage("rename", bad, {}, {}, build)
    cfg = config("augment.engine=opencv", "augment.workers=2")
    with pytest.raises(DataError, match=r"EOSINOPHIL\.61\.jpg: not an image"):
        augment(bad, tmp_path / "aug", cfg)
    assert not (tmp_path / "aug").exists()


# --- the OpenCV engine against Keras's ImageDataGenerator ------------------------------------

ENGINE_CONFIG = AugmentConfig(zoom_range=0.2, shear_range=20.0)


@pytest.fixture(scope="module")
def engines():
    return KerasAugmenter(ENGINE_CONFIG), OpenCVAugmenter(ENGINE_CONFIG)


def test_engines_draw_parameters_from_the_same_distributions(engines):
    shape = (480, 640, 3)
    draws = 3000
    keras, opencv = (
        {
            key: np.array([float(p[key]) for p in params])
            for key in params[0]
            if key in ("theta", "tx", "ty", "shear", "zx", "zy", "flip_horizontal", "flip_vertical")
        }
        for params in (
            [engine.random_params(shape, seed) for seed in range(draws)] for engine in engines
        )
    )
    bounds = {
        "theta": 180,
        "tx": 48,
        "ty": 64,
        "shear": 20,
        "zx": (0.8, 1.2),
        "zy": (0.8, 1.2),
        "flip_horizontal": (0, 1),
        "flip_vertical": (0, 1),
    }
    assert set(keras) == set(opencv) == set(bounds)
    for key, bound in bounds.items():
        low, high = bound if isinstance(bound, tuple) else (-bound, bound)
        spread = high - low
        for values in (keras[key], opencv[key]):
            assert low <= values.min() and values.max() <= high, key
            assert values.min() < low + 0.05 * spread and values.max() > high - 0.05 * spread, key
        # Uniform draws: the means' standard error is spread / sqrt(12 * draws) ~ 0.005 spread.
        assert abs(keras[key].mean() - opencv[key].mean()) < 0.03 * spread, key
        assert abs(keras[key].std() - opencv[key].std()) < 0.03 * spread, key


def smooth_image(height=60, width=80):
    """Low-frequency colour waves: bilinear sampling differences stay below a grey level."""
    y, x = np.mgrid[:height, :width] / max(height, width)
    red = 128 + 90 * np.sin(2 * np.pi * (1.3 * x + 0.4 * y))
    green = 128 + 90 * np.cos(2 * np.pi * (0.5 * x - 1.1 * y))
    blue = 40 + 180 * x * y
    return np.stack([red, green, blue], axis=-1).round().astype(np.uint8)


FIXED_TRANSFORMS = [
    {"theta": 30, "tx": 5, "ty": -3, "shear": 10, "flip_horizontal": True},
    {
        "theta": -120,
        "tx": -6,
        "ty": 6.5,
        "shear": 0.15,
        "flip_horizontal": True,
        "flip_vertical": True,
    },
    {"theta": 170, "zx": 0.8, "zy": 1.2, "flip_vertical": True},
    {"shear": -25, "zx": 1.1, "zy": 1.1, "tx": 12.3},
    {"theta": 90},
]


@pytest.mark.parametrize("fill_mode", ["nearest", "constant", "reflect", "wrap"])
@pytest.mark.parametrize("params", FIXED_TRANSFORMS, ids=range(len(FIXED_TRANSFORMS)))
def test_engines_make_the_same_image_from_the_same_transform(params, fill_mode):
    # A non-square image, so Keras's off-centre pivot and swapped shift axes must be matched too.
    config = AugmentConfig(fill_mode=fill_mode)
    image = smooth_image()
    from_keras = KerasAugmenter(config).apply(image, params).astype(int)
    from_opencv = OpenCVAugmenter(config).apply(image, params).astype(int)
    assert from_opencv.shape == image.shape
    difference = np.abs(from_keras - from_opencv)
    # Bound: under half a grey level on average and 3 at most (measured: ~0.05 and 1).
    assert difference.mean() < 0.5 and difference.max() <= 3
    assert np.abs(from_keras - image).mean() > 5  # the transform really moved the image


def test_keras_engine_workers_start_quietly(src, tmp_path):
    # Each spawned worker imports TensorFlow; its C++ start-up lines (absl, oneDNN, CUDA probing)
    # would otherwise land on the user's terminal once per worker and bury wbc's own messages.
    import subprocess
    import sys

    code = (
        "import sys; from pathlib import Path; from wbc.core.config import load_config; "
        "from wbc.data.stages.augment import augment; "
        "augment(Path(sys.argv[1]), Path(sys.argv[2]), "
        "load_config(None, ['augment.per_class=8', 'augment.workers=2']))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(src), str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    chatter = [
        line
        for line in done.stderr.splitlines()
        if "absl" in line or "oneDNN" in line or "cuda" in line.lower()
    ]
    assert chatter == []
    assert len(list((tmp_path / "out").glob("*/*.jpg"))) == 3 * 8


STAIN = ("color.hed_jitter=0.1", "color.hed_shift=0.02", "color.randstainna=true")


def test_stain_settings_are_stage_params_and_change_only_the_copies(src, tmp_path):
    dst = tmp_path / "aug"
    plain = augment(src, dst, config("augment.engine=opencv"))
    stained = augment(src, dst, config("augment.engine=opencv", *STAIN))
    assert not stained.skipped and stained.key != plain.key  # cached copies are redone
    assert stained.params["stain"]["randstainna"] is True
    assert "lab_distribution" in stained.summary["stain"]
    for name, digest in plain.outputs.items():
        is_copy = parse_name(name.rsplit("/", 1)[-1]).copy is not None
        assert (stained.outputs[name] != digest) == is_copy, name
    assert augment(src, dst, config("augment.engine=opencv", *STAIN)).skipped


def test_stain_off_keeps_the_earlier_key(src, tmp_path):
    from wbc.data.stages.augment import augment_params

    off = config("color.scale_jitter=0")  # the default zooms copies by up to 20%: turn it off
    assert "stain" not in augment_params(off)
    assert augment_params(config("color.scale_jitter=0", "color.hed_jitter=0.1")) != (
        augment_params(off)
    )
    assert "stain" in augment_params(config())  # the default's scale jitter is a parameter
    # a setting added later is named only when on: copies made before it stay current
    assert "stain_strength" not in augment_params(config())["stain"]
    strong = augment_params(config("color.stain_strength=1"))
    assert strong["stain"]["stain_strength"] == 1.0 and strong != augment_params(config())


def test_stained_copies_do_not_depend_on_the_number_of_workers(src, tmp_path):
    cfg = ("augment.engine=opencv", "color.scale_jitter=0.2", *STAIN)
    one = augment(src, tmp_path / "one", config(*cfg))
    two = augment(src, tmp_path / "two", config(*cfg, "augment.workers=2"))
    assert one.outputs == two.outputs


def test_scale_jitter_keeps_the_rest_of_the_geometric_draw(src, tmp_path):
    # The zoom is drawn apart from the engine's draw: the rotation etc. stay, so a zoomed copy
    # differs from its plain twin less than from another copy of the same source.
    plain = augment(src, tmp_path / "plain", config("augment.engine=opencv"))
    zoomed = augment(
        src, tmp_path / "zoom", config("augment.engine=opencv", "color.scale_jitter=0.1")
    )

    def read(folder, name):
        return np.asarray(Image.open(folder / "EOSINOPHIL" / name), dtype=float)

    a = read(tmp_path / "plain", "EOSINOPHIL.5.a0000.jpg")
    b = read(tmp_path / "zoom", "EOSINOPHIL.5.a0000.jpg")
    c = read(tmp_path / "plain", "EOSINOPHIL.5.a0003.jpg")  # the same source, another draw
    assert plain.outputs != zoomed.outputs
    assert 0 < np.abs(a - b).mean() < np.abs(a - c).mean()
