"""Training feed options that are not colour: random flips."""

import numpy as np

from conftest import CLASSES, make_class_folders

SIZE = (24, 32)


def _epoch(dataset):
    return np.concatenate([np.asarray(batch[0]) for batch in dataset])


def test_random_flips_mirror_training_images_only_and_are_seeded(tmp_path):
    from wbc.imaging.feeds import make_feed

    side = make_class_folders(tmp_path, {c: 6 for c in CLASSES}, SIZE)
    plain = _epoch(make_feed(side, SIZE, 8, seed=3).data)
    flipped_feed = make_feed(side, SIZE, 8, seed=3, flips=True).data
    first, second = _epoch(flipped_feed), _epoch(flipped_feed)  # two epochs of one feed
    kinds = []
    for original, image in zip(plain, first):  # same order: only the pixels move
        variants = {
            "none": original,
            "lr": original[:, ::-1],
            "ud": original[::-1],
            "both": original[::-1, ::-1],
        }
        kinds.append(next(k for k, v in variants.items() if np.array_equal(v, image)))
    assert len(set(kinds)) >= 3 and kinds.count("none") < len(kinds)  # a mix, drawn per image
    assert not np.array_equal(first, second)  # fresh flips every epoch
    np.testing.assert_array_equal(
        first, _epoch(make_feed(side, SIZE, 8, seed=3, flips=True).data)
    )  # seeded
    test_side = make_feed(side, SIZE, 8, seed=3, training=False, flips=True).data
    np.testing.assert_array_equal(
        _epoch(test_side), _epoch(make_feed(side, SIZE, 8, 3, training=False).data)
    )
