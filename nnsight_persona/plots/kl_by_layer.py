"""The paper's Figure 1: substitution KL by layer, median over cells with its 95% bootstrap interval, one line per position."""

from __future__ import annotations

import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError, SelectionError


def plot_kl_by_layer(ds: xr.Dataset, condition: str = "additive", model: str | None = None) -> Figure:
    """Median KL(clean || patched) over cells by layer for one substitution condition; log y scale."""
    from .style import figure_title, median_band_by_layer, new_figure, one_model

    if "kl" not in ds:
        raise PersonaError(f"the KL figure needs a substitute dataset with variable 'kl'; this one has {sorted(ds.data_vars)}")
    conditions = [str(c) for c in ds["condition"].values]
    if condition not in conditions:
        raise SelectionError(f"condition {condition!r} not in the dataset; allowed: {conditions}")
    ds = one_model(ds, model)
    kl = ds["kl"].sel(condition=condition, drop=True)
    fig = new_figure()
    ax = fig.add_subplot()
    median_band_by_layer(ax, kl)
    # KL can be exactly 0 (e.g. where all four prompts share the token); log scale leaves those out.
    ax.set_yscale("log", nonpositive="mask")
    ax.legend(title="position", fontsize="small")
    ax.set_title(figure_title(ds, f"substitution KL, {condition}"), fontsize="medium")
    return fig
