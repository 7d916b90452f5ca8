"""Stain augmentation of the training copies (wbc/data/stain.py): HED jitter, RandStainNA, stain
strength."""

import numpy as np
import pytest

from wbc.core.config import load_config
from wbc.data.stain import (
    LabDistribution,
    hed_jitter,
    lab_distribution,
    lab_stats,
    randstainna,
    scale_factor,
    stain_copy,
    stain_strength,
    unclipped_hed,
)

from conftest import synthetic_smear


@pytest.fixture(scope="module")
def smear():
    image, _ = synthetic_smear("NEUTROPHIL", np.random.default_rng(0), (48, 64))
    image[:4, :4] = 255  # a white corner: no stain at all
    return image


def rng(seed=1):
    return np.random.default_rng(seed)


def test_hed_jitter_is_seeded_and_keeps_shape_dtype_and_range(smear):
    first = hed_jitter(smear, 0.2, 0.05, rng(1))
    assert first.shape == smear.shape and first.dtype == np.uint8
    assert np.array_equal(first, hed_jitter(smear, 0.2, 0.05, rng(1)))
    assert not np.array_equal(first, hed_jitter(smear, 0.2, 0.05, rng(2)))


def test_hed_jitter_changes_the_stain_concentrations(smear):
    before = unclipped_hed(smear).mean(axis=(0, 1))
    after = unclipped_hed(hed_jitter(smear, 0.0, 0.05, rng(3))).mean(axis=(0, 1))
    assert np.abs(after - before)[:2].max() > 0.005  # haematoxylin or eosin moved


def test_hed_scale_alone_leaves_unstained_white_white(smear):
    out = hed_jitter(smear, 0.3, 0.0, rng(4))
    assert (out[:4, :4] == 255).all()  # zero stain times any factor is zero stain
    assert np.abs(out.astype(int) - smear).max() > 3


def test_hed_round_trip_is_exact_without_jitter(smear):
    from skimage.color import hed2rgb

    back = np.clip(hed2rgb(unclipped_hed(smear)) * 255 + 0.5, 0, 255).astype(np.uint8)
    assert np.abs(back.astype(int) - smear).max() <= 1


def test_everything_off_returns_the_copy_unchanged(smear):
    color = load_config().color
    assert hed_jitter(smear, 0.0, 0.0, rng()) is smear
    assert stain_copy(smear, color, rng()) is smear
    assert scale_factor(0.0, rng()) == 1.0


def test_scale_factor_stays_in_its_range():
    factors = [scale_factor(0.2, rng(seed)) for seed in range(50)]
    assert min(factors) >= 0.8 and max(factors) <= 1.2 and np.std(factors) > 0.05


def test_lab_distribution_fits_the_per_image_statistics(smear):
    darker = (smear * 0.7).astype(np.uint8)
    fit = lab_distribution([smear, darker])
    means = np.array([lab_stats(smear)[0], lab_stats(darker)[0]])
    assert np.allclose(fit.mean_of_mean, means.mean(axis=0))
    assert np.allclose(fit.std_of_mean, means.std(axis=0))
    with pytest.raises(ValueError):
        lab_distribution([])


def test_randstainna_maps_to_the_drawn_template(smear):
    other, _ = synthetic_smear("LYMPHOCYTE", rng(8), (48, 64))
    other = (other * np.array([0.8, 0.9, 0.7])).astype(np.uint8)  # another lab's stain
    want_mean, want_std = lab_stats(other)
    fixed = LabDistribution(tuple(want_mean), (0.0,) * 3, tuple(want_std), (0.0,) * 3)
    out = randstainna(smear, fixed, rng(5))
    assert out.shape == smear.shape and out.dtype == np.uint8
    mean, std = lab_stats(out)
    assert np.abs(lab_stats(smear)[0] - want_mean).max() > 5  # a real move...
    assert np.allclose(mean, want_mean, atol=1.5)  # ...onto the template
    assert np.allclose(std, want_std, rtol=0.3)  # less where the gamut clips


def test_randstainna_draws_a_template_per_seed(smear):
    fit = lab_distribution([smear, (smear * 0.8).astype(np.uint8), 255 - smear // 3])
    first = randstainna(smear, fit, rng(6))
    assert np.array_equal(first, randstainna(smear, fit, rng(6)))
    assert not np.array_equal(first, randstainna(smear, fit, rng(7)))


def test_randstainna_needs_its_distribution(smear):
    color = load_config(overrides=["color.randstainna=true"]).color
    with pytest.raises(ValueError, match="LAB distribution"):
        stain_copy(smear, color, rng())


def optical_density(rgb):
    return -np.log(np.maximum(np.asarray(rgb, float), 1.0) / 255.0)


def test_stain_strength_scales_every_optical_density_by_one_factor_in_its_range(smear):
    factors = []
    for seed in range(12):
        out = stain_strength(smear, 1.0, rng(seed))
        assert out.shape == smear.shape and out.dtype == np.uint8
        assert (out[:4, :4] == 255).all()  # no stain stays no stain
        stained = (smear > 40) & (smear < 200)  # away from 8-bit rounding at both ends
        ratio = optical_density(out)[stained] / optical_density(smear)[stained]
        assert np.ptp(ratio) < 0.1  # one factor for every pixel and channel, bar rounding
        factors.append(float(np.median(ratio)))
    assert 0.5 - 0.02 <= min(factors) and max(factors) <= 2.0 + 0.05
    assert min(factors) < 0.8 and max(factors) > 1.25  # both weaker and stronger stains drawn


def test_stain_strength_keeps_the_white_balanced_image_a_power_of_itself(smear):
    # After white balance (divide by the background), the copy is the balanced original to the
    # same power: the balance cannot undo a stronger or weaker stain.
    background = np.array([230.0, 220.0, 235.0])
    tinted = np.clip(smear.astype(float) * background / 255.0, 0, 255).astype(np.uint8)
    out = stain_strength(tinted, 1.0, rng(5))
    factor = np.log(out[:4, :4].mean(axis=(0, 1)) / 255.0) / np.log(background / 255.0)
    ratio_in = np.log(tinted[10:40].astype(float) / background)
    ratio_out = np.log(np.maximum(out[10:40], 1).astype(float) / out[:4, :4].mean(axis=(0, 1)))
    usable = ratio_in < -0.2
    assert np.allclose(ratio_out[usable] / ratio_in[usable], factor.mean(), atol=0.12)


def test_stain_strength_off_draws_nothing(smear):
    generator = rng(3)
    assert stain_strength(smear, 0.0, generator) is smear
    assert generator.uniform() == rng(3).uniform()
