"""The remote path of substitute and inject builds its residuals and vectors on the server
(studies/xu2026/native.py, core/recipes.py): through nnsight's local simulation it gives the local
runs' numbers and the hooks reference's, what travels does not grow with the model's width, and an
interrupted run resumes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tiny_models import MAX_WIDE_PARAMS, build_tiny_model
from tolerances import RESIDUAL, SCORES, assert_close_per_vector
from traffic_log import record

import nnsight_persona
from nnsight_persona.core import tracing
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.recipes import KINDS, SiteTable, as_writes, recipe, resolve
from nnsight_persona.core.replacements import direction_key, random_direction, rescaled, vector
from nnsight_persona.studies.xu2026 import inject, substitute

INJECT_NORMS = ("norm_clean", "norm_host", "norm_injected")


def simulated(loaded):
    return dataclasses.replace(loaded, remote="local")


# --- the recipes against core/replacements, on made-up residuals ---------------------------------

def test_a_recipe_builds_each_vector_as_replacements_does():
    rng = np.random.default_rng(0)
    hidden = 16
    read = rng.standard_normal((6, hidden)).astype(np.float32) * 3  # six sites read at layer 2
    sources = [[0, 1, 2, 3], [4, 5, 0, 1], [2, 3, 4, 5]]
    key = direction_key(7, 2, "p_last", "yoda__haiku")
    writes = [(r, 10 + r, src, kind, key if kind == "random" else None, None)
              for kind in KINDS for r, src in enumerate(sources)]
    got = resolve(recipe(2, writes), {2: torch.from_numpy(read)}).numpy()
    want = []
    for kind in KINDS:
        for src in sources:
            h = read[src]  # [4, hidden]: BB, XB, BY, XY
            if kind in ("BB", "XB", "BY", "XY"):
                want.append(h[("BB", "XB", "BY", "XY").index(kind)])
            elif kind == "additive_rescaled":
                want.append(rescaled(torch.from_numpy(vector(h, "additive")), torch.from_numpy(h[3])).numpy())
            else:
                want.append(vector(h, kind, random_direction(7, 2, "p_last", "yoda__haiku", hidden)))
    assert_close_per_vector(got, np.stack(want), RESIDUAL, what="recipe vectors")
    # A write that subtracts a site (inject's every-step difference), written where it says.
    minus = recipe(2, [(1, 4, sources[0], "oracle", None, 5)], add=True)
    writes = as_writes(minus, {2: torch.from_numpy(read)})
    assert writes.add and writes.rows.tolist() == [1] and writes.cols.tolist() == [4]
    assert_close_per_vector(writes.values.numpy(), (read[3] - read[5])[None], RESIDUAL, what="minus")


def test_the_site_table_numbers_sites_as_the_server_concatenates_them():
    table = SiteTable()
    seqs = {"long": [1, 2, 3, 4, 5], "short": [6, 7], "mid": [8, 9, 10]}
    for layer, site, row, index in [(3, "a", "long", 4), (1, "b", "short", 0), (3, "c", "mid", 1), (1, "d", "long", 2),
                                    (3, "e", "short", 1), (3, "a", "long", 0)]:  # "a" twice: read once
        table.need(layer, site, row, seqs[row], index)
    reads, number = table.finish(pad_id=0, batch_size=2)  # short and mid in one pass, long in another
    assert [r.batch.input_ids.shape[0] for r in reads] == [2, 1]
    # Replay what the server does: per layer, each pass's reads concatenated in order.
    carried = {}
    for read in reads:
        for layer in read.layers:
            rows, cols = read.at(layer)
            carried.setdefault(layer, []).extend(int(read.batch.input_ids[r, c]) for r, c in zip(rows, cols))
    for (layer, site), k in number.items():
        row, index = {"a": ("long", 4), "b": ("short", 0), "c": ("mid", 1), "d": ("long", 2), "e": ("short", 1)}[site]
        assert carried[layer][k] == seqs[row][index], (layer, site)
    assert sorted(number) == [(1, "b"), (1, "d"), (3, "a"), (3, "c"), (3, "e")]


# --- the same numbers as the local run and the hooks reference ------------------------------------

@pytest.mark.numeric
@pytest.mark.parametrize("model", ["toy", "sharp-gemma2"])
def test_native_substitute_and_inject_equal_the_local_run(model, toy_model, sharp_models, tiny_grid_file):
    if model == "toy":
        loaded, grid, cells = toy_model, load_grid("toy"), ("pirate__weather", "robot__story", "knight__breakfast")
        layers, sets, site = (2, 4, 6), ((4,), (2, 4, 6)), (4,)
    else:
        loaded, grid, cells = sharp_models["gemma2"], load_grid(tiny_grid_file), ()
        layers, sets, site = (0, 2, 4), ((2,), (1, 3)), (2,)
    sub = substitute.SubstituteSpec(grid=grid.name, layers=layers, cells=cells, batch_size=16)
    local, native = (substitute.run(m, grid, sub, progress=False) for m in (loaded, simulated(loaded)))
    assert native.attrs["completed"] == 1
    assert_close_per_vector(native.kl.values, local.kl.values, SCORES, axis=None, what="substitute kl")
    assert float(local.kl.max()) > 1  # nats: a wrong vector or site would show
    for steps in ("prefill", "all"):
        inj = inject.InjectSpec(grid=grid.name, layer_sets=sets, site_layers=site, cells=cells, patch_steps=steps,
                                batch_size=8, batches_per_request=2)
        local, native = (inject.run(m, grid, inj, progress=False) for m in (loaded, simulated(loaded)))
        assert native.attrs["completed"] == 1
        for name in ("kl", "kl_site"):
            assert_close_per_vector(native[name].values, local[name].values, SCORES, axis=None, what=f"{steps} {name}")
        for name in INJECT_NORMS:  # per (layer, cell): norms of vectors read on the two routes
            assert_close_per_vector(native[name].values[..., None], local[name].values[..., None], RESIDUAL, what=name)
        assert float(local.kl.sel(condition="host").min()) > 1


@pytest.mark.numeric
def test_native_runs_equal_the_hooks_reference(sharp_models, sharp_plain, tiny_grid_file, tiny_grid_raw):
    """The independent check: plain transformers with pre-hooks, one patch per pass (reference.py)."""
    from test_inject import SETS, check_inject
    from test_substitute import check_substitution

    loaded, plain, grid = simulated(sharp_models["gemma2"]), sharp_plain["gemma2"], load_grid(tiny_grid_file)
    ds, power = check_substitution(loaded, plain, grid, tiny_grid_raw, ["yoda__haiku", "engineer__book"], (0, 2, 4), 7)
    assert power["reversed"] > 0.1 and power["shifted"] > 0.1 and power["sign"] > 0.1, power
    for steps in ("prefill", "all"):
        _, power = check_inject(loaded, plain, grid, tiny_grid_raw, ["engineer__haiku", "yoda__book"], SETS, (2,),
                                steps, 5)
        assert power["reversed"] > 0.1 and power["not_length_matched"] > 0.1, power


# --- what travels does not grow with the width --------------------------------------------------

@pytest.fixture(scope="module")
def wide_pair(tmp_path_factory):
    """Two tiny gemma2 models that differ only in hidden size (64 and 1024), loaded for the local
    simulation of the remote path."""
    from nnsight_persona.models.loading import load_model

    root = tmp_path_factory.mktemp("wide")
    return {width: load_model(str(build_tiny_model("gemma2", root / str(width), hidden_size=width,
                                                    max_params=MAX_WIDE_PARAMS)), dtype="float32", remote="local")
            for width in (64, 1024)}


@pytest.mark.parametrize("experiment", ["substitute", "inject"])
def test_what_travels_does_not_grow_with_the_width(wide_pair, tiny_grid_file, experiment):
    options = {"substitute": {"layers": "1,3", "positions": "all"}, "inject": {"patch_steps": "all"}}[experiment]
    attrs = {width: getattr(nnsight_persona, experiment)(model, grid=str(tiny_grid_file), batch_size=8, progress=False,
                                                         ndif_host="local", **options).attrs
             for width, model in wide_pair.items()}
    assert attrs[64]["remote_requests"] == attrs[1024]["remote_requests"]
    for width in (64, 1024):
        record(kind="width", backend="local simulation", experiment=experiment, width=width,
               requests=attrs[width]["remote_requests"], sent=attrs[width]["remote_bytes_sent"],
               received=attrs[width]["remote_bytes_received"])
    ratios = {}
    for key in ("remote_bytes_sent", "remote_bytes_received"):
        narrow, wide = attrs[64][key], attrs[1024][key]
        print(f"{experiment} {key}: width 64 {narrow:,}, width 1024 {wide:,}")
        ratios[key] = (max(narrow, wide) / min(narrow, wide), narrow, wide)
    assert all(ratio < 1.2 for ratio, _, _ in ratios.values()), ratios
    if experiment == "substitute":  # what the vectors alone would weigh at width 1024, float32
        ds_kl = 2 * 4 * 4 * 6  # layers x positions x cells x conditions
        assert attrs[1024]["remote_bytes_sent"] < 2 * ds_kl * 1024 * 4


# --- resuming -------------------------------------------------------------------------------------

@pytest.mark.parametrize("experiment", ["substitute", "inject"])
def test_an_interrupted_native_run_resumes_to_the_same_numbers(loaded_models, tiny_grid_file, monkeypatch, experiment):
    loaded, grid = simulated(loaded_models["llama"]), load_grid(tiny_grid_file)
    if experiment == "substitute":
        module, spec = substitute, substitute.SubstituteSpec(grid="tiny", layers=(1, 3), batch_size=5,
                                                             batches_per_request=2)
        names = ("kl",)
    else:
        module, spec = inject, inject.InjectSpec(grid="tiny", layer_sets=((2,), (1, 3)), site_layers=(2,),
                                                 patch_steps="all", batch_size=6, batches_per_request=1)
        names = ("kl", "kl_site") + INJECT_NORMS
    full = module.run(loaded, grid, spec, progress=False)
    real, calls = tracing.window_kl_native_session, {"n": 0, "limit": 3}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == calls["limit"]:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(tracing, "window_kl_native_session", counting)
    partial = module.run(loaded, grid, spec, progress=False)
    assert partial.attrs["completed"] == 0 and np.isnan(partial.kl.values).any() and not np.isnan(partial.kl.values).all()
    calls["n"], calls["limit"] = 0, 10**9
    resumed = module.run(loaded, grid, spec, progress=False, previous=partial)
    assert resumed.attrs["completed"] == 1
    for name in names:
        np.testing.assert_allclose(resumed[name].values, full[name].values, atol=1e-6, err_msg=name)
    if experiment == "inject":
        # A finished run whose norms of one cell were lost: the rows are all done, the norms are read alone.
        lost = full.copy(deep=True)
        for name in INJECT_NORMS:
            lost[name][:, :, 1] = np.nan
        calls["n"] = 0
        again = module.run(loaded, grid, spec, progress=False, previous=lost)
        assert calls["n"] == 1
        for name in INJECT_NORMS:
            np.testing.assert_allclose(again[name].values, full[name].values, atol=1e-6, err_msg=name)
