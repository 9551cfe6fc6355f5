"""The batched head sweep against one knockout run per head, and its groups of top heads."""

import numpy as np
import pytest
import torch
import xarray as xr

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.studies.xu2026 import heads, knockout
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.prompts import render_prompt
from reference import greedy, load_plain, logits_with_mask_knockout, summed_kl
from tolerances import SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)


@torch.no_grad()
def test_batched_head_sweep_equals_one_run_per_head(loaded_models, tiny_dirs, tiny_grid_file):
    """Every (block, head) of the band in shared batches equals a separate knockout run with
    --heads H --band B:B+1; the all-heads group equals the band's persona knockout; each top-k
    group equals a run knocking those heads out together."""
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    band = (1, 3)
    spec = heads.HeadSweepSpec(grid="tiny", band=band, top_k=(1, 3), batch_size=64, min_gap=-1e9)
    ds = heads.run(loaded, grid, spec, progress=False).isel(model=0)
    assert ds.attrs["completed"] == 1
    n_heads = loaded.lm._module.config.num_attention_heads
    n_rows = 2 * n_heads * len(grid.cells)  # single heads, before the groups
    assert ds.attrs["max_rows_per_pass"] > 2 * n_heads  # many heads share a pass
    assert ds.attrs["passes"] < n_rows
    one = lambda **kw: knockout.run(loaded, grid, knockout.KnockoutSpec(
        grid="tiny", n_tokens=0, conditions=("persona",), min_gap=-1e9, **kw), progress=False).isel(model=0, condition=0)
    for block in range(*band):
        for head in range(n_heads):
            alone = one(bands=((block, block + 1),), heads=(head,)).isel(band=0)
            for name in ("kl", "logp_drop", "kl_to_by", "persona_shift", "toward_by"):
                assert_close_per_vector(ds[name].sel(block=block, head=head).values, alone[name].values, SCORES,
                                        axis=None, what=f"{name} block {block} head {head}")  # batched vs alone
    whole = one(bands=(band,)).isel(band=0)
    assert_close_per_vector(ds.group_kl.sel(group="all heads").values, whole.kl.values, SCORES, axis=None)
    assert list(ds.group.values) == ["top 1", "top 3", "all heads"]
    assert list(ds.group_size.values) == [1, 3, 2 * n_heads]
    # The ranking: medians over cells, largest first.
    medians = ds.persona_shift.median("cell")
    ranked = [float(medians.sel(block=b, head=h)) for b, h in zip(ds.ranked_block.values, ds.ranked_head.values)]
    assert ranked == sorted(ranked, reverse=True)
    np.testing.assert_allclose(ds.ranked_median.values, ranked)
    assert float(ds.fraction_of_band.sel(group="all heads")) == pytest.approx(1.0)
    # The top-3 group, knocked out together, equals an independent per-head mask hook on those heads.
    top = list(zip(ds.ranked_block.values[:3].tolist(), ds.ranked_head.values[:3].tolist()))
    by_block = {}
    for block, head in top:
        by_block.setdefault(block, []).append(head)
    plain = load_plain(tiny_dirs["llama"])
    for cell in grid.cells:
        p = render_prompt(loaded.tokenizer, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        seq = list(p.ids) + greedy(plain, list(p.ids), 12, loaded.pad_id)[:9]
        clean = plain(torch.tensor([seq])).logits[0].float()
        knocked = logits_with_mask_knockout(plain, seq, sorted(by_block), p.p_last, list(range(*p.persona_span)), by_block)
        expected = summed_kl(clean, knocked, p.p_last, 10)
        assert float(ds.group_kl.sel(group="top 3", cell=cell.label)) == pytest.approx(expected, abs=1e-4)


def test_top_group_rows_knock_out_exactly_their_heads(loaded_models, tiny_grid_file):
    """The Knockout of a group row holds exactly the group's (block, head) pairs."""
    from nnsight_persona.core.batching import left_pad

    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    prompts, keys = knockout.cell_prompts(loaded.tokenizer, grid, grid.cells[0], None)
    pairs = ((1, 2), (3, 0), (1, 1))
    rows = [knockout.KnockRow(0, "XY", tuple(keys["persona"]), (1, 3), pairs), None]
    batch = left_pad([prompts["XY"].ids, prompts["XY"].ids], loaded.pad_id)
    knock = knockout.knockout_for(batch, rows, [prompts], "answer", 4, 4)
    assert {tuple(map(int, p)) for p in knock.head_mask[0].nonzero()} == set(pairs)
    assert not knock.head_mask[1].any() and knock.active[0].nonzero().flatten().tolist() == [1, 3]


def test_head_map_on_the_toy_model():
    """On the toy model the persona is read in block 0; its four heads together account for the
    whole 0:2 band's persona shift, the best single head for clearly less than that."""
    from nnsight_persona.models.loading import load_model

    loaded = load_model("toy")
    grid = load_grid("toy-long")
    spec = heads.HeadSweepSpec(grid="toy-long", band=(0, 2), top_k=(1, 4), cells=tuple(c.label for c in grid.cells[::3]))
    ds = heads.run(loaded, grid, spec, progress=False).isel(model=0)
    assert (ds.ranked_block.values[:4] == 0).all()
    fraction = ds.fraction_of_band
    assert float(fraction.sel(group="top 4")) > 0.9
    assert float(fraction.sel(group="top 1")) < float(fraction.sel(group="top 4")) - 0.05


def test_best_band_and_bad_input(loaded_models, tiny_grid_file):
    shift = np.array([[0.1, 0.4], [0.5, 0.6], [0.2, 0.1], [0.9, 0.9]])  # band x cell
    ds = xr.Dataset(
        {"persona_shift": (("band", "cell", "condition"), shift[:, :, None])},
        coords={"band": ["0:2", "1:3", "2:4", "0:4"], "band_start": ("band", [0, 1, 2, 0]),
                "band_end": ("band", [2, 3, 4, 4]), "cell": ["a", "b"], "condition": ["persona"]},
    )
    assert heads.best_band(ds) == (1, 3)  # the all-blocks band is not a candidate
    assert heads.best_band(ds.isel(band=[3])) == (0, 4)  # unless it is the only band
    sparse = ds.copy(deep=True)
    sparse["persona_shift"][1, 0] = np.nan  # 1:3 defined in half the cells: still a candidate
    assert heads.best_band(sparse) == (1, 3)
    assert heads.best_band(sparse, min_defined=0.75) == (0, 2)
    with pytest.raises(SelectionError, match="no band has persona_shift defined"):
        heads.best_band(ds * np.nan)
    assert heads.group_sizes((4, 1, 2, 8, 16), 8) == [1, 2, 4]
    assert heads.rank_heads(np.array([[0.1, np.nan], [0.3, 0.2]])) == [(1, 0), (1, 1), (0, 0), (0, 1)]
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match="band 2:9 out of range"):
        heads.run(loaded, grid, heads.HeadSweepSpec(grid="tiny", band=(2, 9)), progress=False)
    with pytest.raises(SelectionError, match="unknown --rank-by 'x'"):
        heads.run(loaded, grid, heads.HeadSweepSpec(grid="tiny", band=(0, 2), rank_by="x"), progress=False)


def test_head_map_figure_draws_the_medians(loaded_models, tiny_grid_file):
    from nnsight_persona.plots import figures_for
    from nnsight_persona.plots.heads import plot_head_map

    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    ds = heads.run(loaded, grid, heads.HeadSweepSpec(grid="tiny", band=(0, 2), top_k=(1, 2), rank_by="kl"), progress=False)
    fig = plot_head_map(ds)
    kl_ax = fig.axes[0]  # ranked by kl: one map, then the groups
    image = kl_ax.get_images()[0].get_array()
    expected = ds.kl.isel(model=0).median("cell").transpose("block", "head").values
    np.testing.assert_allclose(np.ma.filled(image, np.nan), np.where(expected > 0, expected, np.nan))
    labels = {t.get_text(): t.get_position() for t in kl_ax.texts}
    first = (int(ds.ranked_head.values[0, 0]), int(ds.ranked_block.values[0, 0]))  # (x = head, y = block row)
    assert labels["1"] == first
    bars = [ax for ax in fig.axes if ax.patches][0]
    np.testing.assert_allclose([p.get_height() for p in bars.patches], ds.fraction_of_band.values[0])
    assert list(figures_for(ds)) == ["head_map"]
    with pytest.raises(SelectionError, match="fraction_of_band"):
        plot_head_map(ds.drop_vars("fraction_of_band"))


def test_heads_command_from_a_knockout_result(tiny_dirs, tiny_grid_file, tmp_path):
    from click.testing import CliRunner

    from nnsight_persona.cli import main
    from nnsight_persona.storage.store import load_dataset

    base = ["--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file), "--no-progress"]
    run = lambda *args: CliRunner().invoke(main, [*args, *base], catch_exceptions=False)
    ko = tmp_path / "knockout.nc"
    result = run("knockout", "--band", "0:2,2:4,all", "--n-tokens", "0", "--min-gap", "-1000", "--out", str(ko))
    assert result.exit_code == 0, result.output
    assert "median persona shift" in result.output and "task_span" in result.output
    out = tmp_path / "heads.nc"
    result = run("heads", "--from-knockout", str(ko), "--top-k", "1,2", "--min-gap", "-1000", "--out", str(out))
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    band = heads.best_band(load_dataset(ko))
    assert [int(b) for b in ds.block.values] == list(range(*band)) and ds.attrs["experiment"] == "heads"
    assert list(ds.group.values) == ["top 1", "top 2", "all heads"] and "fraction of band" in result.output
    bad = CliRunner().invoke(main, ["heads", *base])
    assert bad.exit_code != 0 and "exactly one of --band" in bad.output
    bad = CliRunner().invoke(main, ["knockout", *base, "--conditions", "persona,control"])
    assert bad.exit_code != 0 and "renamed: use ['task_span']" in bad.output


def test_heads_through_the_remote_path_and_resumed(loaded_models, tiny_grid_file, monkeypatch):
    """The sweep through nnsight's local simulation of the remote path (per-row head masks travel
    with the trace) equals the local run; an interrupted sweep resumed equals an uninterrupted one."""
    import dataclasses

    local = loaded_models["gemma2"]
    grid = load_grid(tiny_grid_file)
    spec = lambda: heads.HeadSweepSpec(grid="tiny", band=(1, 3), top_k=(2,), batch_size=8, batches_per_request=2)
    full = heads.run(local, grid, spec(), progress=False)
    remote = heads.run(dataclasses.replace(local, remote="local"), grid, spec(), progress=False)
    for name in ("kl", "logp_drop", "group_kl"):
        # A default tiny model's KLs (1e-7..1e-3, one scale) round absolutely: elementwise with a floor,
        # as test_remote_local.py (relative to the array's norm it used 0.87 of SCORES under SSE4.2).
        np.testing.assert_allclose(remote[name].values, full[name].values, atol=1e-5, rtol=1e-4, err_msg=name)
    real, calls = knockout.window_scores_on_prefix, {"n": 0}  # the local scoring call

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(knockout, "window_scores_on_prefix", interrupted)
    partial = heads.run(local, grid, spec(), progress=False)
    assert partial.attrs["completed"] == 0 and np.isnan(partial.kl.values).any()
    calls["n"] = -10**9
    resumed = heads.run(local, grid, spec(), progress=False, previous=partial)
    assert resumed.attrs["completed"] == 1
    for name in ("kl", "persona_shift", "group_kl", "fraction_of_band"):  # rows batched anew on resuming
        assert_close_per_vector(resumed[name].values, full[name].values, SCORES, axis=None, what=name)
    np.testing.assert_array_equal(resumed.ranked_head.values, full.ranked_head.values)
