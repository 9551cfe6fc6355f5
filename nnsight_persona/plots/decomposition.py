"""Decomposition curves by layer: one panel per statistic, median over cells with its 95% bootstrap interval, one line per position."""

from __future__ import annotations

from typing import Sequence

import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import SelectionError

STATISTICS = ("cos_xy_sum", "cos_x_y", "inter_over_xy")


def plot_decomposition(ds: xr.Dataset, model: str | None = None, statistics: Sequence[str] = STATISTICS) -> Figure:
    """cos(Δ_XY, Δ_X + Δ_Y), cos(Δ_X, Δ_Y) and |Inter| / |Δ_XY| by layer (by default)."""
    from .style import figure_title, median_band_by_layer, new_figure, one_model

    missing = [s for s in statistics if s not in ds]
    if missing:
        raise SelectionError(f"statistic(s) {missing} not in the dataset; allowed: {sorted(ds.data_vars)}")
    ds = one_model(ds, model)
    fig = new_figure(len(statistics), panel_width=4.6)
    axes = fig.subplots(1, len(statistics), squeeze=False)[0]
    for ax, name in zip(axes, statistics):
        median_band_by_layer(ax, ds[name])
        ax.set_title(name, fontsize="medium")
        if name.startswith("cos"):
            ax.axhline(0, color="black", linewidth=0.6)
    axes[0].legend(title="position", fontsize="small")
    fig.suptitle(figure_title(ds, "persona × task decomposition"), fontsize="medium")
    return fig
