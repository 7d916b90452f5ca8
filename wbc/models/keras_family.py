"""What the Keras families (``study``, ``cnn``) share: the training loop, safe loading, the
LiteRT / TensorFlow engines and Grad-CAM.

A Keras family only says how to build and compile its network and how its training images are
varied online (``build``, ``compile``, ``online_augment``); this module does the rest, the same
for both: the in-memory ``tf.data`` feed, ``history.csv`` appended per epoch, ``model.keras``
(lowest val_loss) and ``last.keras`` written atomically, a crash-safe backup
(``wbc.models.checkpoint``) for ``--resume``, early stopping and the collapse warning.
"""

from __future__ import annotations

import json
import math
import sys
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Optional

import numpy as np

from wbc.core.config import Config
from wbc.core.errors import ConfigError, DataError, ModelError
from wbc.core.tfsetup import import_tensorflow
from wbc.models import checkpoint
from wbc.models.base import Classifier, Echo, Engine, Family, FitJob, FitResult, TtaEngine

# Layers whose config carries Python code (bytecode or a function reference).
CODE_LAYERS = ("Lambda",)


# --------------------------------------------------------------------------- safe loading


def _walk_configs(node: Any):
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_configs(value)


def check_archive(path: Path) -> None:
    """Refuse files that are not ``.keras`` archives, and archives whose layers carry code."""
    if not path.exists():
        raise ModelError(f"{path}: model file not found")
    if path.is_dir():
        raise ModelError(f"{path}: is a folder without a model file")
    if path.suffix.lower() != ".keras":
        raise ModelError(f"{path}: not a .keras model file (expected the Keras 3 format)")
    try:
        if path.stat().st_size == 0:
            raise ModelError(f"{path}: empty model file (0 bytes)")
        if not zipfile.is_zipfile(path):
            raise ModelError(f"{path}: not a valid .keras model file (not a zip archive)")
        with zipfile.ZipFile(path) as archive:
            raw = archive.read("config.json")
    except KeyError:
        raise ModelError(f"{path}: not a valid .keras model file (no config.json inside)") from None
    except (OSError, zipfile.BadZipFile) as exc:
        raise ModelError(f"{path}: cannot read model file ({exc})") from None
    try:
        config = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise ModelError(f"{path}: not a valid .keras model file (bad config.json)") from None
    for node in _walk_configs(config):
        name = node.get("class_name")
        if name in CODE_LAYERS:
            raise ModelError(
                f"{path}: contains a {name} layer (arbitrary code); refusing to load it"
            )


def load_model_file(path: Path | str):
    """Load a ``.keras`` file safely (no code, ``safe_mode=True``, not compiled)."""
    path = Path(path)
    check_archive(path)
    import_tensorflow()
    import keras

    try:
        return keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # Keras raises ValueError, TypeError, KeyError, OSError, ...
        text = str(exc)
        if "safe_mode" in text or "arbitrary code" in text:
            raise ModelError(
                f"{path}: contains code (e.g. a Lambda layer, arbitrary code); refusing to load it"
            ) from None
        reason = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
        if len(reason) > 200:
            reason = reason[:197] + "..."
        raise ModelError(f"{path}: cannot load model ({reason})") from None


def load_initial_weights(
    model, path: Path, classes: Optional[Sequence[str]] = None, echo=None
) -> None:
    """Start ``model`` from the trained model at ``path``.

    When the lab's ``classes`` differ from the model's (a class more, a class fewer, another
    order), every layer but the output starts from the trained weights, and the output layer
    keeps the trained column of each class both share: a class new to the model starts fresh.
    """
    from wbc.core.runfolder import read_classes

    source = load_model_file(path)
    names_file = Path(path).parent / "classes.json"
    source_classes = list(read_classes(names_file)) if names_file.is_file() else None
    if classes is None or source_classes is None or list(classes) == source_classes:
        try:
            model.set_weights(source.get_weights())
        except ValueError as exc:
            reason = str(exc).split("\n")[0][:200]
            raise ModelError(
                f"{path}: its weights do not fit this model's architecture "
                f"(model.* or train.image_size differ?): {reason}"
            ) from None
        return
    with_weights = [layer for layer in model.layers if layer.get_weights()]
    trained = [layer for layer in source.layers if layer.get_weights()]
    if len(with_weights) != len(trained):
        raise ModelError(f"{path}: its layers do not fit this model's architecture")
    for layer, old in zip(with_weights[:-1], trained[:-1]):
        try:
            layer.set_weights(old.get_weights())
        except ValueError:
            raise ModelError(
                f"{path}: layer {old.name} does not fit this model's architecture "
                "(model.* or train.image_size differ?)"
            ) from None
    head, old_head = with_weights[-1].get_weights(), trained[-1].get_weights()
    shared = [c for c in classes if c in source_classes]
    for new_index, cls in enumerate(classes):
        if cls in source_classes:
            old_index = source_classes.index(cls)
            head[0][..., new_index] = old_head[0][..., old_index]
            head[1][new_index] = old_head[1][old_index]
    with_weights[-1].set_weights(head)
    if echo is not None:
        fresh = [c for c in classes if c not in source_classes]
        echo(
            f"output layer: {len(shared)} class(es) kept from {path}"
            + (f"; new, started fresh: {', '.join(fresh)}" if fresh else "")
        )


# --------------------------------------------------------------------------- engines


ENGINES = ("auto", "litert", "tensorflow")
ADAPT_BATCH = 64  # cells per forward pass while re-estimating BatchNorm statistics


class KerasEngine(Engine):
    """A Keras model as a batch function, on LiteRT (XNNPACK, ~0.5 ms for one image on 2 cores,
    cached conversion) or a ``tf.function`` traced once for any batch size (~3 ms;
    ``model.predict`` costs ~45 ms a call). ``auto``: LiteRT, else TensorFlow with ``fallback``
    saying why. Both give the same probabilities to ~1e-6."""

    def __init__(
        self,
        model,
        image_size: tuple[int, int],
        engine: str = "auto",
        model_path: Optional[Path] = None,
    ):
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {ENGINES}, not {engine!r}")
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.fallback = None
        self._run: Callable[[np.ndarray], np.ndarray]
        if engine in ("auto", "litert"):
            try:
                self._run = self._litert(model, model_path)
                self.engine = "litert"
                return
            except Exception as exc:  # noqa: BLE001 - any converter/runtime failure: fall back
                if engine == "litert":
                    raise DataError(
                        f"{model_path or 'model'}: cannot run on LiteRT "
                        f"({type(exc).__name__}: {exc})"
                    ) from None
                self.fallback = (
                    f"LiteRT unavailable ({type(exc).__name__}: {exc}); using TensorFlow"
                )
        self._run = self._tensorflow(model)
        self.engine = "tensorflow"

    @staticmethod
    def _litert(model, model_path: Optional[Path]) -> Callable[[np.ndarray], np.ndarray]:
        from wbc.imaging.preprocess import scale
        from wbc.models.lite import LiteModel, load_or_convert

        lite = LiteModel(load_or_convert(model, model_path))
        return lambda batch: lite(scale(batch))

    def _tensorflow(self, model) -> Callable[[np.ndarray], np.ndarray]:
        import tensorflow as tf

        from wbc.imaging.preprocess import scale

        height, width = self.image_size

        @tf.function(input_signature=[tf.TensorSpec([None, height, width, 3], tf.uint8)])
        def infer(batch):
            return model(scale(batch), training=False)

        # Calling the traced graph directly skips tf.function's argument matching (~0.5 ms).
        concrete = infer.get_concrete_function()
        return lambda batch: concrete(tf.convert_to_tensor(batch)).numpy()

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return self._run(batch)


class KerasClassifier(Classifier):
    """A loaded ``.keras`` model."""

    def __init__(self, model, path: Path):
        self.model = model
        self.path = Path(path)
        self.image_size = tuple(int(v) for v in model.inputs[0].shape[1:3])
        self.n_classes = int(model.outputs[0].shape[-1])

    def engine(self, name: str = "auto", cache: bool = True, tta: bool = False) -> Engine:
        engine = KerasEngine(self.model, self.image_size, name, self.path if cache else None)
        return TtaEngine(engine) if tta else engine

    def explain(self, pixels: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
        heat, probs = grad_cam(self.model, np.asarray(pixels, np.uint8)[None])
        return {"heat": heat, "probabilities": probs, "method": "grad-cam"}

    def adapt_to(
        self, pixels: np.ndarray, echo: Echo = print, balanced: bool = True
    ) -> list[dict[str, Any]]:
        """AdaBN (``wbc.models.adaptation.adapt_batchnorm``) on ``pixels``; a network without
        BatchNorm (the study's CNN) has nothing to re-estimate, and says so.

        ``balanced``: after the pooled statistics, ``SCALER_ITERATIONS`` rounds re-estimate them
        with each cell weighted by 1 / its predicted class's mass (as the features family's
        scaler), so that a lab's class mix does not move them. It starts from the pooled
        statistics, not the source's: under another stain the unadapted network tends to call
        nearly every cell one class, and weights from that would carry no class information."""
        from wbc.imaging.preprocess import scale
        from wbc.models.adaptation import (
            SCALER_ITERATIONS,
            adapt_batchnorm,
            batchnorm_layers,
            batchnorm_shifts,
            batchnorm_statistics,
            class_balanced_weights,
        )

        if not batchnorm_layers(self.model):
            return [
                {
                    "part": "batchnorm",
                    "method": "skipped",
                    "reason": "the network has no BatchNormalization layer",
                }
            ]
        pixels = np.asarray(pixels, np.uint8)

        def batches():
            for start in range(0, len(pixels), ADAPT_BATCH):
                yield scale(pixels[start : start + ADAPT_BATCH])

        def shares(posterior):
            return " ".join(f"{v:.2f}" for v in posterior.mean(axis=0))

        before = batchnorm_statistics(self.model)
        adapt_batchnorm(self.model, batches)
        rounds = SCALER_ITERATIONS if balanced else 0
        posterior = None
        for round_ in range(1, rounds + 1):
            posterior = np.concatenate(
                [np.asarray(self.model(b, training=False), np.float64) for b in batches()]
            )
            echo(f"AdaBN round {round_}: predicted class shares {shares(posterior)}")
            adapt_batchnorm(self.model, batches, class_balanced_weights(posterior))
        shifts = batchnorm_shifts(before, self.model)
        echo(
            f"AdaBN: {len(shifts)} BatchNorm layers; means moved "
            f"{np.mean(list(shifts.values())):.3f} sd on average"
        )
        weighting = "class-balanced" if balanced else "pooled"
        return [
            {
                "part": "batchnorm",
                "method": "AdaBN (Li et al. 2016): moving mean and variance of every "
                f"BatchNorm layer re-estimated on the lab's cells, layer by layer, {weighting}",
                "weighting": weighting,
                "rounds": rounds,
                "layers": len(shifts),
                "mean_shift_sd": shifts,
                **(
                    {}
                    if posterior is None
                    else {"predicted_shares": posterior.mean(axis=0).round(4).tolist()}
                ),
            }
        ]

    def save(self, path: Path) -> None:
        from wbc.core.manifest import atomic_path

        with atomic_path(Path(path)) as tmp:
            self.model.save(tmp)

    export_formats = ("onnx", "tflite", "savedmodel")

    def uint8_model(self):
        """The model behind a uint8 input and the /255 scaling, so that an exported file takes
        image pixels as they are and its consumer needs no scaling convention."""
        import keras

        height, width = self.image_size
        pixels = keras.Input((height, width, 3), dtype="uint8", name="image")
        scaled = keras.layers.Rescaling(1.0 / 255.0, name="scale")(pixels)
        wrapped = keras.Model(pixels, self.model(scaled), name="wbc")
        wrapped(np.zeros((1, height, width, 3), np.uint8))  # Keras' ONNX export needs a call
        return wrapped

    def export(self, fmt: str, path: Path) -> dict[str, Any]:
        from wbc.models.lite import convert, quiet

        wrapped = self.uint8_model()
        with quiet():  # tf2onnx and the SavedModel writer print the graph's signature on stdout
            if fmt == "onnx":
                wrapped.export(str(path), format="onnx")
            elif fmt == "tflite":
                Path(path).write_bytes(convert(wrapped))
            elif fmt == "savedmodel":
                wrapped.export(str(path), format="tf_saved_model")
            else:
                raise ValueError(f"format must be one of {self.export_formats}, not {fmt!r}")
        return {
            "input": {
                "name": "image",
                "dtype": "uint8",
                "shape": [None, *self.image_size, 3],
                "layout": "NHWC, RGB, 0-255 (scaled by 1/255 inside the model)",
            },
            "output_columns": list(range(self.n_classes)),
        }


# --------------------------------------------------------------------------- Grad-CAM


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
    softmax_head = (
        isinstance(last, keras.layers.Dense)
        and getattr(last.activation, "__name__", "") == "softmax"
    )

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
    """A sub-model from ``model.inputs`` to [the last feature map, output]: the layer feeding
    global pooling when there is one (a residual block's sum), else the last Conv2D."""
    import keras

    layers = list(model.layers)
    target = None
    for layer in layers:
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            target = layer.input
    if target is None:
        target = layers[_last_conv_index(layers)].output
    grad_model = keras.Model(model.inputs, [target, model.outputs[0]])

    def forward(x):
        conv, probs = grad_model(x, training=False)
        return conv, probs, probs

    return forward


def grad_cam(model, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Grad-CAM for one uint8 input ``(1, H, W, 3)``: ``(heat map in [0, 1], probabilities)``.

    The heat map (at the last feature map's resolution) weights each channel of that map by the
    mean gradient of the predicted class's score.
    """
    import keras
    import tensorflow as tf

    from wbc.imaging.preprocess import scale

    sequential = isinstance(model, keras.Sequential)
    forward = _sequential_forward(model) if sequential else _functional_forward(model)

    def gradients(x):
        with tf.GradientTape() as tape:
            conv, scores, probs = forward(x)
            tape.watch(conv)
            score = tf.gather(scores, tf.argmax(probs[0]), axis=1)
        return conv, tape.gradient(score, conv), probs

    if not sequential:
        # Eagerly, oneDNN's gradient through the residual CNN's blocks corrupts memory
        # (TF 2.21: a segfault or a malloc assertion); traced as a graph it is correct.
        gradients = tf.function(gradients)
    x = scale(tf.constant(np.asarray(batch, dtype=np.uint8)))
    conv, grads, probs = gradients(x)
    if grads is None:
        raise DataError("cannot compute Grad-CAM gradients for this model")
    weights = tf.reduce_mean(grads, axis=(0, 1, 2))
    cam = tf.nn.relu(tf.reduce_sum(conv[0] * weights, axis=-1)).numpy()
    peak = float(cam.max()) if cam.size else 0.0
    cam = cam / peak if peak > 0 else np.zeros_like(cam)
    return cam.astype(np.float32), np.asarray(probs[0], dtype=np.float64)


# --------------------------------------------------------------------------- the family


class KerasFamily(Family):
    """The training loop and loading that every Keras family shares."""

    model_file = "model.keras"
    export_modules = {"onnx": ("tf2onnx",)}  # Keras 3's ONNX exporter
    last_file = "last.keras"

    def __init__(self, config: Config):
        # TensorFlow loads with a Keras family, quietly, and only then: its import costs
        # seconds, which the features family (the default) never needs to pay.
        import_tensorflow()
        super().__init__(config)

    # What a subclass provides ----------------------------------------------------------
    def build(self, n_classes: int):
        raise NotImplementedError

    def compile(self, model, steps_per_epoch: int) -> None:
        raise NotImplementedError

    def online_augment(self) -> dict[str, Any]:
        """``make_feed`` options that vary the training images every epoch."""
        return {"flips": self.config.train.random_flips}

    def batch_size(self) -> int:
        return self.config.train.batch_size

    # Loading ----------------------------------------------------------------------------
    def load(self, path: Path, classes: Sequence[str]) -> Classifier:
        model = load_model_file(path)
        try:
            input_shape = tuple(model.inputs[0].shape)
            output_units = int(model.outputs[0].shape[-1])
        except (AttributeError, IndexError, TypeError):
            raise ModelError(f"{path}: the model has no single image input and output") from None
        if len(input_shape) != 4 or tuple(input_shape[1:3]) != tuple(self.input_size()):
            raise ModelError(
                f"{path}: model input {input_shape[1:]} does not match the run's input size "
                f"{list(self.input_size())} ({self.size_key} in config.yaml)"
            )
        if input_shape[3] != 3:
            raise ModelError(f"{path}: model expects {input_shape[3]} channels, not RGB")
        if output_units != len(classes):
            raise ModelError(
                f"{path}: model has {output_units} outputs but classes.json names "
                f"{len(classes)} classes"
            )
        return KerasClassifier(model, path)

    size_key = "train.image_size"

    @staticmethod
    def check_file(path: Path) -> None:
        check_archive(Path(path))

    # Training ---------------------------------------------------------------------------
    def fit(self, job: FitJob) -> FitResult:
        import keras
        import tensorflow as tf

        from wbc.core import runfolder
        from wbc.imaging.feeds import make_feed
        from wbc.models import training as tr

        config, echo, out_dir = job.config, job.echo, Path(job.run_dir)
        tc = config.train
        dist = tr.make_strategy(job.strategy, echo)
        keras.utils.set_random_seed(config.seed)
        image_size = self.input_size()
        common = dict(
            image_size=image_size,
            batch_size=self.batch_size(),
            seed=config.seed,
            cache=tc.cache,
            feed=tc.feed,
            echo=echo,
            spec=job.spec,
        )
        echo(
            f"loading {job.train_dir} and {job.test_dir} ({tc.feed} feed"
            f"{', cached in memory' if tc.cache and tc.feed == 'tfdata' else ''})"
        )
        train_feed = make_feed(
            job.train_dir,
            training=True,
            steps_per_epoch=tc.steps_per_epoch,
            jitter=config.color,
            **self.online_augment(),
            **common,
        )
        classes = train_feed.classes
        if job.resuming and (out_dir / "classes.json").is_file():
            old = runfolder.read_classes(out_dir / "classes.json")
            if old != classes:
                raise DataError(f"{job.train_dir}: classes {classes} differ from the run's {old}")
        val_feed = make_feed(job.test_dir, training=False, classes=classes, **common)
        counts = train_feed.class_counts
        echo(
            f"train: {train_feed.n_images} images, test: {val_feed.n_images} images, classes: "
            + ", ".join(f"{c} {n}" for c, n in zip(classes, counts))
        )
        if tr.is_chief():
            runfolder.write_classes(classes, out_dir / "classes.json")

        steps = train_feed.steps_per_epoch or math.ceil(train_feed.n_images / self.batch_size())
        with dist.scope():
            model = self.build(len(classes))
            frozen = tr.freeze_layers(model, tc.freeze)  # before compile; only with --init
            if frozen:
                echo(f"train.freeze {tc.freeze}: frozen layers {', '.join(frozen)}")
            self.compile(model, steps)
            # Where to start: the newest whole backup generation (resume) or epoch 0.
            generation = checkpoint.restore(model, out_dir, echo) if job.resuming else None
            done = generation.epochs if generation else 0
            if job.init_model is not None and not done:
                load_initial_weights(model, Path(job.init_model), classes, echo)
                echo(f"initial weights from {job.init_model}")
        checkpoint.discard_after(out_dir, done)
        prior = generation.rows if generation else []
        history_path = out_dir / "history.csv"
        if tr.is_chief() and (prior or history_path.exists()):
            runfolder.write_history_rows(history_path, prior)
        if job.resuming:
            echo(
                f"resuming {out_dir} after epoch {done} of {tc.epochs}"
                if done
                else f"resuming {out_dir}: no finished epoch in backup/, starting at epoch 1"
            )

        patience = tr.PatienceTracker(tc.patience)
        total = sum(counts)
        shares = [c / total for c in counts]
        # The loss of always answering the class shares: ln(n) for (nearly) balanced classes.
        entropy = -sum(s * math.log(s) for s in shares if s > 0)
        reference = (
            math.log(len(classes))
            if tc.class_weight == "balanced" or math.log(len(classes)) - entropy < 0.01
            else entropy
        )
        collapse = tr.CollapseDetector(len(classes), max(shares), tc.collapse_epochs, reference)
        stop_before = False
        for row in prior:
            stop_before = patience.update(row["epoch"], row["val_loss"]) or stop_before
            collapse.update(row["loss"], row["accuracy"])
        if done and tr.is_chief():
            # A kill after the commit but before these were written: mend them from the backup.
            if patience.best_epoch == done - 1:
                tr.save_model(model, out_dir / self.model_file)
            tr.save_model(model, out_dir / self.last_file)

        class_weight = tr.balanced_class_weights(counts) if tc.class_weight == "balanced" else None
        log = tr.run_callback(
            keras, out_dir, prior, patience, collapse, echo, write=True, total=tc.epochs
        )
        verbose = 1 if sys.stdout.isatty() else 2
        from wbc.models.tensorboard import keras_callbacks

        board = keras_callbacks(out_dir, val_feed.data, classes) if tr.is_chief() else []
        if done >= tc.epochs:
            echo(f"{out_dir}: all {tc.epochs} epochs already done; evaluating")
        elif stop_before:
            echo(
                f"{out_dir}: stopped early before (no val_loss improvement for {tc.patience} "
                "epochs); evaluating"
            )
            log.stopped_early = True
        else:
            echo(
                f"training {model.count_params():,} parameters ({self.name}) for epochs "
                f"{done + 1}..{tc.epochs} (batch {self.batch_size()}, "
                f"{self.optimizer_words()}) -> {out_dir}"
            )
            try:
                model.fit(
                    train_feed.data,
                    validation_data=val_feed.data,
                    epochs=tc.epochs,
                    initial_epoch=done,
                    steps_per_epoch=train_feed.steps_per_epoch,
                    class_weight=class_weight,
                    shuffle=False,  # the feed shuffles, with the seed
                    callbacks=[log, *board, *job.callbacks],
                    verbose=verbose,
                )
            except tf.errors.ResourceExhaustedError:
                raise MemoryError from None
            except (ValueError, TypeError) as exc:
                if job.strategy == "multiworker" and tr.cluster_workers() > 1:
                    reason = str(exc).strip().splitlines()[0][:160]
                    raise ConfigError(
                        f"--strategy multiworker: Keras {keras.__version__}'s fit failed across "
                        f"{tr.cluster_workers()} workers ({reason}); Keras 3 does not yet train "
                        "with MultiWorkerMirroredStrategy over several workers "
                        "(keras-team/keras#20585); use --strategy mirrored on one machine"
                    ) from None
                raise

        model_file = self.model_file
        if not (out_dir / model_file).is_file():
            if not (out_dir / self.last_file).is_file():
                raise ModelError(f"{out_dir}: no model was saved (did any epoch finish?)")
            echo("warning: val_loss was never finite; scoring last.keras instead of model.keras")
            model_file = self.last_file
        rows = log.rows
        best = (
            "no finite val_loss"
            if patience.best_epoch is None
            else f"best val_loss {patience.best:.4f} at epoch "
            f"{tr.human_epoch(patience.best_epoch, tc.epochs)}"
        )
        same = model_file == self.last_file or (
            patience.best_epoch is not None and rows and patience.best_epoch == rows[-1]["epoch"]
        )
        return FitResult(
            classes=list(classes),
            model_file=model_file,
            n_train=train_feed.n_images,
            last_file=None if same else self.last_file,
            history=rows,
            facts=dict(
                best_epoch=patience.best_epoch,
                best_val_loss=None if patience.best_epoch is None else patience.best,
                stopped_early=bool(log.stopped_early),
                collapsed=bool(collapse.collapsed),
                collapse_warned=bool(collapse.warned),
                feed=tc.feed,
            ),
            skipped=list(train_feed.bad),
            done=f"{len(rows)} epoch{'s' if len(rows) != 1 else ''}",
            notes=(
                (" (stopped early)" if log.stopped_early else "")
                + (" (COLLAPSED)" if collapse.collapsed else "")
                + f", {best}"
            ),
        )

    def optimizer_words(self) -> str:
        raise NotImplementedError
