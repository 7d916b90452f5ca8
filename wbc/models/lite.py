"""Inference on LiteRT (TensorFlow Lite's maintained runtime, ``ai-edge-litert``, XNNPACK kernels).

Why: for this small CNN at batch 1, TensorFlow's executor takes ~2.5-3 ms a call on a 2-core CPU,
most of it in the first convolution (3 input channels, which oneDNN and Eigen handle poorly at
batch 1); LiteRT runs the same weights in ~0.3-0.7 ms with the same numbers (max |difference|
~1e-7 in the probabilities; ``tests/test_lite.py``). Batches run at about the same speed as in
TensorFlow.

The Keras model is converted with ``tf.lite.TFLiteConverter`` (~1.5 s) and the flatbuffer cached
under ``WBC_CACHE_DIR`` (default ``$XDG_CACHE_HOME/wbc`` or ``~/.cache/wbc``), keyed by the model
file's SHA-256 and the converter's version, so the next ``wbc predict`` loads it in milliseconds.
The cache holds only converted weights and ops (no code), keeps the 32 most recently used
models, and is skipped, never an error, where it cannot be written. ``wbc evaluate`` (also
inside ``train``, ``cv`` and ``tune``) converts without caching.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from pathlib import Path
from typing import Optional

import numpy as np

from wbc.core.errors import DataError
from wbc.core.manifest import sha256_file, write_atomic

FORMAT = 1  # bump when the conversion below changes, so old cache entries are not reused
CACHE_ENTRIES = 32  # the most recently used conversions kept (~0.4 MB each for the study model)


def cache_dir() -> Path:
    """Where converted models are kept: ``WBC_CACHE_DIR``, else the XDG cache folder."""
    if os.environ.get("WBC_CACHE_DIR"):
        return Path(os.environ["WBC_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wbc"


def cache_path(model_path: Path) -> Path:
    """The cache entry for the model file at ``model_path`` (content, not name, decides)."""
    import tensorflow as tf

    key = f"{sha256_file(model_path)}-tf{tf.__version__}-f{FORMAT}"
    return cache_dir() / "litert" / f"{key}.tflite"


@contextlib.contextmanager
def quiet():
    """Hide the converter's chatter: Keras prints the temporary SavedModel's signature on stdout
    (which would corrupt ``wbc predict --format json``), and the C++ layer logs on fd 2."""
    from wbc.core.tfsetup import silenced_stderr

    with contextlib.redirect_stdout(io.StringIO()), silenced_stderr(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def convert(model) -> bytes:
    """The Keras ``model`` as a LiteRT flatbuffer (float32 in, the model's outputs out)."""
    import tensorflow as tf

    with quiet():
        return tf.lite.TFLiteConverter.from_keras_model(model).convert()


def load_or_convert(model, model_path: Optional[Path] = None) -> bytes:
    """The converted ``model``, from the cache when ``model_path`` was converted before."""
    if model_path is None:
        return convert(model)
    entry = cache_path(Path(model_path))
    try:
        blob = entry.read_bytes()
    except OSError:
        pass
    else:
        with contextlib.suppress(OSError):
            os.utime(entry)  # recently used: _prune keeps it
        return blob
    blob = convert(model)
    with contextlib.suppress(OSError, DataError):  # an unwritable cache only costs time
        write_atomic(entry, blob)  # a killed run never leaves half a flatbuffer behind
        _prune(entry.parent)
    return blob


def _prune(folder: Path, keep: int = CACHE_ENTRIES) -> None:
    """Remove all but the ``keep`` most recently used entries, so the cache stays small."""
    entries = sorted(folder.glob("*.tflite"), key=lambda p: p.stat().st_mtime, reverse=True)
    for stale in entries[keep:]:
        with contextlib.suppress(OSError):
            stale.unlink()


class LiteModel:
    """A LiteRT interpreter over one converted model: a batch (N, H, W, 3) in the model's input
    dtype (float32 for ``convert``'s models, uint8 for ``wbc export``'s) -> outputs.

    The batch dimension is resized only when N changes (a folder's full batches, then the last).
    """

    def __init__(self, blob: bytes, threads: Optional[int] = None):
        from ai_edge_litert.interpreter import Interpreter

        with quiet():
            self._interpreter = Interpreter(
                model_content=blob, num_threads=threads or os.cpu_count() or 1
            )
        self._input = self._interpreter.get_input_details()[0]
        self._output = self._interpreter.get_output_details()[0]
        self._batch = None

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=self._input["dtype"])
        if batch.shape[0] != self._batch:
            with quiet():  # the XNNPACK delegate announces itself on the first allocation
                self._interpreter.resize_tensor_input(self._input["index"], list(batch.shape))
                self._interpreter.allocate_tensors()
            self._batch = batch.shape[0]
        self._interpreter.set_tensor(self._input["index"], batch)
        self._interpreter.invoke()
        return self._interpreter.get_tensor(self._output["index"]).copy()
