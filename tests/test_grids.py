import json

import pytest

from nnsight_persona.core.errors import GridError
from nnsight_persona.core.grids import CONDITIONS, grid_from_dict, list_grids, load_grid

GOOD = {
    "baseline": {"persona": "a thoughtful person", "task": "Give advice."},
    "personas": {"yoda": "Yoda", "marx": "Karl Marx"},
    "tasks": {"haiku": "Write a haiku.", "book": "Recommend a book."},
}


def test_bundled_grids_have_the_papers_cell_counts():
    assert {"xu2026-short", "xu2026-long"} <= set(list_grids())
    assert len(load_grid("xu2026-short").cells) == 12
    long = load_grid("xu2026-long")
    assert len(long.cells) == 48
    assert set(long.markers) == set(long.personas)


def test_four_conditions_swap_persona_and_task():
    g = grid_from_dict(GOOD)
    cell = g.cell("yoda__haiku")
    texts = {c: g.user_text(cell, c) for c in CONDITIONS}
    assert texts["BB"] == "As a thoughtful person, Give advice."
    assert texts["XB"] == "As Yoda, Give advice."
    assert texts["BY"] == "As a thoughtful person, Write a haiku."
    assert texts["XY"] == "As Yoda, Write a haiku."
    assert g.cell_labels == ["yoda__haiku", "yoda__book", "marx__haiku", "marx__book"]


def test_yaml_and_json_files_load_the_same(tmp_path):
    import yaml

    (tmp_path / "g.yaml").write_text(yaml.safe_dump(GOOD, sort_keys=False))
    (tmp_path / "g.json").write_text(json.dumps(GOOD))
    a, b = load_grid(tmp_path / "g.yaml"), load_grid(str(tmp_path / "g.json"))
    assert a.cells == b.cells and a.personas == b.personas


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.pop("tasks"), "missing key 'tasks'"),
        (lambda d: d.pop("baseline"), "missing key 'baseline'"),
        (lambda d: d.update(baseline={"persona": "x"}), "exactly the keys 'persona' and 'task'"),
        (lambda d: d.update(personas={}), "'personas' must be a non-empty mapping"),
        (lambda d: d["personas"].update({"a__b": "x"}), "key 'a__b' is not allowed"),
        (lambda d: d["tasks"].update({"t": ""}), "tasks['t'] must be a non-empty string"),
        (lambda d: d.update(prompt_template="{task} only"), "containing {persona} and {task}"),
        (lambda d: d.update(prompt_template="{task}, as {persona}"), "{persona} before {task}"),
        (lambda d: d.update(markers={"nobody": ["x"]}), "unknown persona(s) ['nobody']"),
        (lambda d: d.update(markers={"yoda": []}), "markers['yoda'] must be a non-empty list"),
        (lambda d: d.update(colour="blue"), "unknown key(s) ['colour']"),
    ],
)
def test_bad_grids_name_the_problem(tmp_path, mutate, message):
    data = json.loads(json.dumps(GOOD))
    mutate(data)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises(GridError) as err:
        load_grid(path)
    assert message in str(err.value)
    assert str(path) in str(err.value)


def test_unknown_grid_name_lists_the_bundled_ones():
    with pytest.raises(GridError) as err:
        load_grid("no-such-grid")
    assert "no-such-grid" in str(err.value) and "xu2026-short" in str(err.value)


def test_unknown_cell_and_condition():
    g = grid_from_dict(GOOD)
    with pytest.raises(GridError, match="no cell 'yoda__poem'"):
        g.cell("yoda__poem")
    with pytest.raises(GridError, match="unknown condition 'YX'"):
        g.user_text(g.cells[0], "YX")
