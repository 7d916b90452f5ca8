"""Colour robustness (wbc/imaging/color.py): jitter, stain-independent inputs, stain normalisation,
the stain reference in the run folder, and fine-tuning with frozen layers (issue 9)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from wbc.core.config import ColorConfig, load_config
from wbc.core.errors import ConfigError, ModelError
from wbc.imaging import color
from wbc.imaging.preprocess import InputSpec

from conftest import CLASSES, STUDY_CONFIG, make_class_folders

SIZE = (48, 64)
LN_1E6 = math.log(1e6)


def unit(*values) -> np.ndarray:
    vector = np.asarray(values, np.float64)
    return vector / np.linalg.norm(vector)


def two_stain_image(stains, scale=1.0, size=(60, 80), seed=0) -> np.ndarray:
    """White background, a pure stain-1 cell, a pure stain-2 cell and a mixed one, by
    Beer-Lambert: I = 255 exp(-(c1 s1 + c2 s2)). Same concentrations for the same seed."""
    rng = np.random.default_rng(seed)
    height, width = size
    c = np.zeros((2, height, width))
    yy, xx = np.mgrid[:height, :width]
    for (cy, cx, r), amounts in (
        ((18, 20, 13), (1, 0)),
        ((18, 60, 13), (0, 1)),
        ((45, 40, 12), (1, 1)),
    ):
        inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        for k in (0, 1):
            if amounts[k]:
                c[k][inside] = rng.uniform(0.8, 2.0, inside.sum())
    od = np.einsum("khw,kc->hwc", c * scale, np.asarray(stains))
    return np.clip(255.0 * np.exp(-od) + 0.5, 0, 255).astype(np.uint8)


def cells_image(background, cytoplasm, nucleus, size=(60, 80), seed=0) -> np.ndarray:
    """A background colour with one cell (cytoplasm ring, nucleus) and pixel noise."""
    rng = np.random.default_rng(seed)
    height, width = size
    image = np.empty((height, width, 3), np.float64)
    image[:] = background
    yy, xx = np.mgrid[:height, :width]
    distance = np.hypot(yy - height / 2, xx - width / 2)
    image[distance < 22] = cytoplasm
    image[distance < 12] = nucleus
    image += rng.normal(0, 4, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- config


def test_color_config_defaults_change_nothing_and_bad_values_are_errors():
    config = load_config(STUDY_CONFIG)
    assert config.color == ColorConfig(normalize="none", scale_jitter=0.0)  # the study's
    # the default recipe's: white balance, and its training copies zoomed by up to 20%
    assert load_config().color == ColorConfig(normalize="balance", scale_jitter=0.2)
    assert config.train.freeze == "none"
    assert not color.jitter_enabled(config.color)
    assert not InputSpec.from_config(config).recolors
    ok = load_config(
        STUDY_CONFIG,
        [
            "color.input=hematoxylin",
            "color.normalize=macenko",
            "color.hue=0.05",
            "color.saturation=0.2",
            "train.freeze=features",
        ],
    )
    assert ok.color.input == "hematoxylin" and ok.color.hue == 0.05
    for bad, message in [
        ("color.input=grey", "color.input"),
        ("color.normalize=vahadane", "color.normalize"),
        ("train.freeze=conv", "train.freeze"),
        ("color.hue=0.6", "color.hue"),
        ("color.brightness=-0.1", "color.brightness"),
        ("color.contrast=abc", "color.contrast"),
        ("color.normalise=macenko", "did you mean 'normalize'"),
    ]:
        with pytest.raises(ConfigError, match=message):
            load_config(STUDY_CONFIG, [bad])
    with pytest.raises(ConfigError, match="train.feed: tfdata"):
        load_config(STUDY_CONFIG, ["color.brightness=0.1", "train.feed=imagedatagenerator"])


# --------------------------------------------------------------------------- deconvolution, inputs


def test_hed_deconvolution_matches_hand_computed_values():
    # skimage.color's hed_from_rgb (the inverse of Ruifrok-Johnston's rgb_from_hed).
    np.testing.assert_allclose(
        color.HED_FROM_RGB,
        [
            [1.87798274, -1.00767869, -0.55611582],
            [-0.06590806, 1.13473037, -0.1355218],
            [-0.60190736, -0.48041419, 1.57358807],
        ],
        atol=1e-8,
    )
    # Pure haematoxylin of optical density 1: light transmitted exp(-(0.65, 0.70, 0.29)).
    pure_h = np.exp(-np.array([0.65, 0.70, 0.29]))
    np.testing.assert_allclose(color.rgb2hed(pure_h), [1 / LN_1E6, 0, 0], atol=1e-12)
    pure_e = np.exp(-2 * np.array([0.07, 0.99, 0.11]))
    np.testing.assert_allclose(color.rgb2hed(pure_e), [0, 2 / LN_1E6, 0], atol=1e-12)
    assert np.all(color.rgb2hed(np.full((2, 2, 3), 255, np.uint8)) == 0)  # white: no stain
    # As an image: haematoxylin drawn dark (255 exp(-1) = 94), eosin and background white.
    pixels = np.array(
        [[np.round(pure_h * 255), np.round(pure_e * 255), [255, 255, 255]]] * 4, np.uint8
    )
    pixels[-1] = 255  # some background for the white balance to find
    hema = color.to_hematoxylin(pixels)
    assert hema.shape == pixels.shape and np.all(hema[..., 0] == hema[..., 2])
    assert abs(int(hema[0, 0, 0]) - 94) <= 2
    assert hema[0, 1, 0] >= 250 and hema[0, 2, 0] == 255


def _old_rgb2hed(rgb: np.ndarray) -> np.ndarray:
    """wbc's hand-written deconvolution before it called scikit-image: the reference."""
    rgb = np.asarray(rgb)
    values = rgb.astype(np.float64) / 255.0 if rgb.dtype == np.uint8 else rgb.astype(np.float64)
    stains = (np.log(np.maximum(values, 1e-6)) / math.log(1e-6)) @ np.linalg.inv(
        np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
    )
    return np.maximum(stains, 0.0)


def test_skimage_deconvolution_gives_the_old_numbers():
    # Same formula, same matrix: only float rounding may differ (1e-12 of values up to ~1).
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, size=(40, 50, 3), dtype=np.uint8)
    image[:3] = 0  # black: the 1e-6 floor
    image[3:6] = 255  # white: zero stain
    for rgb in (image, image / 255.0, (image / 255.0).astype(np.float32), image[0, 0] / 255.0):
        new = color.rgb2hed(rgb)
        assert new.dtype == np.float64 and new.shape == np.shape(rgb)
        np.testing.assert_allclose(new, _old_rgb2hed(rgb), rtol=0, atol=1e-12)
    assert color.rgb2hed(image)[:3].max() > 0.5  # black is strongly stained, not clipped away
    # The haematoxylin input is a grey rendering of H's own OD, unchanged (uint8, exact).
    balanced = color.white_balance(image)
    density = _old_rgb2hed(balanced)[..., 0] * LN_1E6
    old = np.clip(255.0 * np.exp(-density) + 0.5, 0, 255).astype(np.uint8)
    assert np.array_equal(color.to_hematoxylin(image)[..., 1], old)


def test_skimage_hed2rgb_inverts_the_deconvolution_where_nothing_is_clipped():
    from skimage.color import hed2rgb

    # Pixels made by Beer-Lambert from non-negative H, E, DAB amounts (in rgb2hed's units).
    rng = np.random.default_rng(4)
    hed = rng.uniform(0, 0.15, size=(20, 3))
    rgb = np.exp(-(hed * LN_1E6) @ color.RGB_FROM_HED)
    np.testing.assert_allclose(color.rgb2hed(rgb), hed, atol=1e-12)
    np.testing.assert_allclose(hed2rgb(color.rgb2hed(rgb)), rgb, atol=1e-12)


def test_gray_input_keeps_three_equal_channels():
    image = cells_image((230, 225, 220), (200, 150, 190), (90, 40, 140))
    gray = color.apply_color(image, "gray")
    assert gray.shape == image.shape and gray.dtype == np.uint8
    assert np.array_equal(gray[..., 0], gray[..., 1]) and np.array_equal(gray[..., 0], gray[..., 2])
    assert gray[30, 40, 0] < gray[0, 0, 0]  # the nucleus stays dark
    assert np.array_equal(color.apply_color(image, "rgb", "none"), image)


def test_yellow_background_is_not_stain():
    yellow = cells_image((250, 240, 160), (220, 170, 120), (140, 60, 70))
    np.testing.assert_allclose(color.background(yellow), (250, 240, 160), atol=4)
    balanced = color.white_balance(yellow)
    assert balanced[:5, :5].mean() > 245 and yellow[:5, :5, 2].mean() < 170
    stained = color.foreground(balanced)
    assert stained[30, 40] and not stained[:5, :5].any()
    assert 0.25 < stained.mean() < 0.4  # the cell (radius 22 of 60x80), not the background


# --------------------------------------------------------------------------- normalisation


def test_reinhard_maps_lab_mean_and_std_to_the_reference():
    references = [
        cells_image((235, 235, 240), (205, 160, 200), (100, 60, 160), seed=s) for s in range(3)
    ]
    reference = color.reference_from_images(references, "reinhard")
    assert reference.method == "reinhard" and reference.images == 3
    source = cells_image((250, 240, 160), (215, 165, 110), (150, 70, 60), seed=9)  # yellow lab
    out = color.reinhard(source, reference)
    assert out.shape == source.shape and out.dtype == np.uint8
    mask = color.foreground(color.white_balance(source))
    mean, std = color.lab_stats(out, mask)
    np.testing.assert_allclose(mean, reference.mean, atol=1.5)
    np.testing.assert_allclose(std, reference.std, rtol=0.08, atol=0.5)


def test_reinhard_from_a_labs_statistics_maps_every_image_alike():
    reference = color.reference_from_images(
        [cells_image((235, 235, 240), (205, 160, 200), (100, 60, 160))], "reinhard"
    )
    lymphocyte_like = cells_image((250, 240, 160), (215, 165, 110), (150, 70, 60), seed=1)
    own = color.reinhard_stats(lymphocyte_like)
    np.testing.assert_array_equal(
        color.reinhard(lymphocyte_like, reference, source=own),
        color.reinhard(lymphocyte_like, reference),
    )
    # Another cell of the same lab: with the lab's statistics the same colour lands in the same
    # place; with each image's own, the pale cytoplasm moves the map of the first image's too.
    pale = cells_image((250, 240, 160), (235, 215, 170), (150, 70, 60), seed=1)
    lab = color.reinhard_stats(np.concatenate([lymphocyte_like, pale]))
    mapped = [color.reinhard(im, reference, source=lab) for im in (lymphocyte_like, pale)]
    centre = (slice(27, 33), slice(37, 43))  # inside both nuclei: the same colour
    assert np.abs(mapped[0][centre].astype(int) - mapped[1][centre]).mean() < 3
    own_maps = [color.reinhard(im, reference) for im in (lymphocyte_like, pale)]
    assert np.abs(own_maps[0][centre].astype(int) - own_maps[1][centre]).mean() > 10


def test_balance_divides_by_the_background_and_needs_no_reference():
    yellow = cells_image((250, 240, 160), (220, 170, 120), (140, 60, 70))
    out = color.apply_color(yellow, "rgb", "balance", None)
    np.testing.assert_array_equal(out, color.white_balance(yellow))
    assert out[:5, :5].mean() > 245
    with pytest.raises(ValueError, match="not 'balance'"):
        color.reference_from_images([yellow], "balance")


def test_saturated_channels_are_those_where_the_background_clipped():
    # An overexposed yellow light: red beyond 255 (clipped), green just below, blue well below.
    overexposed = cells_image((262, 246, 170), (220, 170, 120), (140, 60, 70))
    assert color.saturated_channels(overexposed) == ("red",)
    white = cells_image((300, 300, 300), (220, 170, 120), (140, 60, 70))
    assert color.saturated_channels(white) == ("red", "green", "blue")
    kaggle_like = cells_image((205, 206, 202), (180, 150, 160), (90, 40, 110))
    assert color.saturated_channels(kaggle_like) == ()
    # a whole smear is judged on a strided sample: the same verdict as its every pixel
    smear = cells_image((258, 240, 200), (220, 170, 120), (140, 60, 70), size=(480, 640))
    assert color.saturated_channels(smear) == ("red",)
    assert color.background(smear[::4, ::4])[0] == color.background(smear)[0] == 255


def test_macenko_recovers_known_stain_vectors():
    stains = np.stack([unit(0.70, 0.60, 0.30), unit(0.25, 0.60, 0.75)])
    estimated = color.macenko_stains(color.optical_density(two_stain_image(stains)))
    assert estimated is not None and estimated.shape == (2, 3)
    cosines = np.sum(estimated * stains, axis=1)
    assert np.all(cosines > 0.998), (estimated, cosines)  # within ~3.6 degrees each
    assert color.macenko_stains(np.zeros((10, 10, 3))) is None  # nothing stained
    one_stain = two_stain_image(np.stack([stains[0], stains[0]]))
    assert color.macenko_stains(color.optical_density(one_stain)) is None  # cannot be unmixed
    reference = color.reference_from_images([two_stain_image(stains)], "macenko")
    assert color.macenko(one_stain, reference).shape == one_stain.shape  # falls back, no error


def test_macenko_restains_an_image_to_the_reference():
    reference_stains = np.stack([unit(0.70, 0.60, 0.30), unit(0.25, 0.60, 0.75)])
    target = two_stain_image(reference_stains)
    reference = color.reference_from_images([target], "macenko")
    np.testing.assert_allclose(np.asarray(reference.stains), reference_stains, atol=0.06)
    # The same cells from another lab: other stain colours, 1.4x the stain, yellowish light.
    other = two_stain_image(np.stack([unit(0.50, 0.80, 0.35), unit(0.20, 0.75, 0.60)]), 1.4)
    other = (other * np.array([1.0, 0.97, 0.72])).astype(np.uint8)
    before = np.abs(other.astype(int) - target).mean()
    out = color.macenko(other, reference)
    after = np.abs(out.astype(int) - target).mean()
    assert after < 4 < before / 3, (before, after)


def test_stain_reference_written_to_and_read_back_from_a_run_folder(tmp_path):
    image = two_stain_image(np.stack([unit(0.70, 0.60, 0.30), unit(0.25, 0.60, 0.75)]))
    for method in ("macenko", "reinhard"):
        reference = color.reference_from_images([image], method)
        path = color.write_reference(reference, tmp_path)
        assert path.name == color.REFERENCE_NAME
        back = color.read_reference(tmp_path, method)
        assert back.method == method
        for key in ("mean", "std", "stains", "max_concentration"):
            np.testing.assert_allclose(
                np.asarray(getattr(back, key)), np.asarray(getattr(reference, key)), atol=1e-12
            )
    with pytest.raises(ModelError, match="holds a reinhard reference"):
        color.read_reference(tmp_path, "macenko")
    (tmp_path / color.REFERENCE_NAME).write_text(json.dumps({"method": "reinhard", "mean": [1, 2]}))
    with pytest.raises(ModelError, match="'mean' must be"):
        color.read_reference(tmp_path)
    with pytest.raises(ModelError, match="missing"):
        color.read_reference(tmp_path / "nowhere")
    with pytest.raises(ModelError, match="no stain reference"):
        color.apply_color(image, "rgb", "macenko", None)


# --------------------------------------------------------------------------- jitter


def _first_batches(dataset, n):
    return [tuple(np.asarray(t) for t in batch) for batch in dataset.take(n)]


@pytest.fixture(scope="module")
def side(tmp_path_factory) -> Path:
    return make_class_folders(tmp_path_factory.mktemp("side"), {c: 4 for c in CLASSES}, SIZE)


def test_jitter_is_seeded_per_image_and_fresh_every_epoch(side):
    from wbc.imaging.feeds import make_feed

    jitter = ColorConfig(brightness=0.1, contrast=0.2, saturation=0.3, hue=0.05)
    plain = make_feed(side, SIZE, 8, seed=3).data
    jittered = make_feed(side, SIZE, 8, seed=3, jitter=jitter).data
    again = make_feed(side, SIZE, 8, seed=3, jitter=jitter).data
    other_seed = make_feed(side, SIZE, 8, seed=4, jitter=jitter).data
    ((x0, y0),) = _first_batches(plain, 1)
    ((x1, y1),) = _first_batches(jittered, 1)
    ((x2, _),) = _first_batches(again, 1)
    np.testing.assert_array_equal(y0, y1)  # same images, same order: only colours change
    assert x1.shape == x0.shape and 0 <= x1.min() and x1.max() <= 1
    assert np.abs(x1 - x0).mean() > 0.01
    np.testing.assert_array_equal(x1, x2)  # seeded
    ((x3, _),) = _first_batches(other_seed, 1)
    assert not np.array_equal(x3, x1)
    epoch2 = _first_batches(jittered, 1)[0][0]  # a second pass over the dataset
    epoch2_plain = _first_batches(plain, 1)[0][0]
    changes = [
        np.abs(x1 - x0).mean(axis=(1, 2, 3)),
        np.abs(epoch2 - epoch2_plain).mean(axis=(1, 2, 3)),
    ]
    assert not np.allclose(np.sort(changes[0]), np.sort(changes[1]))  # fresh colours
    assert np.std(changes[0]) > 0  # each image draws its own jitter


def test_jitter_never_touches_evaluate_or_predict_inputs(side):
    from wbc.core.imageio import read_rgb
    from wbc.imaging.feeds import make_feed
    from wbc.workflows.predict import model_inputs

    jitter = ColorConfig(brightness=0.3, contrast=0.3, saturation=0.3, hue=0.2)
    plain = _first_batches(make_feed(side, SIZE, 8, 3, training=False).data, 2)
    with_jitter = _first_batches(make_feed(side, SIZE, 8, 3, training=False, jitter=jitter).data, 2)
    for a, b in zip(plain, with_jitter):
        np.testing.assert_array_equal(a[0], b[0])
    size = f"train.image_size=[{SIZE[0]}, {SIZE[1]}]"
    config = load_config(STUDY_CONFIG, [size, "color.brightness=0.3", "color.hue=0.2"])
    spec = InputSpec.from_config(config)
    assert spec == InputSpec.from_config(load_config(STUDY_CONFIG, [size]))  # jitter is not in it
    rgb = read_rgb(next((side / "MONOCYTE").iterdir()))
    (cell,) = model_inputs(rgb, spec)
    np.testing.assert_array_equal(cell.pixels, model_inputs(rgb, InputSpec(SIZE))[0].pixels)


def test_jitter_batch_on_its_own():
    import tensorflow as tf

    batch = tf.random.stateless_uniform((4, 8, 8, 3), (1, 2))
    only_hue = ColorConfig(hue=0.1)
    a = color.jitter_batch(batch, tf.constant([5, 6], tf.int64), only_hue).numpy()
    b = color.jitter_batch(batch, tf.constant([5, 6], tf.int64), only_hue).numpy()
    np.testing.assert_array_equal(a, b)
    # Hue shifts keep each pixel's max and min channel (value and chroma).
    np.testing.assert_allclose(a.max(axis=-1), batch.numpy().max(axis=-1), atol=1e-5)
    gray = tf.fill((2, 4, 4, 3), 0.5)
    out = color.jitter_batch(gray, tf.constant([1, 1], tf.int64), ColorConfig(brightness=0.2))
    deltas = out.numpy()[:, 0, 0, 0] - 0.5
    assert np.all(np.abs(deltas) <= 0.2) and deltas[0] != deltas[1]


# --------------------------------------------------------------------------- one preprocessing


@pytest.mark.parametrize(
    "overrides",
    [
        ["color.input=gray"],
        ["color.input=hematoxylin"],
        ["color.normalize=macenko", "color.input=hematoxylin"],
        ["color.normalize=reinhard"],
        ["color.normalize=balance"],
    ],
)
def test_training_and_prediction_preprocess_alike(side, overrides):
    from wbc.core.imageio import read_rgb
    from wbc.imaging.feeds import list_class_files, load_images
    from wbc.imaging.preprocess import load_resized
    from wbc.workflows.predict import model_inputs

    config = load_config(STUDY_CONFIG, [f"train.image_size=[{SIZE[0]}, {SIZE[1]}]", *overrides])
    _, files, _ = list_class_files(side)
    reference = None
    if config.color.normalize in color.MAPPED:
        reference = color.training_reference(
            config.color.normalize, files, lambda p: load_resized(p, SIZE), config.seed
        )
    spec = InputSpec.from_config(config, reference)
    assert spec.recolors
    trained_on, kept, _ = load_images(files[:3], SIZE, spec=spec)
    for row, index in enumerate(kept):
        (cell,) = model_inputs(read_rgb(files[index]), spec)
        np.testing.assert_array_equal(cell.pixels, trained_on[row])
        assert not np.array_equal(cell.pixels, load_resized(files[index], SIZE))
        if config.color.input != "rgb":
            assert np.array_equal(cell.pixels[..., 0], cell.pixels[..., 2])


# --------------------------------------------------------------------------- training runs


def test_freeze_layers_freezes_the_right_layers():

    from wbc.models.study import build_model
    from wbc.models.training import freeze_layers

    config = load_config(STUDY_CONFIG)

    def trainable(mode):
        model = build_model(config.model, SIZE, 4)
        frozen = freeze_layers(model, mode)
        return frozen, {layer.name: layer.trainable for layer in model.layers if layer.weights}

    frozen, flags = trainable("none")
    assert frozen == [] and all(flags.values())
    frozen, flags = trainable("features")
    assert frozen == ["conv1", "conv2", "conv3", "conv4"]
    assert flags == {
        "conv1": False,
        "conv2": False,
        "conv3": False,
        "conv4": False,
        "dense": True,
        "probabilities": True,
    }
    frozen, flags = trainable("all_but_head")
    assert [name for name, on in flags.items() if on] == ["probabilities"]
    with pytest.raises(ConfigError):
        freeze_layers(build_model(config.model, SIZE, 4), "everything")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("data")
    make_class_folders(root / "processed/small/train", {c: 6 for c in CLASSES}, SIZE, seed=1)
    make_class_folders(root / "processed/small/test", {c: 2 for c in CLASSES}, SIZE, seed=2)
    return root


def _train(*args):
    from wbc.cli import cli

    return CliRunner().invoke(
        cli,
        [
            "train",
            "--config",
            str(STUDY_CONFIG),
            "--subset",
            "small",
            "--epochs",
            "1",
            "--set",
            f"train.image_size=[{SIZE[0]}, {SIZE[1]}]",
            "--set",
            "train.patience=null",
            *map(str, args),
        ],
    )


@pytest.mark.slow
def test_normalised_run_carries_its_reference_and_fine_tunes_with_frozen_features(
    data_root, tmp_path
):
    from wbc.models.keras_family import load_model_file
    from wbc.models.runs import load_run

    run = tmp_path / "run"
    result = _train(
        "--data-dir",
        data_root,
        "--run-dir",
        run,
        "--set",
        "color.normalize=macenko",
        "--set",
        "color.input=hematoxylin",
        "--set",
        "color.brightness=0.1",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "stain reference (macenko)" in result.output
    reference = color.read_reference(run, "macenko")
    loaded = load_run(run)
    assert loaded.spec.stain_reference == reference
    assert loaded.spec.color_input == "hematoxylin" and loaded.spec.stain_normalize == "macenko"
    assert json.loads((run / "metrics.json").read_text())["n_images"] == 8

    # Losing the reference makes the run unusable, with a one-line error naming the file.
    saved = (run / color.REFERENCE_NAME).read_text()
    (run / color.REFERENCE_NAME).unlink()
    with pytest.raises(ModelError, match="stain_reference.json: missing"):
        load_run(run)
    (run / color.REFERENCE_NAME).write_text(saved)

    # Freezing needs --init.
    result = _train(
        "--data-dir", data_root, "--run-dir", tmp_path / "nope", "--set", "train.freeze=features"
    )
    assert result.exit_code != 0 and "--init" in result.output

    # Fine-tuning sees the lab's images as the run saw its own: other colour steps stop it.
    tuned = tmp_path / "tuned"
    fine_tune = ["--data-dir", data_root, "--run-dir", tuned, "--init", run / "model.keras"]
    result = _train(*fine_tune, "--set", "color.normalize=macenko")
    assert result.exit_code != 0 and not tuned.exists()
    assert "trained with color.input hematoxylin, not rgb" in result.output

    # Fine-tune from the run with the conv layers frozen: they keep the initial weights.
    result = _train(
        *fine_tune,
        "--set",
        "color.normalize=macenko",
        "--set",
        "color.input=hematoxylin",
        "--set",
        "train.freeze=features",
        "--set",
        "train.learning_rate=0.01",
    )
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "frozen layers conv1, conv2, conv3, conv4" in result.output
    before = load_model_file(run / "model.keras")
    after = load_model_file(tuned / "last.keras")
    for layer in before.layers:
        for a, b in zip(layer.get_weights(), after.get_layer(layer.name).get_weights()):
            if layer.name.startswith("conv"):
                np.testing.assert_array_equal(a, b)
    changed = [
        not np.array_equal(a, b)
        for a, b in zip(
            before.get_layer("dense").get_weights(), after.get_layer("dense").get_weights()
        )
    ]
    assert any(changed)


def test_optical_density_looked_up_for_8_bit_images_equals_the_formula():
    """The uint8 path reads a table; it must give the formula's values to the bit, also on a
    strided view, or every trained features model would see other measurements."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (37, 53, 3)).astype(np.uint8)
    image[0, 0] = (0, 1, 255)  # the floor (0 read as 1) and white
    for view in (image, image[::2, ::3]):
        expected = np.maximum(-np.log(np.maximum(view.astype(np.float32), 1.0) / 255.0), 0.0)
        looked_up = color.optical_density(view)
        assert looked_up.dtype == np.float32
        np.testing.assert_array_equal(looked_up, expected)
    as_float = color.optical_density(image.astype(np.float32))  # not uint8: the formula itself
    np.testing.assert_array_equal(as_float, color.optical_density(image))


def test_background_is_the_median_of_the_brightest_tenth():
    rng = np.random.default_rng(4)
    image = rng.integers(60, 200, (40, 50, 3)).astype(np.uint8)
    image[:4] = (230, 220, 180)  # a yellow band of 200 pixels: the brightest tenth and more
    np.testing.assert_array_equal(color.background(image), [230, 220, 180])
    pixels = image.reshape(-1, 3).astype(np.float32)
    brightness = pixels.sum(axis=1)
    top = pixels[brightness >= np.percentile(brightness, 90)]
    np.testing.assert_array_equal(color.background(image), np.median(top, axis=0))
