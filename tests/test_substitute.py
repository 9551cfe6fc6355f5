"""Substitution KL agrees with an unbatched plain-transformers hooks computation of the protocol."""

import numpy as np
import pytest
import torch

from nnsight_persona.errors import SelectionError
from nnsight_persona.experiments import capture, substitute
from nnsight_persona.grids import load_grid
from nnsight_persona.prompts import render_prompt
from reference import greedy, hidden_states, load_plain, patched_logits, summed_kl

LAYERS = (0, 2, 4)


def _run(loaded, grid, **kw):
    spec = substitute.SubstituteSpec(grid="tiny", layers=LAYERS, **kw)
    return substitute.run(loaded, grid, spec, progress=False)


def test_substitution_equals_hooks_reference(loaded_models, tiny_dirs, family, tiny_grid_file):
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    ds = _run(loaded, grid, batch_size=13)
    assert ds.attrs["completed"] == 1
    plain = load_plain(tiny_dirs[family])
    tok = loaded.tokenizer
    for ci, cell in enumerate(grid.cells):
        prompts = {c: render_prompt(tok, grid.user_text(cell, c), grid.persona_text(cell, c)) for c in ("BB", "XB", "BY", "XY")}
        clean = greedy(plain, list(prompts["XY"].ids), 12, loaded.pad_id)
        xy = list(prompts["XY"].ids)
        seq = xy + clean[:11]
        clean_logits = plain(torch.tensor([seq])).logits[0].float()
        for pi, pos in enumerate(ds.position.values):
            h = {}
            for c, p in prompts.items():
                states = hidden_states(plain, list(p.ids) + clean[:2])
                h[c] = [s[p.position(str(pos))] for s in states]
            probe = prompts["XY"].position(str(pos))
            # The paper scores probes inside the prompt on the distributions from p_last on.
            start = max(probe, len(xy) - 1)
            for layer in LAYERS:
                dx, dy = h["XB"][layer] - h["BB"][layer], h["BY"][layer] - h["BB"][layer]
                vectors = {
                    "additive": h["BB"][layer] + dx + dy,
                    "oracle": h["XY"][layer],
                    "baseline": h["BB"][layer],
                    "persona_only": h["BB"][layer] + dx,
                    "task_only": h["BB"][layer] + dy,
                }
                for cond, vec in vectors.items():
                    expected = summed_kl(clean_logits, patched_logits(plain, seq, layer, probe, vec), start, 10)
                    got = float(ds.kl.sel(cell=cell.label, position=pos, layer=layer, condition=cond).item())
                    assert got == pytest.approx(expected, abs=1e-4), (cell.label, pos, layer, cond)


def test_oracle_is_zero_and_other_conditions_are_not(loaded_models, family, tiny_grid_file):
    ds = _run(loaded_models[family], load_grid(tiny_grid_file))
    assert np.abs(ds.kl.sel(condition="oracle").values).max() < 1e-5
    # Past the embeddings, removing the persona and task must change the output.
    assert ds.kl.sel(condition="baseline", layer=2).values.max() > 1e-4
    assert (ds.kl.values > -1e-5).all()


def test_random_condition_has_the_additive_norm_and_is_seeded(loaded_models, tiny_grid_file):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=LAYERS), progress=False)
    resid = cap.resid.isel(model=0)
    a = substitute.condition_vectors(resid, substitute.CONDITIONS, seed=3)
    b = substitute.condition_vectors(resid, substitute.CONDITIONS, seed=3)
    c = substitute.condition_vectors(resid, substitute.CONDITIONS, seed=4)
    assert np.array_equal(a.values, b.values) and not np.array_equal(a.values, c.values)
    bb = resid.sel(condition="BB").values
    step = np.linalg.norm(a.sel(condition="random").values - bb, axis=-1)
    additive_step = np.linalg.norm(a.sel(condition="additive").values - bb, axis=-1)
    np.testing.assert_allclose(step, additive_step, rtol=1e-4, atol=1e-5)


def test_batched_equals_one_patch_per_pass(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    one = _run(loaded, grid, batch_size=1, positions=("p_last", "g2"))
    many = _run(loaded, grid, batch_size=64, positions=("p_last", "g2"))
    np.testing.assert_allclose(one.kl.values, many.kl.values, atol=1e-5, rtol=1e-4)


def test_reusing_a_capture_gives_the_same_kl(loaded_models, tiny_grid_file):
    loaded = loaded_models["gemma2"]
    grid = load_grid(tiny_grid_file)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(0, 1, 2, 3, 4)), progress=False)
    spec = substitute.SubstituteSpec(grid="tiny", layers=LAYERS)
    reused = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False)
    fresh = substitute.run(loaded, grid, spec, progress=False)
    np.testing.assert_allclose(reused.kl.values, fresh.kl.values, atol=1e-6)


def test_bad_condition_and_capture_without_the_layer(loaded_models, tiny_grid_file):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match=r"unknown substitution condition\(s\) \['clamp'\]"):
        _run(loaded, grid, conditions=("additive", "clamp"))
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(0, 1)), progress=False)
    with pytest.raises(SelectionError, match=r"the capture has no layer \[2, 4\]"):
        substitute.run(loaded, grid, substitute.SubstituteSpec(grid="tiny", layers=LAYERS), capture_ds=cap, progress=False)


def test_prefix_cache_equals_whole_sequences(loaded_models, family, tiny_grid_file):
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    cached = _run(loaded, grid, batch_size=7)
    whole = _run(loaded, grid, batch_size=7, prefix_cache=False)
    np.testing.assert_allclose(cached.kl.values, whole.kl.values, atol=1e-5, rtol=1e-4)
    assert cached.kl.notnull().all()


def test_random_control_of_a_site_does_not_depend_on_the_other_sites(loaded_models, tiny_grid_file):
    """Each site's random direction is seeded by the site, so a run over one cell and one layer
    gives that cell the KL a run over every cell and layer gives it."""
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    everything = _run(loaded, grid, conditions=("random",)).isel(model=0)
    cell = grid.cells[-1].label
    alone = substitute.run(loaded, grid, substitute.SubstituteSpec(grid="tiny", layers=(2,), conditions=("random",),
                                                                   cells=(cell,), positions=("g1",)), progress=False)
    got = float(alone.kl.isel(model=0).sel(cell=cell, layer=2, position="g1", condition="random"))
    assert got == pytest.approx(float(everything.kl.sel(cell=cell, layer=2, position="g1", condition="random")), abs=1e-5)
    assert got > 1e-4  # a real perturbation, not a no-op
    other = substitute.SubstituteSpec(grid="tiny", layers=(2,), conditions=("random",), cells=(cell,), positions=("g1",), seed=1)
    assert float(substitute.run(loaded, grid, other, progress=False).kl.isel(model=0).sel(
        cell=cell, layer=2, position="g1", condition="random")) != pytest.approx(got, abs=1e-6)
