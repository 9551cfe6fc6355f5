"""Figures from synthetic inject and knockout datasets (the layouts their experiments write)."""

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner
from matplotlib.figure import Figure

from nnsight_persona.cli import main
from nnsight_persona.core.errors import SelectionError
from nnsight_persona.plots import FIGURES, figures_for
from nnsight_persona.plots.inject import plot_gap_closed
from nnsight_persona.plots.knockout import plot_knockout_by_band
from nnsight_persona.storage.store import save_dataset
from test_decompose import POSITIONS, cell_coords, provenance

INJECT_CONDITIONS = ["host", "oracle", "cached", "cached_rescaled", "lm_host", "lm_oracle", "lm_cached"]
EDITED = [c for c in INJECT_CONDITIONS if c not in ("host", "lm_host")]
LAYER_SETS = [(2,), (1, 2), (1, 2, 3)]
SITE_LAYERS = [1, 2, 3]
KNOCKOUT_CONDITIONS = ["persona", "control", "none"]
BANDS = [(0, 1), (1, 2), (2, 3), (0, 3)]


def make_inject(model_id="toy", grid="toy", site=True, seed=0):
    """The layout of experiments.inject._dataset: host KL shared by every layer set, gap = 1 - KL / KL_host."""
    rng = np.random.default_rng(seed)
    coords = cell_coords()
    n_cells, n_norm = len(coords["cell"]), len(sorted({L for s in LAYER_SETS for L in s}))
    kl = rng.lognormal(mean=1, sigma=0.5, size=(len(LAYER_SETS), n_cells, len(INJECT_CONDITIONS)))
    for c in ("host", "lm_host"):
        kl[:, :, INJECT_CONDITIONS.index(c)] = kl[0, :, INJECT_CONDITIONS.index(c)] * 3
    kl[:, :, INJECT_CONDITIONS.index("oracle")] *= 0.1
    gap_closed = 1 - kl / kl[:, :, [0]]
    data = {
        "kl": (("model", "layer_set", "cell", "condition"), kl[None]),
        "gap_closed": (("model", "layer_set", "cell", "condition"), gap_closed[None]),
        "norm_clean": (("model", "layer", "cell"), rng.uniform(10, 20, (1, n_norm, n_cells))),
        "norm_host": (("model", "layer", "cell"), rng.uniform(10, 20, (1, n_norm, n_cells))),
        "norm_injected": (("model", "layer", "cell"), rng.uniform(10, 20, (1, n_norm, n_cells))),
        "prompt_length": (("model", "cell", "prompt"), rng.integers(10, 20, (1, n_cells, 3))),
    }
    coords.update(model=[model_id], layer_set=[",".join(map(str, s)) for s in LAYER_SETS],
                  condition=INJECT_CONDITIONS, layer=np.arange(1, n_norm + 1, dtype=np.int64),
                  prompt=["target", "host", "length_matched_host"])
    if site:
        kl_site = rng.lognormal(mean=0, sigma=0.5, size=(1, len(SITE_LAYERS), len(POSITIONS), n_cells, 2))
        kl_site *= np.array([0.01, 1.0, 10.0])[:, None, None, None]  # spans decades: a log axis
        data["kl_site"] = (("model", "site_layer", "site_position", "cell", "site_condition"), kl_site)
        coords.update(site_layer=np.array(SITE_LAYERS, dtype=np.int64), site_position=POSITIONS,
                      site_condition=["oracle", "cached"])
    ds = xr.Dataset(data, coords=coords, attrs=provenance(
        "inject", model_id, grid, layer_sets=[list(s) for s in LAYER_SETS], site_layers=SITE_LAYERS * site))
    ds["kl"].attrs.update(long_name="summed KL(target || host run) over 10 tokens", units="nats")
    ds["gap_closed"].attrs.update(long_name="gap closed, 1 - KL / KL(host)")
    if site:
        ds["kl_site"].attrs.update(long_name="summed KL with the injection at another site", units="nats")
    return ds


def make_knockout(model_id="toy", grid="toy", markers=True, seed=0):
    """The layout of experiments.knockout._dataset; 'none' equals the clean run (KL 0)."""
    rng = np.random.default_rng(seed)
    coords = cell_coords()
    dims = ("model", "band", "cell", "condition")
    shape = (1, len(BANDS), len(coords["cell"]), len(KNOCKOUT_CONDITIONS))
    kl = rng.lognormal(mean=0, sigma=1, size=shape)
    kl[..., KNOCKOUT_CONDITIONS.index("none")] = 0.0
    data = {
        "kl": (dims, kl),
        "n_keys": (("model", "cell", "condition"), np.tile([4, 4, 0], (1, len(coords["cell"]), 1))),
    }
    if markers:
        n_distinct = rng.integers(0, 3, size=shape)
        data.update(text=(dims, np.full(shape, "some words", dtype=object)),
                    any_marker=(dims, (n_distinct > 0).astype(np.int8)), n_distinct=(dims, n_distinct))
    coords.update(model=[model_id], band=[f"{s}:{e}" for s, e in BANDS],
                  band_start=("band", np.array([s for s, _ in BANDS], dtype=np.int64)),
                  band_end=("band", np.array([e for _, e in BANDS], dtype=np.int64)),
                  condition=KNOCKOUT_CONDITIONS)
    ds = xr.Dataset(data, coords=coords, attrs=provenance("knockout", model_id, grid, bands=[list(b) for b in BANDS]))
    ds["kl"].attrs.update(long_name="summed KL(clean || knocked out) over 10 tokens", units="nats")
    ds["band"].attrs.update(long_name="decoder blocks START:END")
    if markers:
        ds["any_marker"].attrs.update(long_name="any own-persona marker in the continuation")
    return ds


def labelled(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def test_gap_closed_figure_panels_bars_and_lines():
    ds = make_inject(model_id="org/tiny-model")
    fig = plot_gap_closed(ds)
    assert isinstance(fig, Figure)
    kl_ax, gap_ax, site_ax = fig.axes
    assert "org/tiny-model" in fig._suptitle.get_text() and "grid toy" in fig._suptitle.get_text()
    # bars: one per edited condition in each layer-set group, medians over cells
    assert len(kl_ax.patches) == len(EDITED) * len(LAYER_SETS)
    heights = np.array([p.get_height() for p in kl_ax.patches]).reshape(len(EDITED), len(LAYER_SETS))
    expected = np.median(ds.kl.sel(condition=EDITED).values[0], axis=1).T
    np.testing.assert_allclose(heights, expected)
    assert set(labelled(kl_ax)) == {"host (no edit)", "lm_host (no edit)"}
    np.testing.assert_allclose(labelled(kl_ax)["host (no edit)"].get_ydata(), np.median(ds.kl.values[0, 0, :, 0]))
    assert "nats" in kl_ax.get_ylabel()
    assert [t.get_text() for t in kl_ax.get_xticklabels()] == ["2", "1,2", "1,2,3"]
    # gap closed: a line per edited condition, the lm_host reference, and the lines at 0 and 1
    lines = labelled(gap_ax)
    assert set(lines) == set(EDITED) | {"lm_host (no edit)"}
    np.testing.assert_allclose(lines["cached"].get_ydata(), np.median(ds.gap_closed.sel(condition="cached").values[0], axis=1))
    levels = {tuple(line.get_ydata()) for line in gap_ax.get_lines() if line.get_label().startswith("_")}
    assert {(0, 0), (1, 1)} <= levels
    assert gap_ax.get_ylabel().startswith("gap closed")
    # site panel: one line per (position, vector) and the host reference; log y (values span decades)
    assert len(labelled(site_ax)) == len(POSITIONS) * 2 + 1
    assert site_ax.get_yscale() == "log"


def test_gap_closed_figure_without_sites_and_with_nonfinite_gaps():
    ds = make_inject(site=False)
    ds["gap_closed"][0, 0, 0, 1] = -np.inf  # a host already at the target leaves no gap to close
    fig = plot_gap_closed(ds)
    assert len(fig.axes) == 2
    assert np.isfinite(labelled(fig.axes[1])["oracle"].get_ydata()).all()


def test_gap_closed_figure_checks_its_input():
    with pytest.raises(SelectionError, match="gap_closed"):
        plot_gap_closed(make_inject().drop_vars("gap_closed"))
    with pytest.raises(SelectionError, match="nope"):
        plot_gap_closed(make_inject(), model="nope")


def test_knockout_figure_has_kl_and_marker_panels():
    ds = make_knockout(model_id="org/tiny-model")
    fig = plot_knockout_by_band(ds)
    kl_ax, marker_ax = fig.axes
    assert "org/tiny-model" in kl_ax.get_title()
    assert len(kl_ax.get_lines()) == len(marker_ax.get_lines()) == len(KNOCKOUT_CONDITIONS)
    assert len(kl_ax.collections) == len(KNOCKOUT_CONDITIONS)  # the IQR bands
    assert kl_ax.get_yscale() == "log" and "nats" in kl_ax.get_ylabel()
    assert [t.get_text() for t in marker_ax.get_xticklabels()] == ["0:1", "1:2", "2:3", "0:3"]
    assert "none (KL 0, not shown)" in labelled(kl_ax)
    np.testing.assert_allclose(labelled(kl_ax)["persona"].get_ydata(), np.median(ds.kl.values[0, :, :, 0], axis=1))
    assert marker_ax.get_ylim() == (0, 1)
    np.testing.assert_allclose(labelled(marker_ax)["control"].get_ydata(), ds.any_marker.values[0, :, :, 1].mean(1))


def _plain_bootstrap_mean(values, n=2000, seed=0):
    """A percentile bootstrap of the mean written here from numpy alone (no package helper)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(values), size=(n, len(values)))
    means = values[draws].mean(axis=1)
    return np.quantile(means, [0.025, 0.975])


def test_knockout_figure_draws_evidence_with_intervals_over_cells():
    ds = make_knockout()
    rng = np.random.default_rng(3)
    evidence = rng.normal(0.1, 0.2, size=ds.kl.shape)
    evidence[..., KNOCKOUT_CONDITIONS.index("persona")] -= 0.3  # the persona knockout removes evidence
    ds["evidence"] = (ds.kl.dims, evidence)
    fig = plot_knockout_by_band(ds)
    evidence_ax = fig.axes[-1]
    assert "evidence" in evidence_ax.get_ylabel()
    lines = labelled(evidence_ax)
    assert set(lines) == set(KNOCKOUT_CONDITIONS)
    np.testing.assert_allclose(lines["persona"].get_ydata(), evidence[0, :, :, 0].mean(axis=1))
    # the band of each condition: the interval over cells (not over bands or conditions)
    band = evidence_ax.collections[0].get_paths()[0].vertices[:, 1]
    for b in range(len(BANDS)):
        low, high = _plain_bootstrap_mean(evidence[0, b, :, 0])
        spread = high - low
        assert np.min(np.abs(band - low)) < 0.2 * spread and np.min(np.abs(band - high)) < 0.2 * spread


def test_knockout_figure_without_markers_has_one_panel():
    fig = plot_knockout_by_band(make_knockout(markers=False))
    (ax,) = fig.axes
    assert len(ax.get_lines()) == len(KNOCKOUT_CONDITIONS)
    assert "toy" in ax.get_title()
    with pytest.raises(SelectionError, match="kl"):
        plot_knockout_by_band(make_knockout().drop_vars("kl"))


def test_registry_and_figures_for():
    assert FIGURES["inject"] == {"gap_closed": plot_gap_closed}
    assert FIGURES["knockout"] == {"knockout_by_band": plot_knockout_by_band}
    assert list(figures_for(make_inject())) == ["gap_closed"]
    assert list(figures_for(make_knockout())) == ["knockout_by_band"]
    two = xr.concat([make_knockout(model_id="a/x"), make_knockout(model_id="b/y")], dim="model")
    assert list(figures_for(two)) == ["knockout_by_band-a_x", "knockout_by_band-b_y"]


def test_plot_command_writes_inject_and_knockout_pngs(tmp_path):
    files = [
        save_dataset(make_inject(), tmp_path / "inject-toy.nc"),
        save_dataset(make_knockout(), tmp_path / "knockout-toy.nc"),
        save_dataset(make_knockout(markers=False), tmp_path / "knockout-nomarkers.nc"),
    ]
    out = tmp_path / "figs"
    result = CliRunner().invoke(main, ["plot", *map(str, files), "--out-dir", str(out)])
    assert result.exit_code == 0, result.output
    for stem in ("inject-toy-gap_closed", "knockout-toy-knockout_by_band", "knockout-nomarkers-knockout_by_band"):
        assert (out / f"{stem}.png").stat().st_size > 0
