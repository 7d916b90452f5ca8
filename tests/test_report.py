"""``wbc report`` and ``wbc count --report``: one self-contained page, checked in a real
headless Chromium (Debian's, driven by Playwright): it loads without console errors, every
image decodes, and the tables hold the run's numbers."""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from wbc.cli import cli
from wbc.core.config import load_config

from conftest import CLASSES, STUDY_CONFIG, make_class_folders

CHROMIUM = os.environ.get("WBC_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Chromium through Playwright; required (never skipped) when CI is set."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).is_file():
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Playwright or Chromium ({CHROMIUM}) is missing")
        pytest.skip("needs playwright and Debian's chromium (apt-get install chromium)")
    with sync_playwright() as playwright:
        instance = playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        yield instance
        instance.close()


def open_page(browser, path: Path, screenshot: Path):
    """Load ``path``; return (page, console errors, natural widths of its images)."""
    page = browser.new_page(viewport={"width": 1200, "height": 900})
    errors: list[str] = []
    page.on(
        "console", lambda message: errors.append(message.text) if message.type == "error" else None
    )
    page.on("pageerror", lambda error: errors.append(str(error)))
    requests: list[str] = []
    page.on("request", lambda request: requests.append(request.url))
    page.goto(path.resolve().as_uri(), wait_until="load")
    widths = page.evaluate("Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0)")
    page.screenshot(path=str(screenshot), full_page=True)
    assert all(url.startswith(("file:", "data:")) for url in requests), requests
    return page, errors, widths


def cells(page, selector: str) -> list[list[str]]:
    return page.evaluate(f"""Array.from(document.querySelectorAll('{selector} tbody tr'))
        .map(r => Array.from(r.cells).map(c => c.textContent.trim()))""")


@pytest.fixture(scope="module")
def crops(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("report-crops")
    make_class_folders(root / "train", {c: 8 for c in CLASSES}, size=(64, 64), seed=1)
    make_class_folders(root / "test", {c: 4 for c in CLASSES}, size=(64, 64), seed=2)
    return root


@pytest.fixture(scope="module")
def keras_run(crops, tmp_path_factory) -> Path:
    from wbc.workflows.train import train

    config = load_config(
        STUDY_CONFIG, ["train.epochs=2", "train.patience=null", "train.image_size=[48, 64]"]
    )
    return train(
        config,
        run_dir=tmp_path_factory.mktemp("report-runs") / "study",
        folders=(crops / "train", crops / "test"),
        echo=lambda _m: None,
    )


def test_run_report_is_self_contained_and_shows_the_runs_numbers(
    browser, keras_run, crops, tmp_path
):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(
        cli, ["report", str(keras_run), "-o", str(out), "--data", str(crops / "test")]
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    assert "<script" not in text and not re.search(r"(src|href)=\"https?:", text)
    page, errors, widths = open_page(browser, out, tmp_path / "report.png")
    assert errors == []
    assert len(widths) >= 3 and all(w > 0 for w in widths)  # curves, confusion, gallery
    metrics = json.loads((keras_run / "metrics.json").read_text())
    assert cells(page, "#summary") == [
        [str(metrics["n_images"]), f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}"]
    ]
    per_class = cells(page, "#per-class")
    assert [row[0] for row in per_class] == list(metrics["per_class"])
    assert [row[3] for row in per_class] == [
        f"{v['f1']:.3f}" for v in metrics["per_class"].values()
    ]
    wrong = sum(metrics["confusion_matrix"][i][j] for i in range(4) for j in range(4) if i != j)
    shown = page.evaluate("document.querySelectorAll('#mistakes figure').length")
    assert shown == min(wrong, 12)
    if shown:
        assert "grad-cam" in page.inner_text("#mistakes")
    from wbc.core.plots import caption
    from wbc.core.runfolder import read_history

    assert caption(read_history(keras_run / "history.csv")) in page.inner_text("body")


def test_cv_folder_report_has_the_fold_table(browser, tmp_path):
    folder = tmp_path / "cv"
    folder.mkdir()
    folds = [
        {
            "fold": j,
            "n_train": 40,
            "n_test": 10,
            "accuracy": 0.5 + j / 10,
            "macro_f1": 0.4 + j / 10,
            "per_class_f1": {c: 0.5 for c in CLASSES},
        }
        for j in (1, 2)
    ]
    (folder / "cv.json").write_text(
        json.dumps(
            {
                "k": 2,
                "repeats": 1,
                "complete": True,
                "score": "last",
                "classes": list(CLASSES),
                "folds": folds,
                "mean": {
                    "accuracy": 0.65,
                    "macro_f1": 0.55,
                    "per_class_f1": {c: 0.5 for c in CLASSES},
                },
                "std": {
                    "accuracy": 0.07,
                    "macro_f1": 0.07,
                    "per_class_f1": {c: 0.0 for c in CLASSES},
                },
                "config": {"seed": 1},
            }
        )
    )
    result = CliRunner().invoke(cli, ["report", str(folder)])
    assert result.exit_code == 0, result.output
    page, errors, _ = open_page(browser, folder / "report.html", tmp_path / "cv.png")
    rows = cells(page, "#cv")
    assert errors == [] and [r[0] for r in rows] == ["1", "2", "mean", "std"]
    assert rows[1][3] == "0.7000" and rows[2][4] == "0.5500"


def test_count_report_boxes_every_cell_and_has_the_differential(browser, crops, tmp_path):
    from wbc.workflows.train import train

    run = train(
        load_config(None, ["color.normalize=none"]),
        run_dir=tmp_path / "features",
        folders=(crops / "train", crops / "test"),
        echo=lambda _m: None,
    )
    smears = make_class_folders(
        tmp_path / "smears", {"NEUTROPHIL": 2, "MONOCYTE": 2}, size=(120, 160), seed=5
    )
    flat = tmp_path / "sample"
    flat.mkdir()
    for path in smears.rglob("*.jpg"):
        shutil.copy(path, flat / path.name)
    (flat / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "count.html"
    result = CliRunner().invoke(
        cli, ["count", str(flat), "--model", str(run), "--format", "json", "--report", str(out)]
    )
    assert result.exit_code == 1  # the broken image: listed, the others counted
    counted = json.loads(result.stdout)
    assert "files" not in counted  # the JSON output is unchanged by --report
    page, errors, widths = open_page(browser, out, tmp_path / "count.png")
    assert errors == [] and len(widths) == 4 and all(w > 0 for w in widths)
    rows = cells(page, "#differential")
    assert {r[0]: int(r[1]) for r in rows} == {**counted["counts"], "total": counted["cells"]}
    captions = page.evaluate(
        "Array.from(document.querySelectorAll('#smears figcaption')).map(c => c.textContent)"
    )
    assert sum(int(re.search(r": (\d+) cell", c).group(1)) for c in captions) == counted["cells"]
    assert "broken.jpg" in page.inner_text("body")
