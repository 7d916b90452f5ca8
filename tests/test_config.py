import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from wbc.core.config import load_config, parse_override, read_yaml
from wbc.core.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_match_the_study():
    config = load_config()
    assert config.augment.per_class == 3000
    assert config.augment.rotation_range == 180
    assert config.augment.shear_range == 0.15
    assert (config.subsets.small, config.subsets.medium, config.subsets.full) == (300, 900, 3000)
    assert config.split.protocol == "grouped"
    assert config.train.image_size == (120, 160)
    assert config.rename.classes == ()


@pytest.mark.parametrize(
    "path",
    sorted(
        p for p in (ROOT / "configs").glob("*.yaml") if p.name != "grid.yaml"
    ),  # a `wbc tune` grid
    ids=lambda p: p.name,
)
def test_shipped_configs_load(path):
    config = load_config(path)
    assert config.seed == 42


def test_shipped_default_yaml_equals_builtin_defaults():
    assert load_config(ROOT / "configs" / "default.yaml") == load_config()


def test_report_config_is_the_study_protocol():
    config = load_config(ROOT / "configs" / "report.yaml")
    assert config.split.protocol == "report"
    assert config.crop.mode == "none"


def test_unknown_key_suggests_the_closest(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("augment:\n  per_clas: 10\n")
    with pytest.raises(ConfigError, match=r"augment.per_clas.*did you mean 'per_class'"):
        load_config(path)


def test_unknown_section_suggests_the_closest():
    with pytest.raises(ConfigError, match=r"did you mean 'augment'"):
        load_config(overrides=["augmnet.per_class=3"])


def test_overrides_apply_in_order_and_coerce():
    config = load_config(
        overrides=[
            "augment.per_class=40",
            "augment.per_class=50",
            "train.image_size=[32, 40]",
            "train.patience=null",
            "split.protocol=report",
        ]
    )
    assert config.augment.per_class == 50
    assert config.train.image_size == (32, 40)
    assert config.train.patience is None
    assert config.split.protocol == "report"


@pytest.mark.parametrize(
    "override, message",
    [
        ("augment.per_class=many", "expected an integer"),
        ("augment.horizontal_flip=3", "expected true or false"),
        ("split.protocol=random", "not one of"),
        ("train.steps_per_epoch=0", "steps_per_epoch"),
        ("split.test_fraction=1.5", "test_fraction"),
        ("augment.per_class", "expected section.key=value"),
    ],
)
def test_bad_values_are_clear_errors(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_invalid_yaml_names_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("augment: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML"):
        read_yaml(path)


def test_missing_config_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Path("/nonexistent/config.yaml"))


def test_config_is_frozen():
    config = load_config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.seed = 1  # type: ignore[misc]


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=10**6))
def test_integer_overrides_round_trip(value):
    assert load_config(overrides=[f"augment.per_class={value}"]).augment.per_class == value


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=30))
def test_arbitrary_override_text_never_crashes_unexpectedly(text):
    try:
        load_config(overrides=[text])
    except ConfigError:
        pass


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.sampled_from(["seed", "augment", "per_class", "train", "x"]), min_size=1, max_size=4
    ),
    st.integers(),
)
def test_parse_override_nests_dotted_keys(parts, value):
    nested = parse_override(".".join(parts) + f"={value}")
    for part in parts[:-1]:
        nested = nested[part]
    assert nested[parts[-1]] == value


@pytest.mark.parametrize(
    "override, message",
    [
        ("color.hed_jitter=1.0", "hed_jitter"),
        ("color.hed_jitter=-0.1", "hed_jitter"),
        ("color.hed_shift=1.5", "hed_shift"),
        ("color.scale_jitter=0.6", "scale_jitter"),
        ("color.scale_jitter=-0.1", "scale_jitter"),
        ("color.stain_strength=-0.5", "stain_strength"),
        ("color.stain_strength=4", "stain_strength"),
        ("color.randstainna=3", "expected true or false"),
    ],
)
def test_stain_augmentation_keys_reject_out_of_range_values(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(overrides=[override])


def test_stain_augmentation_defaults_to_scale_jitter_only_and_accepts_its_range():
    color = load_config().color
    assert (color.hed_jitter, color.hed_shift, color.randstainna, color.scale_jitter) == (
        0.0,
        0.0,
        False,
        0.2,
    )
    on = load_config(
        overrides=["color.hed_jitter=0.2", "color.hed_shift=0.2", "color.scale_jitter=0.5"]
    ).color
    assert (on.hed_jitter, on.hed_shift, on.scale_jitter) == (0.2, 0.2, 0.5)
