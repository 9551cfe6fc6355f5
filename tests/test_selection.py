import pytest

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.core.selection import paper_layers, parse_layers, parse_positions


def test_paper_layer_grid_matches_the_papers_gemma_layers():
    assert paper_layers(26) == [6, 10, 14, 18, 22]  # Gemma-2-2B, as the protocol lists
    assert all(1 <= L <= 7 for L in paper_layers(8))


def test_layer_lists_ranges_and_keywords():
    assert parse_layers("all", 4, default=[1]) == [0, 1, 2, 3, 4]
    assert parse_layers(None, 4, default=[2, 1]) == [1, 2]
    assert parse_layers("3,1-2,3", 4, default=[]) == [1, 2, 3]
    assert parse_layers("paper", 26, default=[]) == [6, 10, 14, 18, 22]


@pytest.mark.parametrize("value", ["9", "0,5", "x", "1-", ""])
def test_bad_layers_name_value_and_range(value):
    with pytest.raises(SelectionError) as err:
        parse_layers(value, 4, default=[])
    assert "0..4" in str(err.value) or "no layers" in str(err.value)


def test_positions_keep_canonical_order_and_reject_unknown():
    assert parse_positions("g2,p_last") == ["p_last", "g2"]
    with pytest.raises(SelectionError) as err:
        parse_positions("p_last,g3")
    assert "g3" in str(err.value) and "p_user_last" in str(err.value)
