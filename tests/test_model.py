"""The study's CNN: exact size and layer shapes, dropout layouts, optimizers, input-size checks."""

from __future__ import annotations

import dataclasses

import pytest

from wbc.core.config import ModelConfig
from wbc.core.errors import ConfigError
from wbc.models.study import DROPOUT_LAYOUTS, build_model, feature_size, make_optimizer

STUDY_SHAPES = {
    "conv1": (118, 158, 8),
    "pool1": (59, 79, 8),
    "conv2": (57, 77, 16),
    "pool2": (28, 38, 16),
    "conv3": (26, 36, 16),
    "pool3": (13, 18, 16),
    "conv4": (11, 16, 16),
    "flatten": (2816,),
    "dense": (32,),
    "probabilities": (4,),
}


@pytest.fixture(scope="module")
def study_model():
    return build_model(ModelConfig(), (120, 160), 4)


def test_study_model_has_96308_parameters(study_model):
    assert study_model.count_params() == 96_308


def test_study_model_layer_output_shapes(study_model):
    shapes = {layer.name: tuple(layer.output.shape[1:]) for layer in study_model.layers}
    assert shapes == STUDY_SHAPES
    assert tuple(study_model.input_shape) == (None, 120, 160, 3)


def test_study_model_activations_and_l2(study_model):
    dense = study_model.get_layer("dense")
    assert dense.activation.__name__ == "relu"
    assert dense.kernel_regularizer is not None
    assert dense.kernel_regularizer.get_config()["l2"] == pytest.approx(0.01)
    assert study_model.get_layer("probabilities").activation.__name__ == "softmax"
    assert study_model.get_layer("conv1").activation.__name__ == "relu"


@pytest.mark.parametrize("layout", sorted(DROPOUT_LAYOUTS))
def test_dropout_layouts(layout):
    model = build_model(ModelConfig(dropout=layout, dropout_rate=0.3), (120, 160), 4)
    names = [layer.name for layer in model.layers]
    dense = names.index("dense")
    before, after = DROPOUT_LAYOUTS[layout]
    assert (names[dense - 1] == "dropout_before_dense") is before
    assert (names[dense + 1] == "dropout_after_dense") is after
    for layer in model.layers:
        if layer.name.startswith("dropout"):
            assert layer.rate == pytest.approx(0.3)
    assert model.count_params() == 96_308  # dropout adds no parameters


def test_2_v2_is_dropout_around_the_first_dense_layer():
    names = [layer.name for layer in build_model(ModelConfig(dropout="2_v2")).layers]
    assert names[-5:] == [
        "flatten",
        "dropout_before_dense",
        "dense",
        "dropout_after_dense",
        "probabilities",
    ]


def test_unknown_dropout_layout_is_an_error():
    with pytest.raises(ValueError, match="model.dropout"):
        build_model(ModelConfig(dropout="everywhere"))


def test_configurable_sizes_and_classes():
    params = ModelConfig(filters=(4, 8), dense_units=10, l2=0.0)
    model = build_model(params, (32, 40), n_classes=3)
    assert tuple(model.output_shape) == (None, 3)
    assert model.get_layer("dense").kernel_regularizer is None
    assert feature_size(params, (32, 40)) == (13, 17)
    # conv(3*3*3*4+4) + conv(3*3*4*8+8) + dense(13*17*8*10+10) + out(10*3+3)
    assert model.count_params() == 112 + 296 + 17690 + 33


def test_too_small_input_is_a_config_error():
    with pytest.raises(ConfigError, match="too small"):
        build_model(ModelConfig(), (32, 40), 4)


@pytest.mark.parametrize(
    "name, cls", [("rmsprop", "RMSprop"), ("adam", "Adam"), ("nadam", "Nadam")]
)
def test_optimizers(name, cls):
    optimizer = make_optimizer(name, 0.0005)
    assert type(optimizer).__name__ == cls
    assert float(optimizer.learning_rate) == pytest.approx(0.0005)


def test_unknown_optimizer_is_an_error():
    with pytest.raises(ValueError, match="train.optimizer"):
        make_optimizer("sgd", 0.1)


def test_model_config_is_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        ModelConfig().l2 = 0.1  # type: ignore[misc]
