"""One seed drives every random choice: per-item generators derived from it and a few names.

Deriving a generator from (seed, "split", "MONOCYTE") instead of drawing from one shared stream
means a result does not depend on the order work is done in or on how many workers do it.
"""

from __future__ import annotations

import hashlib

import numpy as np


def derived_seed(seed: int, *keys: object) -> int:
    """A stable 63-bit integer from the seed and any keys (str or int)."""
    text = "\x1f".join([str(seed), *map(str, keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def rng_for(seed: int, *keys: object) -> np.random.Generator:
    return np.random.default_rng(derived_seed(seed, *keys))
