import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wbc.core.errors import DataError
from wbc.data.labels import parse_categories, read_labels


def write(tmp_path, data: bytes, name="labels.csv"):
    path = tmp_path / name
    path.write_bytes(data)
    return path


def test_real_quirks_crlf_index_column_no_final_newline(tmp_path):
    path = write(
        tmp_path, b',Image,Category\r\n,0,NEUTROPHIL\r\n,1,\r\n,2,"NEUTROPHIL, EOSINOPHIL"'
    )
    rows = read_labels(path)
    assert [r.image_id for r in rows] == [0, 1, 2]
    assert rows[0].categories == ("NEUTROPHIL",)
    assert rows[1].categories == ()
    assert rows[2].categories == ("NEUTROPHIL", "EOSINOPHIL")
    assert rows[2].line == 4


def test_bom_and_semicolons(tmp_path):
    path = write(tmp_path, "\ufeffImage;Category\n3;monocyte\n".encode("utf-8"))
    rows = read_labels(path)
    assert rows[0].image_id == 3 and rows[0].categories == ("MONOCYTE",)


def test_ids_that_are_not_numbers_are_kept_as_raw_text(tmp_path):
    path = write(tmp_path, b",Image,Category\n,../../etc,NEUTROPHIL\n,7a,MONOCYTE\n,-1,MONOCYTE\n")
    rows = read_labels(path)
    assert [r.image_id for r in rows] == [None, None, None]
    assert rows[0].raw_id == "../../etc"


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "empty file"),
        (b"   \n", "empty file"),
        (b",Image,Category\r\n", "header only"),
        (b"id,label\n1,NEUTROPHIL\n", "expected columns 'Image' and 'Category'"),
        (b"\x00\x01\x02binary", "expected"),
    ],
)
def test_unusable_files_raise_one_line_errors(tmp_path, data, message):
    path = write(tmp_path, data)
    with pytest.raises(DataError, match=message) as info:
        read_labels(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="labels file not found"):
        read_labels(tmp_path / "nope.csv")


def test_categories_parsing():
    assert parse_categories(" neutrophil ,EOSINOPHIL,") == ("NEUTROPHIL", "EOSINOPHIL")
    assert parse_categories("") == ()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_data_error(tmp_path, data):
    path = write(tmp_path, data)
    try:
        rows = read_labels(path)
    except DataError as exc:
        assert "\n" not in str(exc)
    else:
        assert all(r.image_id is None or r.image_id >= 0 for r in rows)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.integers(0, 99999),
            st.lists(
                st.sampled_from(["NEUTROPHIL", "EOSINOPHIL", "LYMPHOCYTE", "MONOCYTE", "BASOPHIL"]),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=20,
    ),
    st.sampled_from([",", ";"]),
    st.sampled_from(["\n", "\r\n"]),
    st.booleans(),
)
def test_generated_files_round_trip(tmp_path, rows, sep, newline, bom):
    lines = [f"{sep}Image{sep}Category"]
    for image_id, cats in rows:
        lines.append(f'{sep}{image_id}{sep}"{", ".join(cats)}"')
    text = newline.join(lines)
    path = write(tmp_path, (("\ufeff" if bom else "") + text).encode("utf-8"))
    parsed = read_labels(path)
    assert [(r.image_id, r.categories) for r in parsed] == [(i, tuple(c)) for i, c in rows]
