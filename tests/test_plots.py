"""Figures from synthetic substitute, decompose and markers datasets, and the `plot` command."""

import numpy as np
import pytest
import xarray as xr
from pathlib import Path
from click.testing import CliRunner
from matplotlib.figure import Figure

from nnsight_persona.analysis import decompose
from nnsight_persona.commands.analysis import plot_command
from nnsight_persona.core.errors import SelectionError
from nnsight_persona.plots import FIGURES, figures_for, plot_decomposition, plot_kl_by_layer, plot_markers, save_figure
from nnsight_persona.storage.store import save_dataset
from test_decompose import POSITIONS, cell_coords, make_capture, provenance

SUBSTITUTE_CONDITIONS = ["additive", "oracle", "baseline", "persona_only", "task_only", "random"]
MARKER_CONDITIONS = ["clean", "additive", "remove_persona", "bare"]


def make_substitute(model_id="toy", grid="toy", layers=(0, 2, 4, 6), seed=0):
    rng = np.random.default_rng(seed)
    n_cells = len(cell_coords()["cell"])
    kl = rng.lognormal(mean=-1, sigma=1, size=(1, len(layers), len(POSITIONS), n_cells, len(SUBSTITUTE_CONDITIONS)))
    kl[..., 1] = 0.0  # oracle
    ds = xr.Dataset(
        {"kl": (("model", "layer", "position", "cell", "condition"), kl)},
        coords={"model": [model_id], "layer": np.array(layers), "position": POSITIONS,
                "condition": SUBSTITUTE_CONDITIONS, **cell_coords()},
        attrs=provenance("substitute", model_id, grid),
    )
    ds["kl"].attrs.update(long_name="KL(clean || patched)", units="nats")
    return ds


def make_markers(model_id="toy", grid="toy", conditions=MARKER_CONDITIONS, personas=None, tasks=None, seed=0):
    coords = cell_coords(*(a for a in (personas, tasks) if a is not None))
    rng = np.random.default_rng(seed)
    shape = (1, len(coords["cell"]), len(conditions))
    n_distinct = rng.integers(0, 4, size=shape)
    n_distinct[..., -1] = 0
    ds = xr.Dataset(
        {
            "any_marker": (("model", "cell", "condition"), (n_distinct > 0).astype(np.int64)),
            "n_distinct": (("model", "cell", "condition"), n_distinct),
        },
        coords={"model": [model_id], "condition": list(conditions), **coords},
        attrs=provenance("markers", model_id, grid),
    )
    ds["n_distinct"].attrs["long_name"] = "number of distinct persona markers found"
    return ds


def test_kl_figure_has_a_line_per_position_on_log_scale():
    fig = plot_kl_by_layer(make_substitute())
    assert isinstance(fig, Figure)
    (ax,) = fig.axes
    assert len(ax.get_lines()) == len(POSITIONS)
    assert ax.get_yscale() == "log"
    assert "nats" in ax.get_ylabel() and "layer" in ax.get_xlabel()
    assert "toy" in ax.get_title() and "additive" in ax.get_title()
    assert len(ax.collections) == len(POSITIONS)  # the IQR bands


def test_kl_figure_condition_is_selectable_and_checked():
    ds = make_substitute()
    fig = plot_kl_by_layer(ds, condition="random")
    assert "random" in fig.axes[0].get_title()
    median = np.median(ds.kl.sel(condition="random", position="g1").values[0], axis=-1)
    np.testing.assert_allclose(fig.axes[0].get_lines()[2].get_ydata(), median)
    with pytest.raises(SelectionError, match="additive"):
        plot_kl_by_layer(ds, condition="nope")


def test_decomposition_figure_has_three_panels_of_position_lines():
    fig = plot_decomposition(decompose(make_capture()))
    assert len(fig.axes) == 3
    for ax in fig.axes:
        assert len(ax.get_lines()) >= len(POSITIONS)  # plus a zero line on the cosine panels
        assert ax.get_xlabel().startswith("layer")
    assert [ax.get_title() for ax in fig.axes] == ["cos_xy_sum", "cos_x_y", "inter_over_xy"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["cos(Δ_XY, Δ_X + Δ_Y)", "cos(Δ_X, Δ_Y)", "|Inter| / |Δ_XY|"]


def test_markers_figure_has_a_bar_per_condition():
    ds = make_markers()
    fig = plot_markers(ds)
    rate_ax, distinct_ax = fig.axes
    assert len(rate_ax.patches) == len(distinct_ax.patches) == 4
    heights = [p.get_height() for p in rate_ax.patches]
    np.testing.assert_allclose(heights, ds.any_marker.values[0].mean(0))
    fig = plot_markers(ds.sel(condition=["clean", "bare"]))
    assert len(fig.axes[0].patches) == 2


def test_registry_covers_each_experiment():
    assert set(FIGURES) == {"substitute", "decompose", "markers", "inject", "knockout", "heads", "subnetwork-eval",
                            "vectors-steer", "vectors-extract"}
    assert list(figures_for(make_markers())) == ["markers"]


def test_save_figure_writes_png_and_pdf(tmp_path):
    paths = save_figure(plot_markers(make_markers()), tmp_path / "sub" / "m", pdf=True)
    assert [p.name for p in paths] == ["m.png", "m.pdf"]
    assert all(p.stat().st_size > 0 for p in paths)


def test_plot_command_writes_figures(tmp_path):
    files = [
        save_dataset(make_substitute(), tmp_path / "substitute-toy.nc"),
        save_dataset(decompose(make_capture()), tmp_path / "decompose-toy.nc"),
        save_dataset(make_markers(), tmp_path / "markers-toy.nc"),
    ]
    runner = CliRunner()
    result = runner.invoke(plot_command, [str(f) for f in files])
    assert result.exit_code == 0, result.output
    expected = ["substitute-toy-kl_by_layer", "decompose-toy-decomposition", "markers-toy-markers"]
    for stem in expected:
        png = tmp_path / f"{stem}.png"
        assert png.stat().st_size > 0 and str(png) in result.output
        assert not (tmp_path / f"{stem}.pdf").exists()
    out = tmp_path / "figs"
    result = runner.invoke(plot_command, [*map(str, files), "--out-dir", str(out), "--pdf"])
    assert result.exit_code == 0, result.output
    for stem in expected:
        for suffix in (".png", ".pdf"):
            assert (out / f"{stem}{suffix}").stat().st_size > 0


def test_plot_command_rejects_a_capture_clearly(tmp_path):
    path = save_dataset(make_capture(), tmp_path / "capture-toy.nc")
    result = CliRunner().invoke(plot_command, [str(path)])
    assert result.exit_code != 0
    assert "capture" in result.output and "decompose" in result.output


def test_plot_draws_the_persona_vector_figures_from_their_files():
    """`plot` covers the steer and elicitation results too (the file alone says what to draw)."""
    from nnsight_persona.plots import figure_names, figures_for
    from nnsight_persona.storage.store import load_dataset

    root = Path(__file__).resolve().parent.parent / "artifacts"
    steer = load_dataset(root / "smollm2" / "vectors-steer.nc")  # scored by evidence
    assert figure_names(steer) == ["steering"]
    fig = figures_for(steer)["steering"]
    assert "evidence" in fig._suptitle.get_text()
    assert figure_names(load_dataset(root / "toy" / "vectors-elicitation.nc")) == ["elicitation"]
    assert figure_names(load_dataset(root / "toy" / "vectors-extract.nc")) == []  # one variant: nothing to compare
