"""Classify new images with a trained run: predict, count (a WBC differential) and explain.

Images are preprocessed exactly like the training images, from the run's ``config.yaml``:
``wbc.imageio.read_rgb`` -> (when ``crop.mode`` is not ``none``: the main WBC's square crop from
``wbc.crop``, unless the image already is a crop) -> ``wbc.preprocess.to_input`` (resize, then
the colour steps of ``color.input`` / ``color.normalize``) -> ``scale``.
``model_inputs`` is that one function; evaluation can call it too.

Speed: files are decoded by a thread pool (Pillow and OpenCV release the GIL) while the main
thread runs batches through ``Predictor``: by default the model converted to LiteRT
(``wbc.lite``, ~0.5 ms for one image on 2 cores), else a ``tf.function`` (~3 ms; ``model.predict``
costs ~45 ms of set-up per call). A bad file becomes a row with an ``error`` and the run goes on.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import numpy as np

from wbc.errors import BadImage, DataError
from wbc.imageio import IMAGE_EXTENSIONS, is_image_name, read_rgb
from wbc.preprocess import InputSpec, resize, scale, to_input

INPUT_KINDS = ("auto", "smear", "crop")
# input_kind auto: sides within this ratio = already a cell crop. Other labs' crops are often a
# few pixels off square (tecom-crops: 104x120, ratio 1.15); smears are 4:3, 5:4 or wider.
CROP_ASPECT = 1.2
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
    from wbc import crop  # lazily: only runs trained on crops need it

    return crop


def takes_crop(rgb: np.ndarray, spec: InputSpec, input_kind: str = "auto") -> bool:
    """Whether ``rgb`` must be cropped to its WBC first (the model was trained on crops).

    ``input_kind``: ``smear`` (a whole-field photo: crop it), ``crop`` (already a cell crop) or
    ``auto``: a square or nearly square image (longer side at most ``CROP_ASPECT`` times the
    shorter) is taken to be a crop already (crops are about square; smears are not).
    """
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, not {input_kind!r}")
    if spec.crop_mode == "none" or input_kind == "crop":
        return False
    if input_kind == "smear":
        return True
    height, width = rgb.shape[:2]
    return max(height, width) > CROP_ASPECT * min(height, width)


def model_inputs(
    rgb: np.ndarray,
    spec: InputSpec,
    crop_size: int = 256,
    *,
    input_kind: str = "auto",
    all_cells: bool = False,
) -> list[CellInput]:
    """``rgb`` (H, W, 3 uint8) -> the model input(s), preprocessed as the training images were.

    Without cropping: one input, the whole image resized. With ``crop.mode`` boxes/detect:

    - ``all_cells=False``: the main WBC, cut exactly as the crop stage cut the training images
      (``wbc.crop.crop_cells``: the detector's best box, padded square of ``crop_size`` pixels;
      the centre square when no cell is found), then resized. Always one input.
    - ``all_cells=True`` (counting): every WBC that ``wbc.crop.detect_cells`` finds, each cut
      the same way; an empty list when none is found (no centre-square guess).

    Not scaled: pass the batch through ``scale`` (or ``Predictor``, which does).
    """
    if not takes_crop(rgb, spec, input_kind):
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


def load_input(path: Path, spec: InputSpec, crop_size: int = 256, *,
               input_kind: str = "auto") -> np.ndarray:
    """One image file -> its uint8 model input. Raises ``BadImage`` (unreadable, no WBC found)."""
    inputs = model_inputs(read_rgb(path), spec, crop_size, input_kind=input_kind)
    if not inputs:
        raise BadImage(path, "no white blood cell found")
    return inputs[0].pixels


# --------------------------------------------------------------------------- inference


ENGINES = ("auto", "litert", "tensorflow")


class Predictor:
    """A run's model as a function: uint8 batch (N, H, W, 3) -> probabilities (N, C).

    Engines: ``litert`` runs the model converted to LiteRT (``wbc.lite``: ~0.5 ms for one image
    on 2 cores, cached conversion); ``tensorflow`` a ``tf.function`` traced once for any batch
    size (~3 ms for one image; ``model.predict`` costs ~45 ms a call). ``auto`` is LiteRT, or
    TensorFlow when LiteRT is not installed or cannot convert the model; ``fallback`` then says
    why. Both give the same probabilities to ~1e-6.
    """

    def __init__(self, model, image_size: tuple[int, int], *, engine: str = "auto",
                 model_path: Optional[Path] = None):
        """``model_path``: the model's file, the key of the LiteRT conversion cache (None: no
        cache)."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.model = model
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.fallback: Optional[str] = None
        self.n_classes = int(model.outputs[0].shape[-1])
        self._run: Callable[[np.ndarray], np.ndarray]
        if engine in ("auto", "litert"):
            try:
                self._run = self._litert(model, model_path)
                self.engine = "litert"
                return
            except Exception as exc:  # noqa: BLE001 - any converter/runtime failure: fall back
                if engine == "litert":
                    raise DataError(f"{model_path or 'model'}: cannot run on LiteRT "
                                    f"({type(exc).__name__}: {exc})") from None
                self.fallback = (f"LiteRT unavailable ({type(exc).__name__}: {exc}); "
                                 "using TensorFlow")
        self._run = self._tensorflow(model)
        self.engine = "tensorflow"

    @staticmethod
    def _litert(model, model_path: Optional[Path]) -> Callable[[np.ndarray], np.ndarray]:
        from wbc.lite import LiteModel, load_or_convert

        lite = LiteModel(load_or_convert(model, model_path))
        return lambda batch: lite(scale(batch))

    def _tensorflow(self, model) -> Callable[[np.ndarray], np.ndarray]:
        import tensorflow as tf

        height, width = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def infer(batch):
            return model(scale(batch), training=False)

        # Calling the traced graph directly skips tf.function's argument matching (~0.5 ms).
        concrete = infer.get_concrete_function()
        return lambda batch: concrete(tf.convert_to_tensor(batch)).numpy()

    @classmethod
    def from_run(cls, run, engine: str = "auto", cache: bool = True) -> "Predictor":
        """``cache``: keep the LiteRT conversion for the next process that loads this model."""
        return cls(run.model, run.spec.image_size, engine=engine,
                   model_path=run.model_path if cache else None)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch, dtype=np.uint8)
        if batch.ndim == 3:
            batch = batch[None]
        if len(batch) == 0:
            return np.zeros((0, self.n_classes), np.float32)
        return self._run(batch)


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


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


def iter_loaded(files: Sequence[Path], load: Callable[[Path], Any], workers: Optional[int] = None,
                prefetch: int = 2 * DEFAULT_BATCH) -> Iterator[tuple[Path, Any]]:
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
) -> list[FileResult]:
    """Classify ``files`` in batches while a thread pool decodes the next ones.

    ``all_cells``: one result per WBC found (for counting); otherwise the main WBC only, and an
    image in which no WBC is found gets ``error``. ``progress(n)`` is called as files are done.
    """

    def load(path: Path) -> list[CellInput]:
        inputs = model_inputs(read_rgb(path), spec, crop_size, input_kind=input_kind,
                              all_cells=all_cells)
        if not inputs and not all_cells:
            raise BadImage(path, "no white blood cell found")
        return inputs

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
            for cell in loaded:
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


def prediction_rows(results: Sequence[FileResult], classes: Sequence[str], top: int = 3
                    ) -> list[dict[str, Any]]:
    """One dict per file: file, class, probability, top (K dicts), probabilities, error."""
    k = max(1, min(int(top), len(classes)))
    rows = []
    for result in results:
        row: dict[str, Any] = {"file": str(result.path), "class": None, "probability": None,
                               "top": [], "probabilities": {}, "error": result.error}
        if result.error is None and result.probabilities:
            probs = np.asarray(result.probabilities[0], dtype=np.float64)
            best = _top(probs, classes, k)
            row.update(
                {
                    "class": best[0]["class"],
                    "probability": best[0]["probability"],
                    "top": best,
                    "probabilities": {c: round(float(p), 6) for c, p in zip(classes, probs)},
                }
            )
        rows.append(row)
    return rows


def predict_files(run, files: Sequence[Path], *, top: int = 3, input_kind: str = "auto",
                  batch_size: int = DEFAULT_BATCH, workers: Optional[int] = None,
                  progress: Progress = None, predictor: Optional[Predictor] = None
                  ) -> list[dict[str, Any]]:
    """Classify each file with ``run`` (a ``wbc.runs.Run``): ``prediction_rows`` of the results."""
    predictor = predictor or Predictor.from_run(run)
    results = classify_files(predictor, files, run.spec, run.crop_size, input_kind=input_kind,
                             batch_size=batch_size, workers=workers, progress=progress)
    return prediction_rows(results, run.classes, top)


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Sequence[int] = ()) -> str:
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


def format_predictions(rows: Sequence[dict[str, Any]], fmt: str = "table", top: int = 3,
                       model: Optional[str] = None, classes: Sequence[str] = ()) -> str:
    """``rows`` from ``prediction_rows`` as a text table, CSV or JSON."""
    k = max((len(r["top"]) for r in rows), default=0) or max(1, top)
    if fmt == "json":
        document = {
            "model": model,
            "classes": list(classes),
            "images": len(rows),
            "failed": sum(1 for r in rows if r["error"]),
            "predictions": list(rows),
        }
        return json.dumps(document, indent=2) + "\n"
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = ["file", "class", "probability"]
        for i in range(1, k + 1):
            header += [f"top{i}_class", f"top{i}_probability"]
        writer.writerow(header + ["error"])
        for r in rows:
            cells = [r["file"], r["class"] or "", "" if r["probability"] is None else
                     f"{r['probability']:.6f}"]
            for i in range(k):
                if i < len(r["top"]):
                    cells += [r["top"][i]["class"], f"{r['top'][i]['probability']:.6f}"]
                else:
                    cells += ["", ""]
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
            table_rows.append([r["file"], r["class"], f"{r['probability']:.3f}", tops])
    return _table(["file", "class", "prob", f"top {k}"], table_rows, right=(2,))


# --------------------------------------------------------------------------- count


def percentages(counts: Sequence[int], decimals: int = 2) -> list[float]:
    """Percent of each count, rounded so that they add up to exactly 100 (largest remainder)."""
    total = sum(counts)
    if total == 0:
        return [0.0 for _ in counts]
    unit = 10 ** decimals
    exact = [c * 100 * unit / total for c in counts]
    floors = [math.floor(x) for x in exact]
    short = 100 * unit - sum(floors)
    order = sorted(range(len(counts)), key=lambda i: (-(exact[i] - floors[i]), i))
    for i in order[:short]:
        floors[i] += 1
    return [f / unit for f in floors]


def count_cells(run, folder: Path | str, *, input_kind: str = "auto",
                batch_size: int = DEFAULT_BATCH, workers: Optional[int] = None,
                progress: Progress = None, predictor: Optional[Predictor] = None,
                files: Optional[Sequence[Path]] = None) -> dict[str, Any]:
    """A WBC differential of one sample: how many cells of each class, and the percentages.

    With a run trained on crops (crop.mode boxes/detect) every WBC that ``wbc.crop.detect_cells``
    finds in an image is classified and counted; with crop.mode none each image is one cell.
    Unreadable images are listed in ``failed`` and not counted.
    """
    folder = Path(folder)
    if files is None:
        if not folder.is_dir():
            raise DataError(f"{folder}: folder not found")
        files = require_images([folder])
    predictor = predictor or Predictor.from_run(run)
    per_cell = run.spec.crop_mode != "none"
    results = classify_files(predictor, files, run.spec, run.crop_size, all_cells=per_cell,
                             input_kind=input_kind, batch_size=batch_size, workers=workers,
                             progress=progress)
    classes = list(run.classes)
    counts = [0] * len(classes)
    failed, no_cells = [], []
    for result in results:
        if result.error:
            failed.append({"file": str(result.path), "error": result.error})
            continue
        if not result.probabilities:
            no_cells.append(str(result.path))
        for probs in result.probabilities:
            counts[int(np.argmax(probs))] += 1
    percent = percentages(counts)
    return {
        "folder": str(folder),
        "model": str(run.model_path),
        "per": "cell" if per_cell else "image",
        "images": len(results),
        "classified_images": len(results) - len(failed),
        "cells": sum(counts),
        "classes": classes,
        "counts": dict(zip(classes, counts)),
        "percent": dict(zip(classes, percent)),
        "failed": failed,
        "no_cells": no_cells,
    }


def format_count(result: dict[str, Any], fmt: str = "table") -> str:
    if fmt == "json":
        return json.dumps(result, indent=2) + "\n"
    if fmt != "table":
        raise ValueError(f"format must be table or json, not {fmt!r}")
    rows = [[c, str(result["counts"][c]), f"{result['percent'][c]:.1f}%"]
            for c in result["classes"]]
    rows.append(["total", str(result["cells"]), "100.0%" if result["cells"] else "0.0%"])
    return _table(["class", "count", "percent"], rows, right=(1, 2))


def plot_counts(result: dict[str, Any], path: Path | str) -> Path:
    """A bar chart (PNG) of the differential: percent per class, counts on the bars."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    path = Path(path)
    classes = result["classes"]
    percent = [result["percent"][c] for c in classes]
    counts = [result["counts"][c] for c in classes]
    figure = Figure(figsize=(6.4, 4.0), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52"]
    bars = axes.bar(classes, percent, color=palette[: len(classes)] if len(classes) <= 4 else None)
    for bar, count, pct in zip(bars, counts, percent):
        axes.annotate(f"{count} ({pct:.1f}%)", (bar.get_x() + bar.get_width() / 2,
                      bar.get_height()), ha="center", va="bottom", fontsize=9, xytext=(0, 2),
                      textcoords="offset points")
    axes.set_ylabel("percent of cells")
    axes.set_ylim(0, max(max(percent, default=0) * 1.15, 10))
    unit = "cells" if result.get("per") == "cell" else "images"
    axes.set_title(f"WBC differential: {result['cells']} {unit} in {Path(result['folder']).name}")
    figure.tight_layout()
    try:
        figure.savefig(path, format="png")
    except OSError as exc:
        raise DataError(f"{path}: cannot write the plot ({exc.strerror or exc})") from None
    return path


# --------------------------------------------------------------------------- explain (Grad-CAM)


def _last_conv_index(layers: Sequence[Any]) -> int:
    import keras

    for index in range(len(layers) - 1, -1, -1):
        if isinstance(layers[index], keras.layers.Conv2D):
            return index
    raise DataError("the model has no Conv2D layer to explain")


def _sequential_forward(model):
    """``x -> (last conv output, class scores before the softmax)`` replaying ``model.layers``."""
    import keras

    layers = list(model.layers)
    conv_index = _last_conv_index(layers)
    last = layers[-1]
    softmax_head = (isinstance(last, keras.layers.Dense)
                    and getattr(last.activation, "__name__", "") == "softmax")

    def forward(x):
        conv = None
        for index, layer in enumerate(layers):
            if index == len(layers) - 1 and softmax_head:
                logits = keras.ops.matmul(x, last.kernel)
                if last.use_bias:
                    logits = logits + last.bias
                return conv, logits, keras.ops.softmax(logits)
            x = layer(x, training=False)
            if index == conv_index:
                conv = x
        return conv, x, x

    return forward


def _functional_forward(model):
    """The standard recipe: a sub-model from ``model.inputs`` to [last conv output, output]."""
    import keras

    conv_layer = model.layers[_last_conv_index(list(model.layers))]
    grad_model = keras.Model(model.inputs, [conv_layer.output, model.outputs[0]])

    def forward(x):
        conv, probs = grad_model(x, training=False)
        return conv, probs, probs

    return forward


def grad_cam(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for one uint8 input ``(1, H, W, 3)``: ``(heat map in [0, 1], probabilities)``.

    The heat map (at the last conv layer's resolution) weights each channel of the last conv
    output by the mean gradient of the predicted class's score (before the softmax).
    """
    import keras
    import tensorflow as tf

    forward = (_sequential_forward(model) if isinstance(model, keras.Sequential)
               else _functional_forward(model))
    x = scale(tf.constant(np.asarray(batch, dtype=np.uint8)))
    with tf.GradientTape() as tape:
        conv, scores, probs = forward(x)
        tape.watch(conv)
        index = int(tf.argmax(probs[0]))
        score = scores[:, index]
    grads = tape.gradient(score, conv)
    if grads is None:
        raise DataError("cannot compute Grad-CAM gradients for this model")
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(conv[0] * weights, axis=-1)).numpy()
    peak = float(cam.max()) if cam.size else 0.0
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    return cam.astype(np.float32), np.asarray(probs[0], dtype=np.float64)


def overlay_heat(rgb: np.ndarray, cam: np.ndarray, region: Optional[Box] = None,
                 alpha: float = 0.45) -> np.ndarray:
    """``rgb`` with ``cam`` (values in [0, 1]) drawn as a jet colour map over ``region``."""
    import cv2
    from matplotlib import colormaps

    height, width = rgb.shape[:2]
    x0, y0, x1, y1 = region if region is not None else (0, 0, width, height)
    side_w, side_h = max(1, x1 - x0), max(1, y1 - y0)
    heat = cv2.resize(cam.astype(np.float32), (side_w, side_h), interpolation=cv2.INTER_LINEAR)
    heat = np.clip(heat, 0.0, 1.0)
    colours = (colormaps["jet"](heat)[..., :3] * 255.0).astype(np.float32)
    out = rgb.astype(np.float32).copy()
    # The part of the region that lies inside the image (a padded crop may reach past an edge).
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
    if ix1 > ix0 and iy1 > iy0:
        sub = (slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0))
        weight = (alpha * (0.35 + 0.65 * heat[sub]))[..., None]
        target = out[iy0:iy1, ix0:ix1]
        out[iy0:iy1, ix0:ix1] = target * (1 - weight) + colours[sub] * weight
    result = np.clip(out.round(), 0, 255).astype(np.uint8)
    if region is not None:
        cv2.rectangle(result, (ix0, iy0), (max(ix0, ix1 - 1), max(iy0, iy1 - 1)), (255, 255, 255),
                      max(1, round(min(height, width) / 240)))
    return result


def explain_image(run, image: Path | str, output: Path | str, *, input_kind: str = "auto"
                  ) -> dict[str, Any]:
    """Grad-CAM of the predicted class over ``image``, saved as a PNG of the image's size.

    With a run trained on crops, the heat map covers the main WBC's crop square (outlined).
    Returns file, class, probability, probabilities, box (or None) and output.
    """
    from PIL import Image

    image, output = Path(image), Path(output)
    rgb = read_rgb(image)
    inputs = model_inputs(rgb, run.spec, run.crop_size, input_kind=input_kind)
    if not inputs:
        raise BadImage(image, "no white blood cell found")
    cam, probs = grad_cam(run.model, inputs[0].pixels[None])
    picture = overlay_heat(rgb, cam, inputs[0].box)
    try:
        Image.fromarray(picture).save(output, format="PNG")
    except OSError as exc:
        raise DataError(f"{output}: cannot write the heat map ({exc.strerror or exc})") from None
    index = int(np.argmax(probs))
    return {
        "file": str(image),
        "class": run.classes[index],
        "probability": round(float(probs[index]), 6),
        "probabilities": {c: round(float(p), 6) for c, p in zip(run.classes, probs)},
        "box": list(inputs[0].box) if inputs[0].box is not None else None,
        "output": str(output),
    }
