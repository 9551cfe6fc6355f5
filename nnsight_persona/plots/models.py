"""Several models in one figure: one panel per position, one line per model, the median over cells
by depth (layer / n_layers, so models of different depths share the x axis). For datasets of
several models (results.open_results): substitute (a condition's KL) and decompose (a statistic)."""

from __future__ import annotations

import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError

VARIABLE = {"substitute": ("kl", {"condition": "additive"}, True), "decompose": ("cos_xy_sum", {}, False)}


def plot_across_models(ds: xr.Dataset, model: str | None = None) -> Figure:
    """`model` is ignored: every model of the dataset is drawn."""
    from ..analysis.intervals import median_with_interval as summarize
    from ..storage.results import n_layers_of, own_layers
    from .style import OTHER_COLORS, axis_label, figure_title, new_figure

    experiment = ds.attrs.get("experiment")
    if experiment not in VARIABLE:
        raise PersonaError(f"no across-models figure for a {experiment} dataset; allowed: {sorted(VARIABLE)}")
    name, selection, log = VARIABLE[experiment]
    positions = [str(p) for p in ds.position.values]
    fig = new_figure(len(positions), panel_width=3.6, height=3.6)
    axes = fig.subplots(1, len(positions), sharey=True, squeeze=False)[0]
    models = [str(m) for m in ds["model"].values]
    for i, model in enumerate(models):
        one = own_layers(ds.sel(model=[model]))
        da = one[name].sel(selection).isel(model=0, drop=True)
        depth = n_layers_of(ds, model)
        for ax, position in zip(axes, positions):
            s = summarize(da.sel(position=position))
            x = s["layer"].values / depth
            color = OTHER_COLORS[i % len(OTHER_COLORS)]
            ax.plot(x, s["median"].values, marker="o", markersize=3, color=color, label=f"{model} ({depth} layers)")
            ax.fill_between(x, s["ci_low"].values, s["ci_high"].values, color=color, alpha=0.15, linewidth=0)
    for ax, position in zip(axes, positions):
        ax.set_title(position, fontsize="medium")
        ax.set_xlabel("depth (layer / n_layers)")
        ax.grid(True, alpha=0.3)
        if log:
            ax.set_yscale("log", nonpositive="mask")
    what = f"{name} " + ", ".join(f"{v}" for v in selection.values())
    axes[0].set_ylabel(axis_label(ds[name]))
    axes[-1].legend(fontsize="x-small", title="model", title_fontsize="x-small")
    fig.suptitle(figure_title(ds, f"{what.strip()}: {len(models)} models, median over cells"), fontsize="medium")
    return fig
