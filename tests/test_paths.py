import pytest

from drllm.core.paths import LayerPath, PathError


def test_default_and_counts_round_trip():
    path = LayerPath((0, 1, 3, 4, 4, 5), 6)
    assert path.counts() == [1, 1, 0, 1, 2, 1]
    assert LayerPath.from_counts(path.counts()) == path
    assert LayerPath.default(3).layers == (0, 1, 2)
    assert len(path) == 6 and path.unique_layers == 5


def test_string_form_round_trip():
    path = LayerPath((0, 0, 2), 3)
    assert str(path) == "0-0-2"
    assert LayerPath.parse("0-0-2", 3) == path
    assert LayerPath.parse("", 3).layers == ()


@pytest.mark.parametrize("layers, message", [
    ((0, 2, 1), "step 2: layer 1 comes after layer 2"),
    ((0, 0, 0), "step 2: layer 0 runs 3 times"),
    ((0, 7), "step 1: layer 7 is outside 0..3"),
    ((-1,), "step 0: layer -1 is outside"),
])
def test_invalid_paths_name_the_offending_step(layers, message):
    with pytest.raises(PathError, match=message):
        LayerPath(layers, 4)


def test_invalid_counts_and_strings():
    with pytest.raises(PathError, match="count for layer 1 is 3"):
        LayerPath.from_counts([1, 3])
    with pytest.raises(PathError, match="not '-'-separated"):
        LayerPath.parse("0,1", 2)


def test_common_prefix():
    assert LayerPath((0, 1, 2, 3), 4).common_prefix((0, 1, 3)) == 2
