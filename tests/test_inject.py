"""Host injection against a plain-transformers hooks computation, and its invariants."""

import numpy as np
import pytest
import torch

from nnsight_persona.errors import SelectionError
from nnsight_persona.experiments import capture, inject
from nnsight_persona.grids import grid_from_dict, load_grid
from nnsight_persona.prompts import render_prompt
from reference import greedy, hidden_states, load_plain, patched_logits, summed_kl

SETS = ((2,), (1, 2, 3))


def _run(loaded, grid, **kw):
    spec = inject.InjectSpec(grid="tiny", layer_sets=SETS, **kw)
    return inject.run(loaded, grid, spec, progress=False)


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_inject_equals_hooks_reference(loaded_models, tiny_dirs, family, tiny_grid_file, patch_steps):
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    ds = _run(loaded, grid, patch_steps=patch_steps, conditions=("host", "oracle", "cached"), batch_size=5)
    assert ds.attrs["completed"] == 1
    ds = ds.isel(model=0)
    plain = load_plain(tiny_dirs[family])
    tok = loaded.tokenizer
    for cell in grid.cells[:2]:
        p = {c: render_prompt(tok, grid.user_text(cell, c), grid.persona_text(cell, c)) for c in ("BB", "XB", "BY", "XY")}
        clean = greedy(plain, list(p["XY"].ids), 12, loaded.pad_id)
        h = {c: hidden_states(plain, list(p[c].ids) + clean[:2]) for c in p}
        at = lambda c, L: h[c][L][p[c].p_last]
        target_seq, host_seq = list(p["XY"].ids) + clean[:9], list(p["BY"].ids) + clean[:9]
        target = plain(torch.tensor([target_seq])).logits[0].float()
        host = plain(torch.tensor([host_seq])).logits[0].float()
        start_t, start_h = p["XY"].p_last, p["BY"].p_last
        expected_host = summed_kl(target, host, start_t, 10, start_h)
        assert float(ds.kl.sel(cell=cell.label, condition="host").isel(layer_set=0)) == pytest.approx(expected_host, abs=1e-4)
        for si, layer_set in enumerate(SETS):
            for cond in ("oracle", "cached"):
                vec = {L: at("XY", L) if cond == "oracle" else at("XB", L) + at("BY", L) - at("BB", L) for L in layer_set}
                patches = [(L, start_h, vec[L]) for L in layer_set]
                adds = [(L, start_h + 1, vec[L] - at("BY", L)) for L in layer_set] if patch_steps == "all" else []
                logits = patched_logits(plain, host_seq, *patches[0], extra=patches[1:], adds=adds)
                expected = summed_kl(target, logits, start_t, 10, start_h)
                got = float(ds.kl.sel(cell=cell.label, condition=cond).isel(layer_set=si))
                assert got == pytest.approx(expected, abs=1e-4), (cell.label, layer_set, cond)


def test_injecting_h_xy_into_the_xy_prompt_itself_gives_zero(loaded_models, family):
    # A baseline persona equal to the persona makes the host prompt the XY prompt itself.
    grid = grid_from_dict({
        "baseline": {"persona": "Yoda", "task": "Give advice."},
        "personas": {"yoda": "Yoda"}, "tasks": {"haiku": "Write a haiku about Monday mornings."},
    }, name="self")
    ds = _run(loaded_models[family], grid, conditions=("host", "oracle", "cached"))
    assert np.abs(ds.kl.values).max() < 1e-5


def test_controls_norms_and_gap(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    ds = _run(loaded, grid, site_layers=(1, 3))
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(1, 2, 3), positions=("p_last",)), progress=False)
    norm = np.linalg.norm(cap.resid.sel(condition="XY", position="p_last").isel(model=0).values, axis=-1)
    np.testing.assert_allclose(ds.norm_clean.isel(model=0).values, norm, rtol=1e-5)
    kl = ds.kl.isel(model=0)
    np.testing.assert_allclose(ds.gap_closed.isel(model=0).values, 1 - kl.values / kl.sel(condition="host").values[..., None])
    # The rescaled variant has the clean norm; the length-matched host is as long as the target, or a filler short.
    lengths = ds.prompt_length.isel(model=0)
    target, lm = lengths.sel(prompt="target").values, lengths.sel(prompt="length_matched_host").values
    host = lengths.sel(prompt="host").values
    longer = target > host  # persona prompts longer than the host get padded to (nearly) their length
    assert longer.any()
    assert (lm[longer] <= target[longer]).all() and (target[longer] - lm[longer] <= 2).all()
    assert (lm[~longer] == host[~longer]).all()
    assert ds.kl_site.sizes == {"model": 1, "site_layer": 2, "site_position": 4, "cell": 4, "site_condition": 2}
    assert not np.isnan(ds.kl_site.values).any()


def test_layer_sets_scale_with_depth_and_bad_input(loaded_models, tiny_grid_file):
    assert inject.scaled_layer_sets(26)[0] == (14,)
    assert inject.scaled_layer_sets(26)[-1] == tuple(range(6, 23, 2))
    assert inject.parse_layer_sets("2;1-3", 4) == [(2,), (1, 2, 3)]
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match=r"unknown inject condition\(s\) \['steer'\]"):
        _run(loaded_models["llama"], grid, conditions=("host", "steer"))
    with pytest.raises(SelectionError, match=r"layer\(s\) \[7\] out of range"):
        inject.run(loaded_models["llama"], grid, inject.InjectSpec(grid="tiny", layer_sets=((7,),)), progress=False)
