"""Run the robustness suite and print its figures: bad inputs tried and handled, kills survived.

Usage: python scripts/robustness_report.py [--json FILE]

It runs `pytest tests/robustness` once and reads its JUnit XML, so the figures are exactly what
the suite proved on this machine, not a separate re-implementation.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = {
    "test_bad_inputs": "bad inputs",
    "test_bad_models": "bad inputs",
    "test_kills": "kills",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "junit.xml"
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                str(ROOT / "tests/robustness"),
                f"--junitxml={report}",
            ],
            cwd=ROOT,
        )
        tree = ET.parse(report)
    figures: dict[str, dict[str, int]] = defaultdict(lambda: {"tried": 0, "passed": 0})
    failures = []
    for case in tree.iter("testcase"):
        module = case.get("classname", "").split(".")[-1]
        kind = KINDS.get(module, module)
        figures[kind]["tried"] += 1
        if (
            case.find("failure") is None
            and case.find("error") is None
            and case.find("skipped") is None
        ):
            figures[kind]["passed"] += 1
        else:
            failures.append(f"{module}::{case.get('name')}")
    inputs, kills = figures["bad inputs"], figures["kills"]
    rows = [
        ("bad inputs tried", inputs["tried"]),
        ("handled cleanly (clear message or skip, no traceback, raw unchanged)", inputs["passed"]),
        ("kills injected (SIGKILL at a random moment, then rerun)", kills["tried"]),
        ("runs that finished identical to an uninterrupted run", kills["passed"]),
    ]
    width = max(len(label) for label, _ in rows)
    for label, value in rows:
        print(f"{label:<{width}}  {value:>4}")
    for name in failures:
        print(f"FAILED {name}")
    if args.json:
        args.json.write_text(json.dumps({"figures": dict(figures), "failed": failures}, indent=2))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
