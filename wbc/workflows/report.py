"""``wbc report`` and ``wbc count --report``: one self-contained HTML page to show a colleague.

Everything is inside the file: images are inlined as ``data:`` URIs, the style is one
``<style>`` block, there is no script and nothing is fetched from the network, so the page
opens from an e-mail attachment or a CI artefact as it is.

A run's page: its config and data, the training curves with the study's caption, the
confusion matrix and per-class table, the CV table (for a ``wbc cv`` folder) and a gallery of
the worst mistakes on the test side (the most confident wrong answers), each with its true and
predicted class, the probabilities and the family's explanation (Grad-CAM or the decisive
measurements). A count's page: every smear with each detected cell boxed and labelled, then
the differential.
"""

from __future__ import annotations

import base64
import html
import io
import json
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Optional

import numpy as np
import yaml

from wbc.core.errors import DataError
from wbc.core.manifest import write_atomic

GALLERY_SIZE = 12  # mistakes shown
THUMB_SIDE = 320  # pixels: the longer side of a gallery or smear picture

STYLE = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto;
       max-width: 1100px; padding: 0 1em; color: #1d1d1f; }
h1 { font-size: 1.6em; margin-bottom: .2em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; margin: .6em 0; }
td, th { padding: .25em .7em; border: 1px solid #ddd; }
th { background: #f4f4f6; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f7f7f9; padding: .8em; overflow: auto; max-height: 28em; font-size: 13px; }
.gallery { display: grid; grid-template-columns: repeat(auto-fill, minmax(250px, 1fr)); gap: 1em; }
figure { margin: 0; border: 1px solid #ddd; padding: .5em; border-radius: 6px; }
figure img { width: 100%; height: auto; } figcaption { font-size: 13px; }
.wrong { color: #b00020; font-weight: 600; } .muted { color: #666; font-size: 13px; }
.note { background: #fff8e1; border-left: 4px solid #f0b400; padding: .5em .8em; }
"""


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def png_bytes(rgb: np.ndarray, side: int = THUMB_SIDE) -> bytes:
    """``rgb`` (uint8) as PNG, its longer side at most ``side`` pixels."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgb, np.uint8))
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _esc(value: Any) -> str:
    return html.escape(str(value))


def table(
    headers: Optional[Sequence[str]],
    rows: Iterable[Sequence[Any]],
    numeric: Sequence[int] = (),
    table_id: str = "",
) -> str:
    head = "".join(f"<th>{_esc(h)}</th>" for h in headers or ())
    head_row = f"<thead><tr>{head}</tr></thead>" if head else ""
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="num">{_esc(v)}</td>' if i in numeric else f"<td>{_esc(v)}</td>"
            for i, v in enumerate(row)
        )
        + "</tr>"
        for row in rows
    )
    ident = f' id="{_esc(table_id)}"' if table_id else ""
    return f"<table{ident}>{head_row}<tbody>{body}</tbody></table>"


def page(title: str, sections: Sequence[str]) -> str:
    stamp = datetime.now().isoformat(timespec="seconds")
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="muted">written by wbc on {stamp}. Not a '
        "diagnostic device: research use only.</p>" + "".join(sections) + "</body></html>\n"
    )


def _share(value: Optional[float]) -> str:
    return "-" if value is None else f"{value:.3f}"


def _image_file(path: Path, alt: str) -> str:
    return f'<img src="{data_uri(path.read_bytes())}" alt="{_esc(alt)}">' if path.is_file() else ""


def _metrics_section(metrics: dict[str, Any]) -> str:
    rows = [
        (c, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"])
        for c, v in metrics["per_class"].items()
    ]
    summary = table(
        ["images", "accuracy", "macro-F1"],
        [(metrics["n_images"], f"{metrics['accuracy']:.4f}", f"{metrics['macro_f1']:.4f}")],
        numeric=(0, 1, 2),
        table_id="summary",
    )
    per_class = table(
        ["class", "precision", "recall", "F1", "images"],
        rows,
        numeric=(1, 2, 3, 4),
        table_id="per-class",
    )
    return summary + per_class


def _cv_section(cv: dict[str, Any]) -> str:
    classes = cv["classes"]
    rows = []
    for fold in cv["folds"]:
        rows.append(
            (
                fold["fold"],
                fold["n_train"],
                fold["n_test"],
                f"{fold['accuracy']:.4f}",
                f"{fold['macro_f1']:.4f}",
                *(f"{fold['per_class_f1'].get(c, 0.0):.4f}" for c in classes),
            )
        )
    for label in ("mean", "std"):
        values = cv.get(label) or {}
        if values:
            rows.append(
                (
                    label,
                    "",
                    "",
                    f"{values['accuracy']:.4f}",
                    f"{values['macro_f1']:.4f}",
                    *(f"{values['per_class_f1'].get(c, 0.0):.4f}" for c in classes),
                )
            )
    numeric = tuple(range(1, 5 + len(classes)))
    return (
        f"<h2>Cross-validation</h2><p>{cv['k']} source-grouped folds"
        f"{' x ' + str(cv['repeats']) + ' repeats' if cv.get('repeats', 1) > 1 else ''}, "
        f"{len(cv['folds'])} scored{'' if cv.get('complete') else ' (not complete)'}; "
        f"headline model: {_esc(cv.get('score'))}; std over folds (ddof=1).</p>"
        + table(
            ["fold", "train", "test", "accuracy", "macro-F1", *(f"F1 {c}" for c in classes)],
            rows,
            numeric=numeric,
            table_id="cv",
        )
    )


def _mistakes(run, test_dir: Path, limit: int = GALLERY_SIZE) -> str:
    """The most confident wrong answers on ``test_dir`` (class folders), explained."""
    from wbc.core.imageio import read_rgb
    from wbc.imaging.feeds import list_class_files
    from wbc.workflows.evaluate import predict_files
    from wbc.workflows.explain import overlay_heat
    from wbc.workflows.predict import model_inputs

    classes = list(run.classes)
    try:
        _, files, truth = list_class_files(test_dir, classes)
    except DataError as exc:
        return f'<p class="note">{_esc(exc)}: no gallery.</p>'
    probs, kept, bad, _ = predict_files(run, files)
    truth = np.asarray(truth)[kept]
    predicted = probs.argmax(axis=1) if len(probs) else np.zeros(0, int)
    wrong = np.flatnonzero(predicted != truth)
    order = wrong[np.argsort(-probs[wrong, predicted[wrong]], kind="stable")][:limit]
    if not len(order):
        return f"<p>No mistakes among the {len(kept)} test images of {_esc(test_dir)}.</p>"
    figures = []
    for i in order:
        path = files[int(kept[i])]
        rgb = read_rgb(path)
        inputs = model_inputs(rgb, run.spec, run.crop_size)
        why = run.model.explain(inputs[0].pixels, classes)
        picture = overlay_heat(rgb, np.asarray(why["heat"], np.float32), inputs[0].box)
        shown = " ".join(f"{c[:3]} {p:.2f}" for c, p in zip(classes, probs[i]))
        measured = ""
        if why.get("features"):
            measured = "<br>" + "<br>".join(
                f"{_esc(f['name'])}: {f['value']:.3g} (typical {f['typical']:.3g}, "
                f"{f['effect']:+.3f})"
                for f in why["features"][:4]
            )
        figures.append(
            f'<figure><img src="{data_uri(png_bytes(picture))}" alt="{_esc(path.name)}">'
            f"<figcaption><b>{_esc(path.name)}</b><br>true {_esc(classes[truth[i]])}, "
            f'<span class="wrong">predicted {_esc(classes[predicted[i]])} '
            f"({probs[i, predicted[i]]:.2f})</span><br>{_esc(shown)}<br>"
            f'<span class="muted">{_esc(why.get("method", ""))}</span>{measured}'
            "</figcaption></figure>"
        )
    note = f" ({len(bad)} unreadable images skipped)" if bad else ""
    return (
        f"<p>{len(wrong)} of {len(kept)} test images are wrong{note}; the {len(order)} "
        "most confident mistakes:</p>"
        f'<div class="gallery" id="mistakes">{"".join(figures)}</div>'
    )


def _test_dir(run_dir: Path, config: dict[str, Any]) -> Optional[Path]:
    try:
        info = json.loads((run_dir / "run.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    subset = (config.get("train") or {}).get("subset", "full")
    candidate = Path(info.get("data_dir", "")) / "processed" / subset / "test"
    return candidate if candidate.is_dir() else None


def run_report(path: Path, output: Path, data: Optional[Path] = None) -> Path:
    """Write the page of a run folder (or a ``wbc cv`` folder) to ``output``. ``data``: the
    test side's class folders for the mistakes gallery (default: the run's own, from run.json)."""
    from wbc.core.plots import caption
    from wbc.core.runfolder import read_history

    run_dir = Path(path)
    if run_dir.is_file():
        run_dir = run_dir.parent
    if not run_dir.is_dir():
        raise DataError(f"{run_dir}: run folder not found")
    cv_path = run_dir / "cv.json"
    if cv_path.is_file():
        cv = json.loads(cv_path.read_text(encoding="utf-8"))
        config_text = yaml.safe_dump(cv.get("config") or {}, sort_keys=False)
        sections = [_cv_section(cv), "<h2>Settings</h2><pre>" + _esc(config_text) + "</pre>"]
        write_atomic(output, page(f"wbc cross-validation: {run_dir.name}", sections))
        return output
    if not (run_dir / "metrics.json").is_file():
        raise DataError(f"{run_dir}: no metrics.json; not a finished run or cv folder")
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    config_text = (run_dir / "config.yaml").read_text(encoding="utf-8")
    config = yaml.safe_load(config_text) or {}
    model = config.get("model") or {}
    family = "ensemble" if model.get("ensemble") else model.get("family")
    sections = [
        "<h2>Run</h2>"
        + table(
            None,
            [
                ("family", family),
                ("subset", metrics.get("subset")),
                ("training images", metrics.get("train_images")),
                ("test images", metrics.get("n_images")),
                ("epochs", metrics.get("epochs_run") or "one step (no epochs)"),
                ("crop", (config.get("crop") or {}).get("mode")),
                ("stain normalisation", (config.get("color") or {}).get("normalize")),
                ("protocol", (config.get("split") or {}).get("protocol")),
                ("seed", config.get("seed")),
                ("wall time", f"{metrics.get('wall_seconds')} s"),
            ],
            table_id="run",
        ),
    ]
    history = run_dir / "history.csv"
    if history.is_file() and (run_dir / "curves.png").is_file():
        sections.append(
            "<h2>Training curves</h2>"
            + _image_file(run_dir / "curves.png", "curves")
            + f"<p>{_esc(caption(read_history(history)))}</p>"
        )
    sections.append(
        "<h2>Test side</h2>"
        + _metrics_section(metrics)
        + _image_file(run_dir / "confusion_matrix.png", "confusion matrix")
    )
    if metrics.get("out_of_domain"):
        ood = metrics["out_of_domain"]
        sections.append(
            f"<p>Out-of-domain flag (stain distance &gt; {ood['threshold']:.2f}): "
            f"{ood['flagged']} of {metrics['n_images']} test images; accuracy "
            f"{_share(ood.get('accuracy_flagged'))} on them, "
            f"{_share(ood.get('accuracy_unflagged'))} on the others.</p>"
        )
    from wbc.models.runs import load_run

    test_dir = Path(data) if data else _test_dir(run_dir, config)
    gallery = (
        _mistakes(load_run(run_dir), test_dir)
        if test_dir is not None
        else '<p class="note">The test images are not where run.json says; pass --data '
        "to show the mistakes.</p>"
    )
    sections.append("<h2>Worst mistakes</h2>" + gallery)
    sections.append("<h2>Config</h2><pre>" + _esc(config_text) + "</pre>")
    write_atomic(output, page(f"wbc run: {run_dir.name}", sections))
    return output


def count_report(result: dict[str, Any], output: Path) -> Path:
    """The page of a ``count_cells(..., details=True)`` result: each smear with its cells boxed
    and labelled, then the differential."""
    import cv2

    from wbc.core.imageio import read_rgb

    classes = result["classes"]
    # matplotlib's tab10, in RGB: ten classes apart before a colour repeats (PBC has eight)
    palette = [
        (31, 119, 180),
        (255, 127, 14),
        (44, 160, 44),
        (214, 39, 40),
        (148, 103, 189),
        (140, 86, 75),
        (227, 119, 194),
        (127, 127, 127),
        (188, 189, 34),
        (23, 190, 207),
    ]
    figures = []
    for item in result.get("files", []):
        rgb = read_rgb(Path(item["file"])).copy()
        thick = max(2, round(min(rgb.shape[:2]) / 200))
        labels = []
        for cell in item["cells"]:
            colour = palette[classes.index(cell["class"]) % len(palette)]
            label = f"{cell['class'][:4]} {cell['probability']:.2f}" + (
                " OOD" if cell["out_of_domain"] else ""
            )
            labels.append(label)
            if cell["box"] is None:
                continue
            x0, y0, x1, y1 = (int(v) for v in cell["box"])
            cv2.rectangle(rgb, (x0, y0), (x1 - 1, y1 - 1), colour, thick)
            cv2.putText(
                rgb,
                label,
                (x0 + 2, max(y0 - 6, 14)),
                cv2.FONT_HERSHEY_SIMPLEX,
                0.5 * thick / 2,
                colour,
                max(1, thick // 2),
                cv2.LINE_AA,
            )
        name = Path(item["file"]).name
        figures.append(
            f'<figure><img src="{data_uri(png_bytes(rgb, 480))}" alt="{_esc(name)}">'
            f"<figcaption><b>{_esc(name)}</b>: {len(item['cells'])} cell(s)"
            f"{': ' + _esc(', '.join(labels)) if labels else ''}</figcaption></figure>"
        )
    rows = [(c, result["counts"][c], f"{result['percent'][c]:.1f}%") for c in classes]
    rows.append(("total", result["cells"], "100.0%" if result["cells"] else "0.0%"))
    sections = [
        f"<p>{result['classified_images']} of {result['images']} images classified with "
        f"{_esc(result['model'])}, per {result['per']}.</p>",
        "<h2>Differential</h2>"
        + table(["class", "count", "percent"], rows, numeric=(1, 2), table_id="differential"),
    ]
    if result.get("out_of_domain"):
        sections.append(
            f'<p class="note">{result["out_of_domain"]} of {result["cells"]} cells '
            "are out of domain (stain unlike the training images): check them "
            "before trusting the counts.</p>"
        )
    if result.get("adapted"):
        sections.append(
            f'<p class="note">Counted after adapting the model on this sample\'s '
            f"{result['adapted']['cells']} cells, without labels (--adapt "
            f"{_esc(result['adapted']['mode'])}).</p>"
        )
    if result.get("failed"):
        sections.append(
            "<h2>Unreadable images</h2>"
            + table(["file", "error"], [(f["file"], f["error"]) for f in result["failed"]])
        )
    sections.append(f'<h2>Smears</h2><div class="gallery" id="smears">{"".join(figures)}</div>')
    write_atomic(output, page(f"wbc count: {Path(result['folder']).name}", sections))
    return output
