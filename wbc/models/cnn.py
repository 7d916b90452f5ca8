"""The ``cnn`` family: a small residual CNN, trained from scratch on square WBC crops.

Why this shape: the study's CNN (four plain convolutions, a flattened 16x6x16 map, RMSprop at
its default rate) either collapses or overfits leak-free. A residual network with normalisation
trains stably from scratch on a few hundred cells, and global average pooling makes it care
about what is in the crop rather than where. No pretrained weights can be downloaded here, so
it stays small enough to train on 2 cores in minutes:

    stem    Conv3x3(w0) - norm - ReLU - MaxPool2            (64x64 -> 32x32)
    stage i residual block(s) of width w_i, stride 2 from the second stage on
            (Conv3x3 - norm - ReLU - Conv3x3 - norm) + shortcut (1x1 conv - norm when the
            shape changes), ReLU
    head    GlobalAveragePooling - Dropout(0.2) - Dense(n_classes, softmax)

With the defaults (64-pixel input, widths 32/64/128) that is ~290k parameters and ~50 M
multiply-adds per cell. Training: AdamW with a linear warm-up then cosine decay to zero over
``train.epochs`` (no early stopping needed: the last epoch is the model), label smoothing, and
online random 90-degree rotations and flips (a cell has no "up"), optionally mixup.
"""

from __future__ import annotations

from typing import Any

from wbc.models.keras_family import KerasFamily
from wbc.models.registry import register_family

NORMALIZATION_GROUPS = 8


def build_resnet(cnn, image_size: tuple[int, int], n_classes: int):
    """The network above for ``cnn`` (a ``CnnConfig``): an uncompiled functional model."""
    import keras
    from keras import layers

    def norm(name: str):
        if cnn.normalization == "group":
            return layers.GroupNormalization(NORMALIZATION_GROUPS, name=name)
        return layers.BatchNormalization(name=name)

    def conv(filters: int, kernel: int, strides: int, name: str):
        return layers.Conv2D(
            filters,
            kernel,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            name=name,
        )

    inputs = keras.Input(shape=(*image_size, 3), name="image")
    x = conv(cnn.widths[0], 3, 1, "stem_conv")(inputs)
    x = layers.ReLU(name="stem_relu")(norm("stem_norm")(x))
    x = layers.MaxPooling2D(2, name="stem_pool")(x)
    for stage, width in enumerate(cnn.widths):
        for block in range(cnn.blocks):
            strides = 2 if stage > 0 and block == 0 else 1
            name = f"s{stage + 1}b{block + 1}"
            shortcut = x
            y = conv(width, 3, strides, f"{name}_conv1")(x)
            y = layers.ReLU(name=f"{name}_relu1")(norm(f"{name}_norm1")(y))
            y = norm(f"{name}_norm2")(conv(width, 3, 1, f"{name}_conv2")(y))
            if strides != 1 or shortcut.shape[-1] != width:
                shortcut = norm(f"{name}_short_norm")(
                    conv(width, 1, strides, f"{name}_short")(shortcut)
                )
            x = layers.ReLU(name=f"{name}_out")(layers.Add(name=f"{name}_add")([y, shortcut]))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    x = layers.Dropout(0.2, name="dropout")(x)
    outputs = layers.Dense(n_classes, activation="softmax", name="probabilities")(x)
    return keras.Model(inputs, outputs, name="wbc_resnet")


@register_family
class CnnFamily(KerasFamily):
    """The residual CNN with its own optimiser, schedule and online augmentation."""

    name = "cnn"
    description = (
        "a small residual CNN trained from scratch (AdamW, cosine decay, label smoothing, "
        "online rotations and flips)"
    )
    size_key = "model.cnn.image_size"

    def input_size(self) -> tuple[int, int]:
        side = self.config.model.cnn.image_size
        return (side, side)

    def build(self, n_classes: int):
        return build_resnet(self.config.model.cnn, self.input_size(), n_classes)

    def compile(self, model, steps_per_epoch: int) -> None:
        import keras

        cnn, epochs = self.config.model.cnn, self.config.train.epochs
        warmup = min(cnn.warmup_epochs, max(0, epochs - 1)) * steps_per_epoch
        schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=cnn.learning_rate / 10 if warmup else cnn.learning_rate,
            decay_steps=max(1, epochs * steps_per_epoch - warmup),
            warmup_target=cnn.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(learning_rate=schedule, weight_decay=cnn.weight_decay),
            loss=keras.losses.CategoricalCrossentropy(label_smoothing=cnn.label_smoothing),
            metrics=["accuracy"],
        )

    def online_augment(self) -> dict[str, Any]:
        cnn = self.config.model.cnn
        return {
            "flips": cnn.rotations or self.config.train.random_flips,
            "rotations": cnn.rotations,
            "mixup": cnn.mixup,
        }

    def optimizer_words(self) -> str:
        cnn = self.config.model.cnn
        return f"AdamW lr {cnn.learning_rate:g} cosine, label smoothing {cnn.label_smoothing:g}" + (
            f", mixup {cnn.mixup:g}" if cnn.mixup else ""
        )
