"""The knockout experiment against an independent mask hook, and its controls."""

import numpy as np
import pytest
import torch

from nnsight_persona.errors import SelectionError
from nnsight_persona.experiments import knockout, markers
from nnsight_persona.grids import load_grid
from nnsight_persona.prompts import render_prompt
from reference import greedy, load_plain, logits_with_mask_knockout, summed_kl

BANDS = ((0, 2), (2, 4), (0, 4))


def test_knockout_kl_equals_independent_mask_hook(loaded_models, tiny_dirs, family, tiny_grid_file):
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    ds = knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, n_tokens=0, batch_size=7), progress=False)
    ds = ds.isel(model=0)
    assert ds.attrs["completed"] == 1 and "any_marker" not in ds
    assert (ds.kl.sel(condition="none").values == 0).all()
    plain = load_plain(tiny_dirs[family])
    for cell in grid.cells:
        p = render_prompt(loaded.tokenizer, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        clean = greedy(plain, list(p.ids), 12, loaded.pad_id)
        seq = list(p.ids) + clean[:9]
        clean_logits = plain(torch.tensor([seq])).logits[0].float()
        for band in BANDS:
            for cond in ("persona", "control"):
                keys = list(range(*p.persona_span)) if cond == "persona" else knockout.control_positions(p, p.persona_span[1] - p.persona_span[0])
                logits = logits_with_mask_knockout(plain, seq, list(range(*band)), p.p_last, keys)
                expected = summed_kl(clean_logits, logits, p.p_last, 10)
                got = float(ds.kl.sel(cell=cell.label, band=f"{band[0]}:{band[1]}", condition=cond))
                assert got == pytest.approx(expected, abs=1e-4), (cell.label, band, cond)


def test_control_has_as_many_keys_outside_the_persona(loaded_models, tiny_grid_file):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    for cell in grid.cells:
        p = render_prompt(loaded.tokenizer, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        n = p.persona_span[1] - p.persona_span[0]
        control = knockout.control_positions(p, n)
        assert not set(control) & set(range(*p.persona_span))
        assert 0 not in control and p.p_last not in control
        assert len(control) == min(n, p.p_user_text_last + 1 - p.persona_span[1] + p.persona_span[0] - 1)


def test_marker_generation_without_knockout_is_the_clean_generation(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    ko = knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=((0, 4),), n_tokens=8,
                                                          queries="generated"), progress=False).isel(model=0)
    mk = markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, n_tokens=8, conditions=("clean",)),
                     progress=False).isel(model=0)
    for cell in grid.cells:
        assert str(ko.text.sel(cell=cell.label, condition="none", band="0:4").item()) == str(mk.text.sel(cell=cell.label, condition="clean").item())
    assert set(np.unique(ko.any_marker.values)) <= {0, 1}


def test_bands_and_bad_input(loaded_models, tiny_grid_file):
    assert knockout.default_bands(26)[-1] == (0, 26) and knockout.default_bands(26)[0] == (0, 6)
    assert knockout.parse_bands("0:2,all", 4) == [(0, 2), (0, 4)]
    with pytest.raises(SelectionError, match="band '3:9' out of range"):
        knockout.parse_bands("3:9", 4)
    with pytest.raises(SelectionError, match="cannot read band 'x'"):
        knockout.parse_bands("x", 4)
    grid = load_grid(tiny_grid_file)
    loaded = loaded_models["llama"]
    with pytest.raises(SelectionError, match=r"unknown --queries 'prompt'"):
        knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, queries="prompt"), progress=False)
    with pytest.raises(SelectionError, match=r"head\(s\) \[9\] out of range"):
        knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, heads=(9,)), progress=False)
