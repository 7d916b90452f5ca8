"""The ``study`` family: the study's CNN, as a pure function of its parameters.

Default parameters give exactly the study's final model for 120x160x3 input and 4 classes:
Conv2D(8)-Pool-Conv2D(16)-Pool-Conv2D(16)-Pool-Conv2D(16)-Flatten-Dense(32, L2 0.01)-Dense(4),
96,308 parameters (its Figure 9).
"""

from __future__ import annotations

from wbc.core.config import ModelConfig
from wbc.models.keras_family import KerasFamily
from wbc.models.registry import register_family

# Where the study's dropout variants put Dropout layers, relative to the first Dense layer.
DROPOUT_LAYOUTS = {
    "none": (False, False),
    "before_dense": (True, False),
    "after_dense": (False, True),
    "2_v2": (True, True),  # the study's "2_v2": before and after the first dense layer
}


def build_model(params: ModelConfig, image_size: tuple[int, int] = (120, 160), n_classes: int = 4):
    """A compiled-free ``keras.Sequential`` for ``image_size`` (height, width) RGB input."""
    import keras
    from keras import layers, regularizers

    if params.dropout not in DROPOUT_LAYOUTS:
        raise ValueError(f"model.dropout: unknown layout '{params.dropout}'")
    before, after = DROPOUT_LAYOUTS[params.dropout]
    height, width = image_size
    check_input_size(params, image_size)
    stack: list = [keras.Input(shape=(height, width, 3), name="image")]
    for index, filters in enumerate(params.filters):
        if index > 0:
            stack.append(layers.MaxPooling2D(2, name=f"pool{index}"))
        stack.append(
            layers.Conv2D(filters, params.kernel_size, activation="relu", name=f"conv{index + 1}")
        )
    stack.append(layers.Flatten(name="flatten"))
    if before:
        stack.append(layers.Dropout(params.dropout_rate, name="dropout_before_dense"))
    stack.append(
        layers.Dense(
            params.dense_units,
            activation="relu",
            kernel_regularizer=regularizers.l2(params.l2) if params.l2 > 0 else None,
            name="dense",
        )
    )
    if after:
        stack.append(layers.Dropout(params.dropout_rate, name="dropout_after_dense"))
    stack.append(layers.Dense(n_classes, activation="softmax", name="probabilities"))
    return keras.Sequential(stack, name="wbc_cnn")


def feature_size(params: ModelConfig, image_size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of the last convolution's output ('valid' convs, 2x2 pooling between)."""
    height, width = image_size
    shrink = params.kernel_size - 1
    for index in range(len(params.filters)):
        if index > 0:
            height, width = height // 2, width // 2
        height, width = height - shrink, width - shrink
    return height, width


def check_input_size(params: ModelConfig, image_size: tuple[int, int]) -> None:
    """A ConfigError when ``image_size`` is too small for the convolution stack."""
    from wbc.core.errors import ConfigError

    height, width = feature_size(params, image_size)
    if height < 1 or width < 1:
        raise ConfigError(
            f"train.image_size {image_size[0]}x{image_size[1]} is too small for "
            f"{len(params.filters)} conv layers of kernel {params.kernel_size} "
            "(use a larger image_size or fewer model.filters)"
        )


def make_optimizer(name: str, learning_rate: float):
    import keras

    optimizers = {
        "rmsprop": keras.optimizers.RMSprop,
        "adam": keras.optimizers.Adam,
        "nadam": keras.optimizers.Nadam,
    }
    if name not in optimizers:
        raise ValueError(f"train.optimizer: unknown optimizer '{name}'")
    return optimizers[name](learning_rate=learning_rate)


@register_family
class StudyFamily(KerasFamily):
    """The study's CNN, exactly: ``build_model`` with ``model.*``, the study's optimiser
    (``train.optimizer``, ``train.learning_rate``) and plain categorical cross-entropy, on
    ``train.image_size`` inputs (120x160 by default)."""

    name = "study"
    description = "the study's 4-convolution CNN (96,308 parameters at 120x160, RMSprop, L2 0.01)"

    def input_size(self) -> tuple[int, int]:
        return tuple(self.config.train.image_size)

    def build(self, n_classes: int):
        return build_model(self.config.model, self.input_size(), n_classes)

    def compile(self, model, steps_per_epoch: int) -> None:
        tc = self.config.train
        model.compile(
            optimizer=make_optimizer(tc.optimizer, tc.learning_rate),
            loss="categorical_crossentropy",
            metrics=["accuracy"],
        )

    def optimizer_words(self) -> str:
        tc = self.config.train
        return f"{tc.optimizer} lr {tc.learning_rate:g}"
