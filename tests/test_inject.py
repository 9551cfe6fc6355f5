"""Host injection against a plain-transformers hooks computation, and its invariants. The reference
builds the host, length-matched host and target prompts, the injected vectors (oracle, cached and
its rescaled variant) and the KLs itself, on models whose KLs are nats apart."""

import numpy as np
import pytest
import torch

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.studies.xu2026 import inject
from nnsight_persona.core.grids import grid_from_dict, load_grid
from reference import CONDITIONS, Mismatches, chat_prompt, greedy, hidden_states, patched_logits, replacement, summed_kl, user_texts

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

SETS = ((2,), (1, 2, 3))
SITE_POSITIONS = ("p_user_last", "p_last", "g1", "g2")


def _run(loaded, grid, **kw):
    spec = inject.InjectSpec(grid="tiny", layer_sets=SETS, **kw)
    return inject.run(loaded, grid, spec, progress=False)


def length_matched(tok, raw, task, target_len, filler=" ."):
    """The host prompt with `filler` repeated after the baseline persona: the longest not above
    the target's token length (the plain host when even that is longer)."""
    template = raw.get("prompt_template", "As {persona}, {task}")
    best = None
    for k in range(4 * target_len):
        p = chat_prompt(tok, template.format(persona=raw["baseline"]["persona"] + filler * k, task=raw["tasks"][task]))
        if len(p["ids"]) > target_len:
            break
        best = p
    return best or p


def reference_inject(plain, tok, raw, cell, layer_sets, site_layers, patch_steps, pad_id, n_eval=10):
    """{condition or (site condition, layer, position): [(KL, KL reversed, KL a token later) per
    layer set]} for one cell: one forward pass per injection on unpadded sequences, with pre-hooks."""
    persona, task = cell.split("__")
    p = {c: chat_prompt(tok, text) for c, text in user_texts(raw, persona, task).items()}
    hosts = {"": p["BY"], "lm_": length_matched(tok, raw, task, len(p["XY"]["ids"]))}
    clean = greedy(plain, p["XY"]["ids"], 12, pad_id)
    h = {c: hidden_states(plain, p[c]["ids"] + clean[:2]) for c in CONDITIONS}

    def vector(name, layer, pos):
        site = {c: h[c][layer][p[c][pos]] for c in CONDITIONS}
        if name == "oracle":
            return replacement(site, "oracle")
        cached = replacement(site, "additive")
        if name == "cached_rescaled":
            return cached * site["XY"].norm() / cached.norm()
        return cached

    suffix = clean[:n_eval]  # one more than the window needs: the window a token later is read too
    with torch.no_grad():
        target = plain(torch.tensor([p["XY"]["ids"] + suffix])).logits[0].float()
    t0 = p["XY"]["p_last"]

    def kls(logits, h0):
        return (summed_kl(target, logits, t0, n_eval, h0), summed_kl(logits, target, h0, n_eval, t0),
                summed_kl(target, logits, t0 + 1, n_eval, h0 + 1))

    out = {}
    for prefix, host in hosts.items():
        seq, h0 = host["ids"] + suffix, host["p_last"]
        own = hidden_states(plain, seq)
        with torch.no_grad():
            out[prefix + "host"] = [kls(plain(torch.tensor([seq])).logits[0].float(), h0)] * len(layer_sets)
        for name in ("oracle", "cached", "cached_rescaled") if prefix == "" else ("oracle", "cached"):
            out[prefix + name] = []
            for layer_set in layer_sets:
                vec = {L: vector(name, L, "p_last") for L in layer_set}
                sets = [(L, h0, vec[L]) for L in layer_set]
                adds = [(L, h0 + 1, vec[L] - own[L][h0]) for L in layer_set] if patch_steps == "all" else []
                out[prefix + name].append(kls(patched_logits(plain, seq, *sets[0], extra=sets[1:], adds=adds), h0))
    host = hosts[""]
    seq = host["ids"] + suffix
    for L in site_layers:
        for pos in SITE_POSITIONS:
            for name in ("oracle", "cached"):
                out[(name, L, pos)] = [kls(patched_logits(plain, seq, L, host[pos], vector(name, L, pos)), host["p_last"])]
    return out


def check_inject(loaded, plain, grid, raw, cells, layer_sets, site_layers, patch_steps, batch_size):
    """The package's inject of `cells` equals the reference; returns how far the mistakes the
    comparison targets would move the KLs (the largest change over the checked values)."""
    spec = inject.InjectSpec(grid=grid.name, layer_sets=layer_sets, site_layers=site_layers, patch_steps=patch_steps,
                             cells=tuple(cells), batch_size=batch_size)
    ds = inject.run(loaded, grid, spec, progress=False)
    assert ds.attrs["completed"] == 1
    ds = ds.isel(model=0)
    power = {"reversed": 0.0, "shifted": 0.0, "unscaled": 0.0, "not_length_matched": 0.0}
    mismatches = Mismatches()
    for cell in cells:
        ref = reference_inject(plain, loaded.tokenizer, raw, cell, layer_sets, site_layers, patch_steps, loaded.pad_id)
        for key, values in ref.items():
            for si, (expected, reversed_, shifted) in enumerate(values):
                if isinstance(key, tuple):
                    name, L, pos = key
                    got = float(ds.kl_site.sel(cell=cell, site_condition=name, site_layer=L, site_position=pos))
                else:
                    got = float(ds.kl.sel(cell=cell, condition=key).isel(layer_set=si))
                mismatches.check((cell, key, layer_sets[si]), expected, got)
                power["reversed"] = max(power["reversed"], abs(reversed_ - expected))
                power["shifted"] = max(power["shifted"], abs(shifted - expected))
        for si in range(len(layer_sets)):
            kl = lambda name: ref[name][si][0]
            power["unscaled"] = max(power["unscaled"], abs(kl("cached_rescaled") - kl("cached")))
            power["not_length_matched"] = max(power["not_length_matched"], abs(kl("lm_oracle") - kl("oracle")))
    mismatches.assert_none()
    return ds, power


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_inject_equals_hooks_reference(sharp_models, sharp_plain, family, tiny_grid_file, tiny_grid_raw, patch_steps):
    grid = load_grid(tiny_grid_file)
    _, power = check_inject(sharp_models[family], sharp_plain[family], grid, tiny_grid_raw, ["engineer__haiku", "yoda__book"],
                            SETS, (2,), patch_steps, 5)
    assert power["reversed"] > 0.1 and power["shifted"] > 0.1 and power["not_length_matched"] > 0.1, power


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_inject_of_the_toy_model_equals_hooks_reference(toy_model, toy_plain, toy_long_grid_raw, patch_steps):
    # The long grid: its personas are longer than the baseline's, so the length-matched host differs.
    ds, power = check_inject(toy_model, toy_plain, load_grid("toy-long"), toy_long_grid_raw, ["baker__trip", "blacksmith__sleep"],
                             ((4,), (2, 4, 6)), (4,), patch_steps, 32)
    # The rescaled vector is ~1% shorter or longer than the cached one: its KL is still 1e-2 away.
    assert power["unscaled"] > 1e-2 and power["reversed"] > 1 and power["shifted"] > 1, power
    assert power["not_length_matched"] > 1, power
    assert float(ds.kl.sel(condition="host").min()) > 10  # the persona text is worth nats to the toy model


def test_injecting_h_xy_into_the_xy_prompt_itself_gives_zero(sharp_models, family):
    # A baseline persona equal to the persona makes the host prompt the XY prompt itself.
    grid = grid_from_dict({
        "baseline": {"persona": "Yoda", "task": "Give advice."},
        "personas": {"yoda": "Yoda"}, "tasks": {"haiku": "Write a haiku about Monday mornings."},
    }, name="self")
    ds = _run(sharp_models[family], grid, conditions=("host", "oracle", "cached"))
    assert np.abs(ds.kl.values).max() < 1e-4


def test_norms_lengths_and_gap_equal_the_reference(sharp_models, sharp_plain, tiny_grid_file, tiny_grid_raw):
    loaded, plain = sharp_models["qwen2"], sharp_plain["qwen2"]
    grid = load_grid(tiny_grid_file)
    ds = _run(loaded, grid, site_layers=(1, 3)).isel(model=0)
    tok = loaded.tokenizer
    for cell in grid.cell_labels:
        persona, task = cell.split("__")
        p = {c: chat_prompt(tok, text) for c, text in user_texts(tiny_grid_raw, persona, task).items()}
        h = {c: hidden_states(plain, p[c]["ids"]) for c in CONDITIONS}
        for layer in (1, 2, 3):
            site = {c: h[c][layer][p[c]["p_last"]] for c in CONDITIONS}
            for var, vec in (("norm_clean", site["XY"]), ("norm_host", site["BY"]), ("norm_injected", replacement(site, "additive"))):
                assert float(ds[var].sel(cell=cell, layer=layer)) == pytest.approx(float(vec.norm()), rel=1e-5), (cell, layer, var)
        lengths = ds.prompt_length.sel(cell=cell)
        expected = (len(p["XY"]["ids"]), len(p["BY"]["ids"]), len(length_matched(tok, tiny_grid_raw, task, len(p["XY"]["ids"]))["ids"]))
        assert tuple(int(lengths.sel(prompt=k)) for k in ("target", "host", "length_matched_host")) == expected
    prompt_lengths = ds.prompt_length.values
    assert (prompt_lengths[:, 2] != prompt_lengths[:, 1]).any()  # some hosts really were padded
    kl = ds.kl
    np.testing.assert_allclose(ds.gap_closed.values, 1 - kl.values / kl.sel(condition="host").values[..., None])
    assert ds.kl_site.sizes == {"site_layer": 2, "site_position": 4, "cell": 4, "site_condition": 2}
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
