"""``wbc export``: a trained run as a file for a deployment runtime, with what it needs to be fed.

Formats, by family (``Classifier.export_formats``):

| family | onnx | tflite | savedmodel |
|---|---|---|---|
| study, cnn | yes (Keras 3's ``model.export``, tf2onnx) | yes (LiteRT) | yes (serving) |
| features | yes (``skl2onnx``: the scaler + SVM over the 62 measurements) | no | no |
| ensemble | no: export each member (``RUN/members/i-family``) | no | no |

The Keras graphs take **uint8** RGB pixels (N, H, W, 3) and return class probabilities; the /255
scaling is inside. What happens before the graph (finding and cutting the cell, resizing, the
stain normalisation with its reference statistics, the colour input, TTA) is written into
``<file>.json`` beside the export (and into ONNX's ``metadata_props`` under ``wbc``), with the
class order, so a consumer needs nothing else from this project. The run's ``MODEL_CARD.md``
goes beside it too.

Every export is checked before it is kept: the exported file is loaded in its own runtime
(onnxruntime, LiteRT, ``tf.saved_model.load``) and its probabilities compared with the run's
model on the same inputs (``parity``); ``wbc export`` prints the largest difference.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.errors import ModelError
from wbc.core.manifest import atomic_path, sha256_file, write_atomic

FORMATS = ("onnx", "tflite", "savedmodel")
DEFAULT_NAME = {"onnx": "model.onnx", "tflite": "model.tflite", "savedmodel": "saved_model"}
# The Python modules each format needs, beyond wbc's own dependencies.
EXTRAS = {"onnx": ("onnx", "onnxruntime"), "tflite": (), "savedmodel": ()}
INSTALL_HINT = "pip install 'wbc[export]'"
PARITY_TOLERANCE = 1e-5


@dataclass(frozen=True)
class Exported:
    path: Path  # the exported file (a folder for savedmodel)
    metadata_path: Path  # <file>.json (savedmodel: inside the folder too)
    card_path: Optional[Path]
    max_difference: float  # largest |probability difference| against the run's model
    checked_images: int
    runtime: str


def metadata_path(path: Path, fmt: str) -> Path:
    return Path(path) / "wbc.json" if fmt == "savedmodel" else Path(f"{path}.json")


def require_modules(fmt: str, family: str) -> None:
    """A one-line ``ModelError`` with the install command when the exporter is missing."""
    from wbc.models.registry import export_modules

    needed = [*EXTRAS[fmt], *export_modules(family, fmt)]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise ModelError(
            f"{fmt} export needs {', '.join(missing)}, which is not installed: {INSTALL_HINT}"
        )


def preprocessing(run) -> dict[str, Any]:
    """What a consumer must do to an image before the exported graph, from the run's config."""
    from wbc.imaging.color import BALANCE_HOW

    config, spec = run.config, run.spec
    reference = spec.stain_reference.to_dict() if spec.stain_reference is not None else None
    return {
        "image_size": list(spec.image_size),
        "resize": "OpenCV: INTER_AREA when shrinking, else INTER_LINEAR, to (height, width)",
        "crop": {
            "mode": config.crop.mode,
            "padding": config.crop.padding,
            "size": config.crop.size,
            "how": (
                "none: the whole image"
                if config.crop.mode == "none"
                else "cut a square around the WBC (wbc.data.cells.crop_cells: the stain "
                "detector's box, padded by `padding` of its side) and resize it"
            ),
        },
        "color": {
            "input": config.color.input,
            "normalize": config.color.normalize,
            "stain_reference": reference,
            "order": (
                f"resize, then {BALANCE_HOW}, then input"
                if config.color.normalize == "balance"
                else "resize, then normalize the stain to stain_reference, then input"
            ),
        },
        "tta": bool(config.model.tta and run.model.uses_tta),
        "tta_how": "average the probabilities of the 8 dihedral views (4 rotations x mirror)",
    }


def _runtime(fmt: str, path: Path) -> tuple[str, Callable[[np.ndarray], np.ndarray]]:
    """The exported file loaded in its own runtime: inputs -> probabilities."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        outputs = session.get_outputs()
        index = len(outputs) - 1  # skl2onnx: (label, probabilities); Keras: (probabilities,)
        return f"onnxruntime {ort.__version__}", lambda x: np.asarray(
            session.run(None, {name: x})[index]
        )
    if fmt == "tflite":
        from wbc.models.lite import LiteModel

        lite = LiteModel(Path(path).read_bytes())
        return "ai-edge-litert", lite
    from wbc.core.tfsetup import import_tensorflow

    tf = import_tensorflow()
    loaded = tf.saved_model.load(str(path))
    serve = loaded.signatures["serving_default"]
    key = next(iter(serve.structured_outputs))
    return f"tf.saved_model {tf.__version__}", lambda x: serve(tf.constant(x))[key].numpy()


def parity(
    run, fmt: str, path: Path, inputs: np.ndarray, output_columns: Sequence[int]
) -> tuple[float, str]:
    """max |p_exported - p_run| over ``inputs`` (uint8 model inputs, recoloured), and the
    runtime's name. The run's side is its TensorFlow / scikit-learn engine without TTA: the
    exported graph is the model, and TTA is a step its metadata describes."""
    runtime, run_exported = _runtime(fmt, path)
    expected = np.asarray(run.model.engine("tensorflow", cache=False)(inputs), np.float64)
    got = np.asarray(run_exported(run.model.export_inputs(inputs)), np.float64)
    full = np.zeros_like(expected)
    full[:, list(output_columns)] = got
    return float(np.abs(full - expected).max()), runtime


def sample_inputs(run, images: Sequence[Path] = (), limit: int = 20, seed: int = 0) -> np.ndarray:
    """Model inputs for the parity check: up to ``limit`` of ``images`` preprocessed as predict
    does (cell crops are used as they are), else seeded random pixels."""
    from wbc.workflows.predict import load_input

    batch = []
    for path in list(images)[:limit]:
        batch.append(load_input(Path(path), run.spec, run.crop_size))
    if batch:
        return np.stack(batch)
    rng = np.random.default_rng(seed)
    from wbc.imaging.preprocess import recolor

    noise = rng.integers(0, 256, (8, *run.spec.image_size, 3), dtype=np.uint8)
    return np.stack([recolor(image, run.spec) for image in noise])


def export_run(
    run, fmt: str, output: Optional[Path] = None, *, check_images: Sequence[Path] = ()
) -> Exported:
    """Export ``run`` (a ``wbc.models.runs.Run``) as ``fmt`` to ``output`` (default
    ``RUN/export/<model.onnx | model.tflite | saved_model>``), check it, then move it into place
    with its ``.json`` metadata and the run's model card. A failed check keeps nothing."""
    if fmt not in FORMATS:
        raise ModelError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    supported = tuple(run.model.export_formats)
    family = run.config.model.family if not run.config.model.ensemble else "ensemble"
    if fmt not in supported:
        hint = (
            f"it exports to {', '.join(supported)}"
            if supported
            else "export each member instead (RUN/members/<i>-<family>)"
        )
        raise ModelError(f"{run.model_path}: a {family} model cannot be exported as {fmt}; {hint}")
    require_modules(fmt, family)
    output = Path(output) if output else run.run_dir / "export" / DEFAULT_NAME[fmt]
    # The export is written under a temporary name and renamed into place only after its parity
    # check (atomic_path): a kill, a full disk or a failed check leaves no file under its name.
    with atomic_path(output) as staging:
        described = run.model.export(fmt, staging)
        inputs = sample_inputs(run, check_images)
        difference, runtime = parity(run, fmt, staging, inputs, described["output_columns"])
        tolerance = described.get("tolerance", PARITY_TOLERANCE)
        if not difference <= tolerance:
            raise ModelError(
                f"{output}: the exported model's probabilities differ from the "
                f"run's by {difference:.2e} (> {tolerance:g}); not written"
            )
        metadata = {
            "wbc_export": 1,
            "format": fmt,
            "family": family,
            "classes": [run.classes[i] for i in described["output_columns"]],
            "input": described["input"],
            "output": described.get("output", "probabilities (N, classes)"),
            "preprocessing": preprocessing(run),
            "source_model": {"path": str(run.model_path), "sha256": sha256_file(run.model_path)},
            "parity": {
                "max_abs_difference": difference,
                "tolerance": tolerance,
                **(
                    {"tolerance_reason": described["tolerance_reason"]}
                    if "tolerance_reason" in described
                    else {}
                ),
                "images": int(len(inputs)),
                "runtime": runtime,
            },
        }
        if fmt == "onnx":
            _set_onnx_metadata(staging, metadata)
        if fmt == "savedmodel":
            write_atomic(metadata_path(staging, fmt), json.dumps(metadata, indent=2) + "\n")
    meta = metadata_path(output, fmt)
    if fmt != "savedmodel":
        write_atomic(meta, json.dumps(metadata, indent=2) + "\n")
    card = run.run_dir / "MODEL_CARD.md"
    card_out = None
    if card.is_file():
        card_out = (output if fmt == "savedmodel" else output.parent) / "MODEL_CARD.md"
        write_atomic(card_out, card.read_bytes())
    return Exported(output, meta, card_out, difference, int(len(inputs)), runtime)


def _set_onnx_metadata(path: Path, metadata: dict[str, Any]) -> None:
    import onnx

    model = onnx.load(str(path))
    # skl2onnx lists the opsets in the order of a set of strings, which changes with each
    # process's hash seed: sorted, the same run exports the same bytes every time.
    opsets = sorted((o.domain, o.version) for o in model.opset_import)
    del model.opset_import[:]
    for domain, version in opsets:
        model.opset_import.add(domain=domain, version=version)
    del model.metadata_props[:]
    entry = model.metadata_props.add()
    entry.key, entry.value = "wbc", json.dumps(metadata)
    for key in ("classes", "family"):
        extra = model.metadata_props.add()
        extra.key = key
        extra.value = json.dumps(metadata[key]) if key == "classes" else metadata[key]
    onnx.save(model, str(path))
