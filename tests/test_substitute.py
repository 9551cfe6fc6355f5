"""Substitution KL agrees with an unbatched plain-transformers hooks computation of the protocol,
on models whose patches move the next-token distributions by nats (the toy persona model and sharp
tiny models), so a reversed KL, a shifted window or a wrong vector shows."""

import numpy as np
import pytest
import torch

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.studies.xu2026 import capture, substitute
from nnsight_persona.core.grids import load_grid
from reference import CONDITIONS, Mismatches, chat_prompt, greedy, hidden_states, patched_logits, replacement, summed_kl, user_texts

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

LAYERS = (0, 2, 4)
CHECKED = ("additive", "oracle", "baseline", "persona_only", "task_only")
POSITIONS = ("p_user_last", "p_last", "g1", "g2")


def _run(loaded, grid, **kw):
    spec = substitute.SubstituteSpec(grid="tiny", layers=LAYERS, **kw)
    return substitute.run(loaded, grid, spec, progress=False)


def reference_kls(plain, tok, raw, cell, layers, pad_id, n_eval=10):
    """{(position, layer, condition): (KL, KL reversed, KL on the window one later)} for one cell,
    each patch its own forward pass on the unpadded clean sequence, with a pre-hook on block
    `layer`; plus, at p_last, the KL of the additive vector with Delta_Y subtracted."""
    persona, task = cell.split("__")
    prompts = {c: chat_prompt(tok, text) for c, text in user_texts(raw, persona, task).items()}
    xy = prompts["XY"]
    clean = greedy(plain, xy["ids"], 12, pad_id)
    seq = xy["ids"] + clean
    with torch.no_grad():
        clean_logits = plain(torch.tensor([seq])).logits[0].float()
    states = {c: hidden_states(plain, prompts[c]["ids"] + clean[:2]) for c in CONDITIONS}
    out = {}
    for pos in POSITIONS:
        probe = xy[pos]
        start = max(probe, xy["p_last"])  # probes inside the prompt: the window from p_last
        for layer in layers:
            h = {c: states[c][layer][prompts[c][pos]] for c in CONDITIONS}
            vectors = {name: replacement(h, name) for name in CHECKED}
            if pos == "p_last":
                vectors["additive_minus_dy"] = h["XB"] - (h["BY"] - h["BB"])
            for name, vec in vectors.items():
                patched = patched_logits(plain, seq, layer, probe, vec)
                out[(pos, layer, name)] = (
                    summed_kl(clean_logits, patched, start, n_eval),
                    summed_kl(patched, clean_logits, start, n_eval),
                    summed_kl(clean_logits, patched, start + 1, n_eval),
                )
    return out


def check_substitution(loaded, plain, grid, raw, cells, layers, batch_size, run_cells=()):
    """Run the sweep over `run_cells` (default every cell: batches of mixed lengths) and check
    `cells` against the reference."""
    spec = substitute.SubstituteSpec(grid=grid.name, layers=layers, batch_size=batch_size, cells=tuple(run_cells))
    ds = substitute.run(loaded, grid, spec, progress=False)
    assert ds.attrs["completed"] == 1
    ds = ds.isel(model=0)
    power = {"reversed": 0.0, "shifted": 0.0, "sign": 0.0}
    mismatches = Mismatches()
    for cell in cells:
        ref = reference_kls(plain, loaded.tokenizer, raw, cell, layers, loaded.pad_id)
        for (pos, layer, name), (expected, reversed_, shifted) in ref.items():
            if name == "additive_minus_dy":
                power["sign"] = max(power["sign"], abs(expected - ref[(pos, layer, "additive")][0]))
                continue
            got = float(ds.kl.sel(cell=cell, position=pos, layer=layer, condition=name))
            mismatches.check((cell, pos, layer, name), expected, got)
            power["reversed"] = max(power["reversed"], abs(reversed_ - expected))
            power["shifted"] = max(power["shifted"], abs(shifted - expected))
    mismatches.assert_none()
    return ds, power


def test_substitution_equals_hooks_reference(sharp_models, sharp_plain, family, tiny_grid_file, tiny_grid_raw):
    grid = load_grid(tiny_grid_file)
    _, power = check_substitution(sharp_models[family], sharp_plain[family], grid, tiny_grid_raw,
                                  ["yoda__haiku", "engineer__book"], LAYERS, 13)
    # The comparison can fail: a reversed KL, a window one token late or Delta_Y subtracted instead
    # of added moves some KL far beyond the tolerance.
    assert min(power.values()) > 0.1, power


def test_substitution_of_the_toy_model_equals_hooks_reference(toy_model, toy_plain, toy_grid_raw):
    cells = ["pirate__weather", "robot__story"]
    ds, power = check_substitution(toy_model, toy_plain, load_grid("toy"), toy_grid_raw, cells, (2, 6), 32, cells)
    assert power["reversed"] > 1 and power["shifted"] > 1, power
    # The toy model carries its persona at p_last: removing it there costs nats, the additive
    # prediction almost nothing.
    at = ds.kl.sel(position="p_last")
    assert float(at.sel(condition="baseline").min()) > 3 and float(at.sel(condition="additive").max()) < 0.05


def test_oracle_is_zero_and_other_conditions_are_not(sharp_models, family, tiny_grid_file):
    ds = _run(sharp_models[family], load_grid(tiny_grid_file))
    assert np.abs(ds.kl.sel(condition="oracle").values).max() < 1e-4
    # Past the embeddings, removing the persona and task must change the output.
    assert ds.kl.sel(condition="baseline", layer=2).values.max() > 0.5
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


def test_batched_equals_one_patch_per_pass(sharp_models, tiny_grid_file):
    loaded = sharp_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    one = _run(loaded, grid, batch_size=1, positions=("p_last", "g2"))
    many = _run(loaded, grid, batch_size=64, positions=("p_last", "g2"))
    # A default tiny model's KLs (below ~2e-3, one scale): elementwise, an absolute floor (tests/README.md).
    np.testing.assert_allclose(one.kl.values, many.kl.values, atol=1e-4, rtol=1e-4)


def test_reusing_a_capture_gives_the_same_kl(sharp_models, tiny_grid_file):
    loaded = sharp_models["gemma2"]
    grid = load_grid(tiny_grid_file)
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(0, 1, 2, 3, 4)), progress=False)
    spec = substitute.SubstituteSpec(grid="tiny", layers=LAYERS)
    reused = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False)
    fresh = substitute.run(loaded, grid, spec, progress=False)
    np.testing.assert_allclose(reused.kl.values, fresh.kl.values, atol=1e-5, rtol=1e-6)


def test_bad_condition_and_capture_without_the_layer(loaded_models, tiny_grid_file):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match=r"unknown substitution condition\(s\) \['clamp'\]"):
        _run(loaded, grid, conditions=("additive", "clamp"))
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="tiny", layers=(0, 1)), progress=False)
    with pytest.raises(SelectionError, match=r"the capture has no layer \[2, 4\]"):
        substitute.run(loaded, grid, substitute.SubstituteSpec(grid="tiny", layers=LAYERS), capture_ds=cap, progress=False)


def test_prefix_cache_equals_whole_sequences(sharp_models, family, tiny_grid_file):
    loaded = sharp_models[family]
    grid = load_grid(tiny_grid_file)
    cached = _run(loaded, grid, batch_size=7)
    whole = _run(loaded, grid, batch_size=7, prefix_cache=False)
    # A default tiny model's KLs (below ~2e-3, one scale): elementwise, an absolute floor (tests/README.md).
    np.testing.assert_allclose(cached.kl.values, whole.kl.values, atol=1e-4, rtol=1e-4)
    assert cached.kl.notnull().all()


def test_random_control_of_a_site_does_not_depend_on_the_other_sites(sharp_models, tiny_grid_file):
    """Each site's random direction is seeded by the site, so a run over one cell and one layer
    gives that cell the KL a run over every cell and layer gives it."""
    loaded = sharp_models["llama"]
    grid = load_grid(tiny_grid_file)
    everything = _run(loaded, grid, conditions=("random",)).isel(model=0)
    cell = grid.cells[-1].label
    alone = substitute.run(loaded, grid, substitute.SubstituteSpec(grid="tiny", layers=(2,), conditions=("random",),
                                                                   cells=(cell,), positions=("g1",)), progress=False)
    got = float(alone.kl.isel(model=0).sel(cell=cell, layer=2, position="g1", condition="random"))
    assert got == pytest.approx(float(everything.kl.sel(cell=cell, layer=2, position="g1", condition="random")), rel=1e-4, abs=1e-4)
    assert got > 0.1  # a real perturbation, not a no-op
    other = substitute.SubstituteSpec(grid="tiny", layers=(2,), conditions=("random",), cells=(cell,), positions=("g1",), seed=1)
    assert float(substitute.run(loaded, grid, other, progress=False).kl.isel(model=0).sel(
        cell=cell, layer=2, position="g1", condition="random")) != pytest.approx(got, abs=1e-2)
