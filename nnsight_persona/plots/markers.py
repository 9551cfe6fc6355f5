"""Behavioural markers: per condition, the fraction of cells whose continuation shows any persona
marker, and the mean number of distinct markers per cell."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError

CONDITION_COLORS = {"clean": "#1f77b4", "additive": "#2ca02c", "remove_persona": "#ff7f0e", "bare": "#7f7f7f"}


def plot_markers(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Two bar panels over the conditions present: any-marker rate and mean distinct markers."""
    from .style import OTHER_COLORS, figure_title, new_figure, one_model

    missing = [v for v in ("any_marker", "n_distinct") if v not in ds]
    if missing:
        raise PersonaError(f"the markers figure needs variable(s) {missing}; the dataset has {sorted(ds.data_vars)}")
    ds = one_model(ds, model)
    conditions = [str(c) for c in ds["condition"].values]
    colors = [CONDITION_COLORS.get(c, OTHER_COLORS[i % len(OTHER_COLORS)]) for i, c in enumerate(conditions)]
    any_marker = ds["any_marker"].astype(float).transpose(..., "condition").values.reshape(-1, len(conditions))
    distinct = ds["n_distinct"].astype(float).transpose(..., "condition").values.reshape(-1, len(conditions))
    counted = (~np.isnan(any_marker)).sum(0)
    hits = np.nansum(any_marker, 0)
    rate = np.where(counted > 0, hits / np.maximum(counted, 1), np.nan)
    mean_distinct = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in distinct.T])

    fig = new_figure(2, panel_width=4.6)
    ax_rate, ax_distinct = fig.subplots(1, 2)
    bars = ax_rate.bar(conditions, rate, color=colors)
    ax_rate.bar_label(bars, labels=[f"{int(h)}/{int(n)}" for h, n in zip(hits, counted)], fontsize="small")
    ax_rate.set_ylim(0, 1.1)
    ax_rate.set_ylabel("fraction of cells with any marker")
    bars = ax_distinct.bar(conditions, mean_distinct, color=colors)
    ax_distinct.bar_label(bars, fmt="%.2f", fontsize="small")
    ax_distinct.set_ylabel("mean distinct markers per cell")
    ax_distinct.set_ylim(0, max(1.0, float(np.nanmax(mean_distinct, initial=0)) * 1.2))
    for ax in (ax_rate, ax_distinct):
        ax.set_xlabel("condition")
        ax.tick_params(axis="x", labelrotation=20)
        ax.grid(True, axis="y", alpha=0.3)
    fig.suptitle(figure_title(ds, "persona markers in greedy continuations"), fontsize="medium")
    return fig
