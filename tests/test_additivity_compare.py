"""The additive condition against its controls, and compare for models and experiments the paper
does not pair directly (another model by depth; the host-injection test)."""

import json
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

from nnsight_persona.analysis.additivity import additivity_rows
from nnsight_persona.analysis.compare import compare, layer_partner
from nnsight_persona.commands.analysis import compare_command
from nnsight_persona.core.errors import PersonaError, SelectionError
from nnsight_persona.storage.provenance import POSITION_CONVENTION
from nnsight_persona.storage.store import save_dataset

CONDITIONS = ["additive", "oracle", "baseline", "persona_only", "task_only", "random"]


def _attrs(experiment, model_id, grid, n_layers, **spec):
    return {"experiment": experiment, "model_id": model_id, "n_layers": n_layers, "completed": 1,
            "spec": json.dumps({"grid": grid, **spec}), "position_convention": POSITION_CONVENTION}


def substitute_ds(kl, layers, positions, cells, model_id="toy", grid="toy", n_layers=8):
    """kl: [layer, position, cell, condition] in CONDITIONS order."""
    return xr.Dataset(
        {"kl": (("model", "layer", "position", "cell", "condition"), np.asarray(kl, dtype=float)[None])},
        coords={"model": [model_id], "layer": np.array(layers), "position": positions, "cell": cells,
                "condition": CONDITIONS},
        attrs=_attrs("substitute", model_id, grid, n_layers),
    )


def test_additivity_is_claimed_only_where_the_additive_vector_beats_every_control():
    cells = ["a", "b", "c"]
    kl = np.ones((2, 1, 3, 6))
    # Layer 2: additive 0.01 but persona_only alone 0.05, a 5x margin only: not additivity.
    kl[0, 0, :, 0] = [0.01, 0.02, 0.005]
    kl[0, 0, :, 3] = [0.05, 0.04, 0.06]
    # Layer 4: additive 0.001, best control by medians (task_only) 0.5: a 500x ratio of medians...
    kl[1, 0, :, 0] = [0.001, 0.002, 0.0005]
    kl[1, 0, :, 4] = [0.5, 0.4, 0.6]
    kl[1, 0, 1, 2] = 0.01  # ...but in cell b the baseline is only 5x the additive KL: a lost cell
    rows = additivity_rows(substitute_ds(kl, [2, 4], ["p_last"], cells))
    first, second = rows
    assert first["best_control"] == "persona_only" and first["ratio"] == pytest.approx(5)  # median of 5, 2, 12
    assert not first["additive_holds"] and first["wins"] == pytest.approx(1 / 3)  # cell c: 0.005 vs 0.06
    # the paired ratios against the baseline are 1000, 5, 2000: one cell in three resampled twice (p 7/27)
    # puts the median at 5, so the interval's lower end is 5 and no 10x claim is made
    assert second["best_control"] == "baseline" and second["ratio"] == pytest.approx(1000)
    assert second["ratio_ci_low"] == pytest.approx(5) and not second["additive_holds"]
    assert second["wins"] == pytest.approx(2 / 3)
    assert additivity_rows(substitute_ds(kl, [2, 4], ["p_last"], cells), margin=4)[1]["additive_holds"] is True


def _numpy_median_interval(values, n=2000, seed=0):
    """A percentile bootstrap of the median over cells, from numpy alone (no package helper)."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    medians = np.median(values[rng.integers(0, len(values), size=(n, len(values)))], axis=1)
    return np.quantile(medians, [0.025, 0.975])


def _close_interval(got_low, got_high, want, share=0.2):
    width = want[1] - want[0]
    assert abs(got_low - want[0]) <= share * width and abs(got_high - want[1]) <= share * width, (
        (got_low, got_high), want)


def test_the_verdict_comes_from_the_interval_of_the_paired_ratio():
    """Two sites of 20 cells. At the first the persona_only KL is 30x the additive KL in the 12 cells
    with the largest additive KL and only 3x in the other 8: the ratio of the two medians is above 10
    but the median paired ratio's interval reaches down to 3, so no claim. At the second every cell's
    ratio lies in [20, 40]: the claim holds. Intervals against a numpy bootstrap."""
    rng = np.random.default_rng(11)
    n = 20
    cells = [f"c{i}" for i in range(n)]
    kl = np.ones((2, 1, n, 6))
    additive = np.sort(rng.lognormal(-6, 1, size=n))
    factor = np.where(np.arange(n) < 8, 3.0, 30.0)
    kl[0, 0, :, 0], kl[0, 0, :, 3] = additive, additive * factor
    spread = rng.uniform(20, 40, size=n)
    kl[1, 0, :, 0], kl[1, 0, :, 3] = additive, additive * spread
    first, second = additivity_rows(substitute_ds(kl, [2, 4], ["p_last"], cells))
    assert np.median(kl[0, 0, :, 3]) / np.median(additive) >= 10  # two medians would claim it
    assert first["best_control"] == "persona_only" and not first["additive_holds"]
    assert first["ratio"] == pytest.approx(np.median(factor))
    _close_interval(first["ratio_ci_low"], first["ratio_ci_high"], _numpy_median_interval(factor))
    assert second["additive_holds"] and second["ratio"] == pytest.approx(np.median(spread))
    _close_interval(second["ratio_ci_low"], second["ratio_ci_high"], _numpy_median_interval(spread))
    for condition, column in (("additive", 0), ("persona_only", 3)):
        assert first[condition] == pytest.approx(np.median(kl[0, 0, :, column]))
        _close_interval(first[f"{condition}_ci_low"], first[f"{condition}_ci_high"],
                        _numpy_median_interval(kl[0, 0, :, column]))


def test_additivity_of_the_committed_smollm2_file_against_numpy():
    from nnsight_persona.analysis.additivity import CONTROLS
    from nnsight_persona.analysis.tables import additivity_table
    from nnsight_persona.storage.store import load_dataset

    path = Path(__file__).resolve().parents[1] / "artifacts" / "smollm2" / "substitute-xu2026-long.nc"
    ds = load_dataset(path)
    rows = additivity_rows(ds)
    table = additivity_table(str(path)).splitlines()
    for row in rows[:: max(1, len(rows) // 6)]:
        site = ds["kl"].sel(model=row["model"], position=row["position"], layer=row["layer"])
        additive = site.sel(condition="additive").values
        lows = {}
        for control in CONTROLS:
            ratio = site.sel(condition=control).values / additive
            lows[control] = _numpy_median_interval(ratio)
        best = min(lows, key=lambda c: lows[c][0])
        assert row["best_control"] == best
        ratio = site.sel(condition=best).values / additive
        assert row["ratio"] == pytest.approx(np.median(ratio))
        _close_interval(row["ratio_ci_low"], row["ratio_ci_high"], lows[best])
        assert row["additive_holds"] == all(low >= 10 for low, _ in lows.values())
        _close_interval(row["additive_ci_low"], row["additive_ci_high"], _numpy_median_interval(additive))
        line = next(t for t in table if t.startswith(f"| {row['position']} | {row['layer']} |"))
        ratio_cell = line.split(" | ")[-2]
        shown = [float(v) for v in ratio_cell.replace("x", "").replace("[", "").replace("]", "").replace(",", "").split()]
        assert shown == pytest.approx([row["ratio"], row["ratio_ci_low"], row["ratio_ci_high"]], rel=0.05)


def test_additivity_needs_the_controls():
    ds = substitute_ds(np.ones((1, 1, 1, 6)), [2], ["p_last"], ["a"]).sel(condition=["additive", "oracle"])
    with pytest.raises(SelectionError, match="persona_only"):
        additivity_rows(ds)


def test_compare_prints_the_controls_for_a_model_the_paper_does_not_report(tmp_path):
    kl = np.full((1, 1, 2, 6), 1.0)
    kl[..., 0] = 0.001
    path = save_dataset(substitute_ds(kl, [4], ["p_last"], ["a", "b"]), tmp_path / "s.nc")
    result = CliRunner().invoke(compare_command, [str(path)])
    assert result.exit_code == 0, result.output
    assert "no paper numbers" in result.output and "ratio" in result.output
    assert "by >= 10x at 1 of 1 sites (p_last@4)" in result.output and "paired ratio" in result.output


def test_layers_of_another_model_are_matched_by_depth():
    # The paper's grid on 8 layers is 2, 3, 4, 6, 7; on Gemma-2-2B's 26: 6, 10, 14, 18, 22.
    assert [layer_partner(L, 8, 26) for L in (2, 3, 4, 6, 7)] == [6, 10, 14, 18, 22]
    assert layer_partner(5, 8, 26) is None  # off the grid: no partner
    # SmolLM2 (30 layers) against Qwen-2.5-1.5B (28): 8, 12, 16, 21, 26 -> 7, 11, 15, 20, 24.
    assert [layer_partner(L, 30, 28) for L in (8, 12, 16, 21, 26)] == [7, 11, 15, 20, 24]


def test_compare_with_a_named_paper_model_uses_the_partner_layers():
    ref = json.loads(resources.files("nnsight_persona.reference").joinpath(
        "xu2026", "v15_gemma2b_localized_positions.json").read_text())
    cells = [f"{x}__{y}" for x in ("buffett", "marx") for y in ("policy", "haiku")]
    kl = np.random.default_rng(0).lognormal(size=(2, 1, 4, 6))
    ds = substitute_ds(kl, [4, 5], ["p_last"], cells, model_id="toy", grid="xu2026-short", n_layers=8)
    with pytest.raises(PersonaError, match="--paper"):
        compare(ds)
    rows = compare(ds, paper="gemma2b")
    assert len(rows) == 1 and rows[0]["layer"] == 4 and rows[0]["paper_layer"] == 14
    assert rows[0]["paper_median"] == ref["causal"]["p_last"]["14"]["summary"]["median"]
    assert rows[0]["ours_median"] == pytest.approx(np.median(kl[0, 0, :, 0]))


def test_compare_inject_against_the_papers_host_injection():
    single = json.loads(resources.files("nnsight_persona.reference").joinpath("xu2026", "v14b_v2.json").read_text())
    multi = json.loads(resources.files("nnsight_persona.reference").joinpath("xu2026", "v14e_multilayer.json").read_text())
    cells = list(single["results"]) + ["extra__cell"]
    sets = ["14", "10,12,14"]
    conditions = ["host", "oracle", "cached"]
    kl = np.random.default_rng(1).lognormal(size=(1, len(sets), len(cells), len(conditions)))
    ds = xr.Dataset({"kl": (("model", "layer_set", "cell", "condition"), kl)},
                    coords={"model": ["google/gemma-2-2b-it"], "layer_set": sets, "cell": cells, "condition": conditions},
                    attrs=_attrs("inject", "google/gemma-2-2b-it", "xu2026-long", 26))
    rows = compare(ds)
    by = {(r["layer_set"], r["condition"]): r for r in rows}
    assert set(by) == {("14", "host"), ("14", "oracle"), ("14", "cached"), ("10,12,14", "cached")}
    host = np.median([single["results"][c]["kl_host_clean"] for c in single["results"]])
    assert by[("14", "host")]["paper_median"] == pytest.approx(host)
    assert by[("10,12,14", "cached")]["paper_median"] == pytest.approx(multi["results"]["10_12_14"]["median"])
    # Only the paper's 24 cells are compared, not the extra one.
    assert by[("14", "oracle")]["n"] == 24
    assert by[("14", "oracle")]["ours_median"] == pytest.approx(np.median(kl[0, 0, :24, 1]))


def test_a_file_made_with_the_old_p_user_last_is_refused():
    ds = substitute_ds(np.ones((1, 2, 4, 6)), [14], ["p_user_last", "p_last"], ["buffett__policy", "marx__policy", "yoda__haiku", "marx__haiku"],
                       model_id="google/gemma-2-2b-it", grid="xu2026-short", n_layers=26)
    assert compare(ds)  # files of this version say which definition they use
    del ds.attrs["position_convention"]
    with pytest.raises(SelectionError, match="before p_user_last took the paper's definition"):
        compare(ds)
    assert compare(ds.drop_sel(position="p_user_last"))


def test_controls_figure_draws_every_control_per_position():
    from nnsight_persona.plots import figures_for, plot_controls

    kl = np.random.default_rng(2).lognormal(size=(2, 3, 2, 6))
    ds = substitute_ds(kl, [2, 4], ["p_user_last", "p_last", "g1"], ["a", "b"])
    fig = plot_controls(ds)
    panels = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in panels] == ["p_user_last", "p_last", "g1"]
    for ax, position in zip(panels, ["p_user_last", "p_last", "g1"]):
        lines = {line.get_label(): line for line in ax.get_lines()}
        assert set(lines) == {"additive", "persona_only", "task_only", "baseline", "random"}
        median = np.median(kl[:, ["p_user_last", "p_last", "g1"].index(position), :, 3], axis=-1)
        np.testing.assert_allclose(lines["persona_only"].get_ydata(), median)
    assert "controls" in figures_for(ds)
