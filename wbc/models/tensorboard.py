"""TensorBoard logs of a run: ``RUN/tensorboard/`` (``tensorboard --logdir runs``).

Keras' own ``TensorBoard`` callback writes the loss and accuracy curves of every epoch (``train``
and ``validation``); ``ConfusionImage`` adds the validation side's confusion matrix as an image
per epoch. After training, every family (the features family has no epochs) gets the test
side's accuracy, macro-F1 and confusion matrix under ``test/`` (``write_test_summary``).
"""

from __future__ import annotations

import io
import os
import socket
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

LOG_DIR = "tensorboard"


def confusion_png(matrix: Sequence[Sequence[int]], classes: Sequence[str], title: str) -> bytes:
    """The run's confusion-matrix picture (``wbc.core.plots.plot_confusion``) as PNG bytes."""
    from wbc.core.plots import plot_confusion

    buffer = io.BytesIO()
    plot_confusion(matrix, classes, buffer, title)
    return buffer.getvalue()


def _image_summary(writer, name: str, png: bytes, step: int) -> None:
    import tensorflow as tf

    with writer.as_default():
        tf.summary.image(name, tf.image.decode_png(png, channels=4)[None], step=step)
        writer.flush()


def keras_callbacks(run_dir: Path, val_data, classes: Sequence[str]) -> list:
    """Keras' TensorBoard callback and the per-epoch confusion matrix of ``val_data``."""
    import keras
    import tensorflow as tf

    log_dir = Path(run_dir) / LOG_DIR

    class ConfusionImage(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.writer = tf.summary.create_file_writer(str(log_dir / "validation"))
            self.labels = None

        def on_epoch_end(self, epoch, logs=None):
            from wbc.core.metrics import confusion_matrix

            if self.labels is None:
                self.labels = np.concatenate([np.argmax(y, axis=-1) for _, y in val_data])
            predicted = np.argmax(self.model.predict(val_data, verbose=0), axis=-1)
            matrix = confusion_matrix(self.labels, predicted, len(classes))
            _image_summary(
                self.writer,
                "confusion_matrix",
                confusion_png(matrix, classes, f"validation, epoch {epoch + 1}"),
                epoch,
            )

    board = keras.callbacks.TensorBoard(str(log_dir), write_graph=False, profile_batch=0)
    # The study's ImageDataGenerator feed loops forever: no confusion image from it.
    return [board, ConfusionImage()] if isinstance(val_data, tf.data.Dataset) else [board]


def write_test_summary(run_dir: Path, metrics: dict, step: int) -> None:
    """The test side's accuracy, macro-F1 and confusion matrix under ``test/``.

    Written with TensorBoard's protos in the layout ``tf.summary`` gives, but without
    TensorFlow: the features family never loads it, and its import costs seconds."""
    from tensorboard.compat.proto import event_pb2, summary_pb2
    from tensorboard.plugins.image import metadata as image_metadata
    from tensorboard.plugins.scalar import metadata as scalar_metadata
    from tensorboard.summary.writer.record_writer import RecordWriter
    from tensorboard.util import tensor_util

    from wbc.core.manifest import atomic_path

    png = confusion_png(metrics["confusion_matrix"], metrics["classes"], "test side")
    height, width = _png_size(png)
    scalar_meta = scalar_metadata.create_summary_metadata(display_name="", description="")
    values = [
        summary_pb2.Summary.Value(
            tag=tag,
            metadata=scalar_meta,
            tensor=tensor_util.make_tensor_proto(np.float32(metrics[key])),
        )
        for tag, key in (("accuracy", "accuracy"), ("macro_f1", "macro_f1"))
    ]
    values.append(
        summary_pb2.Summary.Value(
            tag="confusion_matrix",
            metadata=image_metadata.create_summary_metadata(display_name="", description=""),
            # tf.summary.image's tensor: width, height, then the encoded images
            tensor=tensor_util.make_tensor_proto(
                [str(width).encode(), str(height).encode(), png], dtype="string"
            ),
        )
    )
    now = time.time()
    events = [
        event_pb2.Event(wall_time=now, file_version="brain.Event:2"),
        event_pb2.Event(wall_time=now, step=step, summary=summary_pb2.Summary(value=values)),
    ]
    # TensorBoard's own writer would import TensorFlow for its file system: this is the
    # same TFRecord file, written whole and renamed into place.
    name = f"events.out.tfevents.{int(now)}.{socket.gethostname()}.{os.getpid()}.0"
    with atomic_path(Path(run_dir) / LOG_DIR / "test" / name) as tmp, open(tmp, "wb") as sink:
        records = RecordWriter(sink)
        for event in events:
            records.write(event.SerializeToString())


def _png_size(png: bytes) -> tuple[int, int]:
    """Height and width from a PNG's header (IHDR: width, then height, big-endian)."""
    width = int.from_bytes(png[16:20], "big")
    height = int.from_bytes(png[20:24], "big")
    return height, width
