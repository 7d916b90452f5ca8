"""Classify new images with a trained run (``wbc predict``), and the input path that every
command running a model shares (``wbc.workflows.count`` and ``wbc.workflows.explain`` build on it).

Images are preprocessed exactly like the training images, from the run's ``config.yaml``:
``wbc.core.imageio.read_rgb`` -> (when ``crop.mode`` is not ``none``: the main WBC's square crop
from
``wbc.data.cells``, unless the image already is a crop) -> ``wbc.imaging.preprocess.to_input``
(resize, then
the colour steps of ``color.input`` / ``color.normalize``) -> ``scale``.
``model_inputs`` is that one function; evaluation can call it too.

Speed: files are decoded by a thread pool (Pillow and OpenCV release the GIL) while the main
thread runs batches through ``Predictor``: by default the model converted to LiteRT
(``wbc.models.lite``, ~0.5 ms for one image on 2 cores), else a ``tf.function`` (~3 ms;
``model.predict``
costs ~45 ms of set-up per call). A bad file becomes a row with an ``error`` and the run goes on.
"""

from __future__ import annotations

import csv
import io
import json
import os
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import BadImage, DataError, ModelError
from wbc.core.imageio import IMAGE_EXTENSIONS, decode_threads, is_image_name, read_rgb
from wbc.core.progress import no_echo
from wbc.imaging.preprocess import InputSpec, to_input

INPUT_KINDS = ("auto", "smear", "crop")
FORMATS = ("table", "csv", "json")
DEFAULT_BATCH = 64
Box = tuple[int, int, int, int]
Progress = Optional[Callable[[int], None]]


# --------------------------------------------------------------------------- finding images


def find_images(paths: Iterable[Path | str]) -> list[Path]:
    """Image files named in ``paths``; folders are walked (symlinked folders are not followed).

    A file named directly is kept whatever its extension (a bad one becomes an error row), and so
    is a path that does not exist. Files found in folders must have an image extension
    (jpg, jpeg, png, bmp, tif, tiff; any case). Order: as given, each folder sorted; no repeats.
    """
    found: list[Path] = []
    seen: set[str] = set()

    def add(path: Path) -> None:
        key = os.path.normcase(os.path.abspath(path))
        if key not in seen:
            seen.add(key)
            found.append(path)

    for given in paths:
        path = Path(given)
        if not path.is_dir():
            add(path)
            continue
        for root, dirs, files in os.walk(path, followlinks=False):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if not name.startswith(".") and is_image_name(Path(name)):
                    add(Path(root) / name)
    return found


def require_images(paths: Sequence[Path | str]) -> list[Path]:
    """``find_images(paths)``, or a ``DataError`` when the folders hold no image at all."""
    files = find_images(paths)
    if not files:
        shown = ", ".join(str(p) for p in paths)
        kinds = ", ".join(ext.lstrip(".") for ext in IMAGE_EXTENSIONS)
        raise DataError(f"{shown}: no images found ({kinds})")
    return files


# --------------------------------------------------------------------------- preprocessing


@dataclass(frozen=True)
class CellInput:
    """One model input: ``pixels`` uint8 at the model's input size, and where it came from.

    ``box`` is the square region (x0, y0, x1, y1; may reach past the image edges when the crop
    was padded) of the source image that was resized to ``pixels``; None for the whole image.
    """

    pixels: np.ndarray
    box: Optional[Box] = None


def _crop_module():
    from wbc.data import cells  # lazily: only runs trained on crops need it

    return cells


def takes_crop(rgb: np.ndarray, spec: InputSpec, input_kind: str = "auto") -> bool:
    """Whether ``rgb`` must be cropped to its WBC first (the model was trained on crops).

    ``input_kind``: ``smear`` (a whole-field photo: crop it), ``crop`` (already a cell crop) or
    ``auto``: a square or nearly square image (longer side at most ``CROP_ASPECT`` times the
    shorter) is taken to be a crop already (crops are about square; smears are not): the
    crop stage's rule, ``wbc.data.cells.is_cell_crop``.
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")
    if spec.crop_mode == "none" or input_kind == "crop":
        return False
    if input_kind == "smear":
        return True
    return not _crop_module().is_cell_crop(rgb.shape)


def model_inputs(
    rgb: np.ndarray,
    spec: InputSpec,
    crop_size: int = 256,
    *,
    input_kind: str = "auto",
    all_cells: bool = False,
) -> list[CellInput]:
    """``rgb`` (H, W, 3 uint8) -> the model input(s), preprocessed as the training images were.

    Without cropping: one input, the whole image resized. An image that is a cell crop already
    (``takes_crop`` False) under ``crop.mode`` boxes/detect is one input too, re-cut around its
    cell when its margin is much wider than wbc's (``wbc.data.cells.reframe_box``, as the crop
    stage does), else whole. A smear under ``crop.mode`` boxes/detect:

    - ``all_cells=False``: the main WBC, cut exactly as the crop stage cut the training images
      (``wbc.data.cells.crop_cells``: the detector's best box, padded square of ``crop_size``
      pixels;
      the centre square when no cell is found), then resized. Always one input.
    - ``all_cells=True`` (counting): every WBC that ``wbc.data.cells.detect_cells`` finds, each cut
      the same way; an empty list when none is found (no centre-square guess).

    Not scaled: pass the batch through ``scale`` (or ``Predictor``, which does).
    """
    if not takes_crop(rgb, spec, input_kind):
        if spec.crop_mode != "none":  # a crop: framed as the crop stage frames crops
            crop = _crop_module()
            recut = crop.reframe_crop(rgb, spec.crop_padding, crop_size)
            if recut is not None:
                region = crop.square_box(recut.box, spec.crop_padding, rgb.shape)
                return [CellInput(to_input(recut.image, spec), tuple(region))]
        return [CellInput(to_input(rgb, spec), None)]
    crop = _crop_module()
    if not all_cells:
        cells = crop.crop_cells(rgb, spec.crop_mode, spec.crop_padding, crop_size)
        inputs = []
        for cell in cells:
            padding = 0.0 if cell.source == "centre" else spec.crop_padding
            region = crop.square_box(cell.box, padding, rgb.shape)
            inputs.append(CellInput(to_input(cell.image, spec), tuple(region)))
        return inputs
    inputs = []
    for box in crop.detect_cells(rgb):
        pixels = crop.crop_square(rgb, box, spec.crop_padding, crop_size)
        region = crop.square_box(box, spec.crop_padding, rgb.shape)
        inputs.append(CellInput(to_input(pixels, spec), tuple(region)))
    return inputs


def load_input(
    path: Path, spec: InputSpec, crop_size: int = 256, *, input_kind: str = "auto"
) -> np.ndarray:
    """One image file -> its uint8 model input. Raises ``BadImage`` (unreadable, no WBC found)."""
    return main_input(read_rgb(path), path, spec, crop_size, input_kind=input_kind)


def main_input(
    rgb: np.ndarray, path: Path, spec: InputSpec, crop_size: int = 256, *, input_kind: str = "auto"
) -> np.ndarray:
    """``rgb``, read from ``path``, -> its uint8 model input. Raises ``BadImage`` (no WBC found)."""
    inputs = model_inputs(rgb, spec, crop_size, input_kind=input_kind)
    if not inputs:
        raise BadImage(path, "no white blood cell found")
    return inputs[0].pixels


# --------------------------------------------------------------------------- inference


ENGINES = ("auto", "litert", "tensorflow")


class Predictor:
    """A run's model as a function: uint8 batch (N, H, W, 3) -> probabilities (N, C).

    The family's classifier supplies the engine (``wbc.models``): for the Keras families
    ``litert`` (~0.5 ms for one image on 2 cores, cached conversion) or ``tensorflow`` (a
    ``tf.function``); ``auto`` is LiteRT, or TensorFlow when LiteRT cannot run the model, and
    ``fallback`` then says why. The features family runs on scikit-learn whatever is asked.
    ``tta``: average the model over the 8 dihedral views of each input (``model.tta``; the 4
    flips of a non-square input), in the families that gain from it: the CNNs.
    """

    def __init__(self, classifier, *, engine: str = "auto", cache: bool = True, tta: bool = False):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.classifier = classifier
        self.n_classes = int(classifier.n_classes)
        self.tta = bool(tta)
        self._engine = classifier.engine(engine, cache, self.tta)
        self.engine = self._engine.engine
        self.fallback = self._engine.fallback

    @classmethod
    def from_run(
        cls, run, engine: str = "auto", cache: bool = True, tta: Optional[bool] = None
    ) -> Predictor:
        """``cache``: keep a conversion for the next process that loads this model. ``tta``:
        None = the run's ``model.tta``."""
        return cls(
            run.model, engine=engine, cache=cache, tta=run.config.model.tta if tta is None else tta
        )

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        if len(batch) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        return self._engine(batch)


def default_workers() -> int:
    """Decoding threads beside inference: one per core, at most 8."""
    return decode_threads(8)


def _guarded(load: Callable[[Path], Any], path: Path) -> Any:
    try:
        return load(path)
    except BadImage as exc:
        return exc
    except MemoryError:
        return BadImage(path, "out of memory while decoding")
    except Exception as exc:  # noqa: BLE001 - one odd file must not stop a batch of thousands
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        detail = f"{type(exc).__name__}: {reason}" if reason else type(exc).__name__
        return BadImage(path, f"cannot process ({detail})")


def iter_loaded(
    files: Sequence[Path],
    load: Callable[[Path], Any],
    workers: Optional[int] = None,
    prefetch: int = 2 * DEFAULT_BATCH,
) -> Iterator[tuple[Path, Any]]:
    """``(path, load(path) or BadImage)`` in the order of ``files``, loaded by a thread pool.

    At most ``prefetch`` files are decoded ahead of the consumer, so memory stays bounded however
    many files there are, and decoding overlaps whatever the consumer does (inference).
    """
    workers = workers or default_workers()
    prefetch = max(prefetch, workers)
    if workers == 1:
        for path in files:
            yield path, _guarded(load, path)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wbc-load") as pool:
        pending: deque = deque()
        queue = iter(files)
        for path in queue:
            pending.append((path, pool.submit(_guarded, load, path)))
            if len(pending) >= prefetch:
                break
        try:
            while pending:
                path, future = pending.popleft()
                following = next(queue, None)
                if following is not None:
                    pending.append((following, pool.submit(_guarded, load, following)))
                yield path, future.result()
        finally:
            for _, future in pending:
                future.cancel()


@dataclass
class FileResult:
    """What the model said about one file: one probability vector per cell, or an error."""

    path: Path
    boxes: list[Optional[Box]] = field(default_factory=list)
    probabilities: list[np.ndarray] = field(default_factory=list)
    error: Optional[str] = None
    distances: list[float] = field(
        default_factory=list
    )  # stain distance per cell (wbc.imaging.domain)
    # channels in which the image's background is clipped (wbc.imaging.color.saturated_channels);
    # measured with the distances
    saturated: tuple[str, ...] = ()


def classify_files(
    predictor: Predictor,
    files: Sequence[Path],
    spec: InputSpec,
    crop_size: int = 256,
    *,
    all_cells: bool = False,
    input_kind: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    workers: Optional[int] = None,
    progress: Progress = None,
    domain=None,
) -> list[FileResult]:
    """Classify ``files`` in batches while a thread pool decodes the next ones.

    ``all_cells``: one result per WBC found (for counting); otherwise the main WBC only, and an
    image in which no WBC is found gets ``error``. ``progress(n)`` is called as files are done.
    ``domain``: a ``wbc.imaging.domain.DomainReference``; each cell's stain distance from it is
    measured (in the decoding threads) into ``FileResult.distances``, and whether the image's
    background is saturated into ``FileResult.saturated``.
    """
    from wbc.imaging.color import saturated_channels

    def load(path: Path) -> tuple[list[CellInput], list[float], tuple[str, ...]]:
        rgb = read_rgb(path)
        inputs = model_inputs(rgb, spec, crop_size, input_kind=input_kind, all_cells=all_cells)
        if not inputs and not all_cells:
            raise BadImage(path, "no white blood cell found")
        if domain is None:
            return inputs, [], ()
        distances = domain.distances([cell.pixels for cell in inputs]).tolist()
        return inputs, distances, saturated_channels(rgb)

    results: list[FileResult] = []
    batch: list[np.ndarray] = []
    owners: list[FileResult] = []

    def flush() -> None:
        if not batch:
            return
        probs = predictor(np.stack(batch))
        for owner, row in zip(owners, probs):
            owner.probabilities.append(row)
        batch.clear()
        owners.clear()

    prefetch = 2 * batch_size + (workers or default_workers())
    for path, loaded in iter_loaded(files, load, workers, prefetch):
        result = FileResult(path)
        results.append(result)
        if isinstance(loaded, BadImage):
            result.error = loaded.reason
        else:
            cells, result.distances, result.saturated = loaded
            for cell in cells:
                result.boxes.append(cell.box)
                batch.append(cell.pixels)
                owners.append(result)
                if len(batch) >= batch_size:
                    flush()
        if progress is not None:
            progress(1)
    flush()
    return results


# --------------------------------------------------------------------------- predict


def _top(probs: np.ndarray, classes: Sequence[str], k: int) -> list[dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"class": classes[i], "probability": round(float(probs[i]), 6)} for i in order]


def prediction_rows(
    results: Sequence[FileResult], classes: Sequence[str], top: int = 3, domain=None
) -> list[dict[str, Any]]:
    """One dict per file: file, class, probability (= confidence, the top probability), top
    (K dicts), probabilities, error; with ``domain`` (the run's ``wbc.imaging.domain`` reference)
    also ``stain_distance``, ``out_of_domain`` (the distance above the run's threshold) and
    ``saturated_background`` (the channels in which the image's background is clipped)."""
    k = max(1, min(int(top), len(classes)))
    rows = []
    for result in results:
        row: dict[str, Any] = {
            "file": str(result.path),
            "class": None,
            "probability": None,
            "confidence": None,
            "top": [],
            "probabilities": {},
            "error": result.error,
        }
        if domain is not None:
            distance = result.distances[0] if result.distances else None
            row["stain_distance"] = None if distance is None else round(float(distance), 3)
            row["out_of_domain"] = None if distance is None else bool(domain.outside(distance))
            row["saturated_background"] = list(result.saturated)
        if result.error is None and result.probabilities:
            probs = np.asarray(result.probabilities[0], dtype=np.float64)
            best = _top(probs, classes, k)
            row.update(
                {
                    "class": best[0]["class"],
                    "probability": best[0]["probability"],
                    "confidence": best[0]["probability"],
                    "top": best,
                    "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
                }
            )
        rows.append(row)
    return rows


def classify_sample(
    run,
    files: Sequence[Path],
    *,
    all_cells: bool = False,
    input_kind: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    workers: Optional[int] = None,
    progress: Progress = None,
    predictor: Optional[Predictor] = None,
    ray_options: Any = None,
    adapt: str = "never",
    engine: str = "auto",
    echo: Callable[[str], None] = no_echo,
) -> tuple[list[FileResult], Optional[dict[str, Any]]]:
    """``files`` classified by ``run`` here (``classify_files``) or on a Ray cluster
    (``ray_options``: ``classify_on_ray``), then, per ``adapt``, by ``run`` adapted on them
    (``adapt_on_sample``): ``(results, what adapting did or None)``."""
    if ray_options is not None:
        results = classify_on_ray(
            run.model_path,
            files,
            ray_options,
            all_cells=all_cells,
            input_kind=input_kind,
            batch_size=batch_size,
            echo=lambda m: print(m, file=sys.stderr),
        )
    else:
        results = classify_files(
            predictor or Predictor.from_run(run),
            files,
            run.spec,
            run.crop_size,
            all_cells=all_cells,
            input_kind=input_kind,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            domain=run.domain,
        )
    adaptation = adapt_on_sample(
        run,
        results,
        adapt,
        input_kind=input_kind,
        all_cells=all_cells,
        engine=engine,
        batch_size=batch_size,
        workers=workers,
        echo=echo,
    )
    return results, adaptation


def predict_files(
    run, files: Sequence[Path], *, top: int = 3, **options: Any
) -> list[dict[str, Any]]:
    """Classify each file with ``run`` (a ``wbc.models.runs.Run``): ``prediction_rows`` of the
    results. ``options``: those of ``classify_sample`` (input kind, batch size, Ray, ``adapt``,
    ...). When the files were adapted on (``adapt``: ``auto`` or ``always``), each classified
    row has ``adapted: True``; rows have no such key otherwise."""
    results, adaptation = classify_sample(run, files, **options)
    rows = prediction_rows(results, run.classes, top, run.domain)
    if adaptation is not None:
        for row in rows:
            row["adapted"] = row["error"] is None
    return rows


# --------------------------------------------------------------------------- adapting on the sample

ADAPT_MODES = ("auto", "always", "never")


def sample_flags(run, results: Sequence[FileResult]) -> tuple[int, int]:
    """``(cells out of domain, cells judged)`` over ``results``' classified cells; (0, 0) for a
    run without a domain reference."""
    if run.domain is None:
        return 0, 0
    distances = [d for r in results if r.error is None for d in r.distances]
    return int(np.sum(run.domain.outside(distances))), len(distances)


def adapt_on_sample(
    run,
    results: Sequence[FileResult],
    mode: str,
    *,
    input_kind: str = "auto",
    all_cells: bool = False,
    engine: str = "auto",
    batch_size: int = DEFAULT_BATCH,
    workers: Optional[int] = None,
    echo: Callable[[str], None] = no_echo,
) -> Optional[dict[str, Any]]:
    """Adapt a copy of ``run`` on the cells of ``results`` themselves and classify them again:
    their ``probabilities`` are replaced in place. Returns what was done, or None when nothing
    was.

    The same adaptation as ``wbc adapt --priors never`` (``Classifier.adapt_to``, class-balanced),
    done in memory on the sample being classified; nothing is written. The cells are read again
    from their files (so a Ray-classified batch adapts too) and fed to it in the order of their
    files' content digests, as ``wbc adapt`` does, so that names and the order of the files do
    not change the adapted model. ``mode``:

    - ``never``: nothing;
    - ``auto``: only when the run's out-of-domain advice fires on the sample
      (``wbc.imaging.domain.adaptation_advice``: at least 10% of at least 20 cells flagged; fixed
      before this was measured), and the run is not an adapted one already;
    - ``always``: whatever the flag says (an adapted run with a prior correction is refused).
    """
    from wbc.core.manifest import sha256_file
    from wbc.imaging.domain import adaptation_advice, few_cells_warning
    from wbc.models.adaptation import AdaptedClassifier
    from wbc.models.runs import load_run

    if mode not in ADAPT_MODES:
        raise ValueError(f"adapt must be one of {ADAPT_MODES}, not {mode!r}")
    if mode == "never":
        return None
    flagged, judged = sample_flags(run, results)
    already = isinstance(run.model, AdaptedClassifier)
    if mode == "auto":
        if already or adaptation_advice(flagged, judged, run.run_dir) is None:
            return None
    elif already:
        raise ModelError(
            f"{run.run_dir}: already adapted (it has a prior correction); adapt the run it "
            "came from instead"
        )
    owners = [r for r in results if r.error is None and r.probabilities]
    if not owners:
        return None

    def load(path: Path) -> tuple[str, list[np.ndarray]]:
        inputs = model_inputs(
            read_rgb(path), run.spec, run.crop_size, input_kind=input_kind, all_cells=all_cells
        )
        return sha256_file(path), [cell.pixels for cell in inputs]

    pixels: list[np.ndarray] = []
    spans: list[tuple[str, FileResult, int, int]] = []  # digest, result, first cell, cells
    for result, (path, loaded) in zip(owners, iter_loaded([r.path for r in owners], load, workers)):
        digest, cells = loaded if not isinstance(loaded, BadImage) else ("", [])
        if len(cells) != len(result.probabilities):
            raise DataError(f"{path}: changed while it was being classified; run again")
        spans.append((digest, result, len(pixels), len(cells)))
        pixels.extend(cells)
    canonical = np.stack(
        [
            pixels[k]
            for _, _, start, n in sorted(spans, key=lambda s: (s[0], s[2]))
            for k in range(start, start + n)
        ]
    )
    echo(
        f"adapting {run.model_path} on this sample's {len(canonical)} cells "
        f"({flagged} of {judged} out of domain)"
    )
    if warning := few_cells_warning(len(canonical)):
        echo(warning)
    adapted = load_run(run.model_path)
    parts = adapted.model.adapt_to(canonical, echo, True)
    predictor = Predictor.from_run(adapted, engine=engine, cache=False)
    probs = np.concatenate(
        [predictor(np.stack(pixels[i : i + batch_size])) for i in range(0, len(pixels), batch_size)]
    )
    for _, result, start, n in spans:
        result.probabilities = list(probs[start : start + n])
    return {
        "mode": mode,
        "images": len(owners),
        "cells": len(pixels),
        "out_of_domain": flagged,
        "labels_used": False,
        "parts": parts,
    }


def text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()
) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row[: len(headers)]):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(cells):
            if i == len(cells) - 1 and i not in right:
                parts.append(cell)
            else:
                parts.append(cell.rjust(widths[i]) if i in right else cell.ljust(widths[i]))
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers)] + [line(r) for r in rows]) + "\n"


def format_predictions(
    rows: Sequence[dict[str, Any]],
    fmt: str = "table",
    top: int = 3,
    model: Optional[str] = None,
    classes: Sequence[str] = (),
) -> str:
    """``rows`` from ``prediction_rows`` as a text table, CSV or JSON."""
    k = max((len(r["top"]) for r in rows), default=0) or max(1, top)
    if fmt == "json":
        document = {
            "model": model,
            "classes": list(classes),
            "images": len(rows),
            "failed": sum(1 for r in rows if r["error"]),
            "out_of_domain": sum(1 for r in rows if r.get("out_of_domain")),
            "saturated_background": sum(1 for r in rows if r.get("saturated_background")),
            # rows answered by the model adapted on these images (--adapt)
            "adapted": sum(1 for r in rows if r.get("adapted")),
            "predictions": list(rows),
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["file", "class", "probability"]
        for i in range(1, k + 1):
            header += [f"top{i}_class", f"top{i}_probability"]
        flagged = any("out_of_domain" in r for r in rows)
        adapted = any("adapted" in r for r in rows)
        writer.writerow(
            header
            + (["stain_distance", "out_of_domain", "saturated_background"] if flagged else [])
            + (["adapted"] if adapted else [])
            + ["error"]
        )
        for r in rows:
            cells = [
                r["file"],
                r["class"] or "",
                "" if r["probability"] is None else f"{r['probability']:.6f}",
            ]
            for i in range(k):
                if i < len(r["top"]):
                    cells += [r["top"][i]["class"], f"{r['top'][i]['probability']:.6f}"]
                else:
                    cells += ["", ""]
            if flagged:
                cells += [
                    "" if r.get("stain_distance") is None else f"{r['stain_distance']:.3f}",
                    "" if r.get("out_of_domain") is None else str(r["out_of_domain"]).lower(),
                    "+".join(r.get("saturated_background") or ()),
                ]
            if adapted:
                cells.append(str(bool(r.get("adapted"))).lower())
            writer.writerow(cells + [r["error"] or ""])
        return buffer.getvalue()
    if fmt != "table":
        raise ValueError(f"format must be one of {FORMATS}, not {fmt!r}")
    table_rows = []
    for r in rows:
        if r["error"]:
            table_rows.append([r["file"], "ERROR", "", r["error"]])
        else:
            tops = ", ".join(f"{t['class']} {t['probability']:.3f}" for t in r["top"])
            if r.get("out_of_domain"):
                tops += "  [out of domain: stain unlike the training images]"
            table_rows.append([r["file"], r["class"], f"{r['probability']:.3f}", tops])
    return text_table(["file", "class", "prob", f"top {k}"], table_rows, right=(2,))


# --------------------------------------------------------------------------- predict on Ray Data


class _Classify:
    """A Ray Data actor: loads the run once, then classifies batches of file paths with
    ``wbc.workflows.predict.classify_files``, exactly as the local path does."""

    def __init__(self, model_path: str, all_cells: bool, input_kind: str):
        from wbc.models.runs import load_run

        self.run = load_run(Path(model_path))
        self.predictor = Predictor.from_run(self.run)
        self.all_cells = all_cells
        self.input_kind = input_kind

    def __call__(self, batch: dict) -> dict:
        import json

        import numpy as np

        paths = [Path(str(p)) for p in batch["path"]]
        results = classify_files(
            self.predictor,
            paths,
            self.run.spec,
            self.run.crop_size,
            all_cells=self.all_cells,
            input_kind=self.input_kind,
            batch_size=max(1, len(paths)),
            workers=1,
            domain=self.run.domain,
        )
        encoded = [
            json.dumps(
                {
                    "boxes": [list(b) if b is not None else None for b in r.boxes],
                    "probabilities": [np.asarray(p, np.float64).tolist() for p in r.probabilities],
                    "error": r.error,
                    "distances": list(r.distances),
                    "saturated": list(r.saturated),
                }
            )
            for r in results
        ]
        return {"index": batch["index"], "result": np.asarray(encoded, dtype=object)}


def classify_on_ray(
    model_path: Path,
    files: Sequence[Path],
    options: Any,  # wbc.workflows.executors.RayOptions
    *,
    all_cells: bool = False,
    input_kind: str = "auto",
    batch_size: int = 64,
    echo: Callable[[str], None] = print,
) -> list:
    """``classify_files`` over Ray Data: ``map_batches`` on a pool of actors, each loading the
    model once; the results come back in input order, bad files as their own error rows."""
    import json

    import numpy as np

    from wbc.core.progress import enabled
    from wbc.workflows.executors import connect

    connect(options, echo)
    import ray
    import ray.data

    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = enabled()  # as wbc's own bars: on a terminal only
    workers = max(1, int(ray.cluster_resources().get("CPU", 1) // options.cpus_per_trial))
    items = [{"index": i, "path": str(p)} for i, p in enumerate(files)]
    dataset = ray.data.from_items(items, override_num_blocks=max(1, min(len(items), workers * 4)))
    classified = dataset.map_batches(
        _Classify,
        fn_constructor_args=(str(model_path), all_cells, input_kind),
        batch_size=batch_size,
        concurrency=workers,
        num_cpus=options.cpus_per_trial,
        num_gpus=options.gpus_per_trial or None,
        batch_format="numpy",
    )
    echo(f"ray: classifying {len(files)} files on {workers} actor(s)")
    rows = sorted(classified.take_all(), key=lambda row: int(row["index"]))
    results = []
    for row in rows:
        data = json.loads(row["result"])
        result = FileResult(Path(files[int(row["index"])]), error=data["error"])
        result.boxes = [tuple(b) if b is not None else None for b in data["boxes"]]
        result.probabilities = [np.asarray(p) for p in data["probabilities"]]
        result.distances = data["distances"]
        result.saturated = tuple(data["saturated"])
        results.append(result)
    return results
