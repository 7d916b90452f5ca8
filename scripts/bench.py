#!/usr/bin/env python
"""Benchmark training feeds, augmentation, predict and CLI speed: the same as ``wbc bench``.

The code lives in ``wbc/bench.py`` (so that ``make bench`` can call the installed CLI); this
wrapper takes the same options.

Example: .venv/bin/python scripts/bench.py --quick --json /tmp/bench.json
(``--tiny``: every section on a handful of small inputs in seconds, a smoke test.)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
