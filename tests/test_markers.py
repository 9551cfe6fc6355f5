"""The behavioural marker test: scoring rules, and generation under edits against plain hooks."""

import pytest
import torch

from nnsight_persona.errors import SelectionError
from nnsight_persona.experiments import capture, markers
from nnsight_persona.grids import grid_from_dict, load_grid
from nnsight_persona.prompts import render_prompt
from nnsight_persona.scoring import marker_counts, markers_found
from reference import greedy_with_patch, load_plain


def test_scoring_follows_the_papers_rules():
    text = "A single point of failure (SPOF). Scalability: fine. Clean code; indemnification; fault-tolerant."
    markers_ = ["SPOF", "single point of failure", "scalability", "lean", "indemnif*", "fault-tolerant", "indemnif"]
    assert markers_found(text, markers_) == ["SPOF", "single point of failure", "scalability", "indemnif*", "fault-tolerant"]
    assert marker_counts("Iterate, iterate! ITERATE.", ["iterate"]) == {"iterate": 3}
    assert markers_found("the classical french sauté", ["French", "sauté", "classic"]) == ["French", "sauté"]
    # Multi-word markers match as substrings, single words only on word boundaries.
    assert markers_found("unfeel heardness", ["feel heard", "heard"]) == ["feel heard"]


def test_default_layer_is_the_papers():
    assert markers.default_layer(26) == 14


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_generation_under_edits_equals_plain_hooks(loaded_models, tiny_dirs, tiny_grid_file, patch_steps):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    layer = 2
    spec = markers.MarkersSpec(grid="tiny", layer=layer, n_tokens=12, patch_steps=patch_steps, batch_size=5)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(layer,), positions=("p_last",)), progress=False)
    ds = markers.run(loaded, grid, spec, capture_ds=cap, progress=False)
    vectors = markers.edit_vectors(cap, layer, "p_last", grid.cells)
    plain = load_plain(tiny_dirs["llama"])
    tok = loaded.tokenizer
    for ci, cell in enumerate(grid.cells):
        xy = render_prompt(tok, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        bare = render_prompt(tok, grid.tasks[cell.task])
        expected = {
            "clean": greedy_with_patch(plain, list(xy.ids), 12, loaded.eos_ids, layer, xy.p_last),
            "bare": greedy_with_patch(plain, list(bare.ids), 12, loaded.eos_ids, layer, bare.p_last),
        }
        for cond in markers.EDITED:
            value = torch.from_numpy(vectors[cond][ci])
            delta = value - torch.from_numpy(vectors["clean"][ci]) if patch_steps == "all" else None
            expected[cond] = greedy_with_patch(plain, list(xy.ids), 12, loaded.eos_ids, layer, xy.p_last, value, delta)
        for cond, ids in expected.items():
            assert str(ds.text.sel(cell=cell.label, condition=cond).item()) == tok.decode(ids, skip_special_tokens=True), (cell.label, cond)


def test_flags_agree_with_the_text(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    ds = markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, n_tokens=8), progress=False)
    assert ds.attrs["completed"] == 1 and int(ds.generated.sum()) == ds.text.size
    table = markers.summary_table(ds)
    ds = ds.isel(model=0)
    for cell in grid.cells:
        for cond in ds.condition.values:
            text = str(ds.text.sel(cell=cell.label, condition=cond).item())
            own = markers_found(text, grid.markers[cell.persona])
            assert int(ds.any_marker.sel(cell=cell.label, condition=cond)) == int(bool(own))
            assert int(ds.n_distinct.sel(cell=cell.label, condition=cond)) == len(own)
    assert [row[0] for row in table] == list(markers.CONDITIONS) and all(row[2] == 4 for row in table)


def test_bad_markers_input(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    no_markers = grid_from_dict({
        "baseline": {"persona": "a thoughtful person", "task": "Give advice."},
        "personas": {"yoda": "Yoda"}, "tasks": {"haiku": "Write a haiku."},
    }, name="plain")
    with pytest.raises(SelectionError, match="grid 'plain' has no markers"):
        markers.run(loaded, no_markers, markers.MarkersSpec(grid="plain", layer=1), progress=False)
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match=r"unknown marker condition\(s\) \['steered'\]"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, conditions=("clean", "steered")), progress=False)
    with pytest.raises(SelectionError, match="unknown --patch-steps 'some'"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, patch_steps="some"), progress=False)
    with pytest.raises(SelectionError, match=r"layer 9 out of range; allowed: 0..4"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=9), progress=False)
