"""The additive condition against its controls, and compare for models and experiments the paper
does not pair directly (another model by depth; the host-injection test)."""

import json
from importlib import resources

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
    # Layer 4: additive 0.001, best control (task_only) 0.5: a 500x margin.
    kl[1, 0, :, 0] = [0.001, 0.002, 0.0005]
    kl[1, 0, :, 4] = [0.5, 0.4, 0.6]
    kl[1, 0, 1, 2] = 0.01  # one cell where the baseline is close to the additive: a lost cell
    rows = additivity_rows(substitute_ds(kl, [2, 4], ["p_last"], cells))
    first, second = rows
    assert first["best_control"] == "persona_only" and first["ratio"] == pytest.approx(0.05 / 0.01)
    assert not first["additive_holds"] and first["wins"] == pytest.approx(1 / 3)  # cell c: 0.005 vs 0.06
    assert second["best_control"] == "task_only" and second["ratio"] == pytest.approx(0.5 / 0.001)
    assert second["additive_holds"] and second["wins"] == pytest.approx(2 / 3)
    assert additivity_rows(substitute_ds(kl, [2, 4], ["p_last"], cells), margin=600)[1]["additive_holds"] is False


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
    assert "by >= 10x at 1 of 1 sites (p_last@4)" in result.output


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
