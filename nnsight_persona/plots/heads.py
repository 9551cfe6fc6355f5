"""Head-map figure of a head sweep: the median effect over cells of knocking out the persona span
in one head of one decoder block (the measure heads were ranked by, and the KL), with the top
heads numbered by rank, how much of the band's effect groups of the top heads account for, and the
top heads' effect with its 95% bootstrap interval over cells (the maps show medians only)."""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from ..core.errors import SelectionError

DIMS = ("block", "head", "cell")
N_LABELLED = 5  # the top heads numbered on the maps
N_INTERVALS = 8  # the top heads drawn with their intervals


def plot_head_map(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Block x head maps of the ranking measure and the KL; the top-k groups' fraction of the band."""
    from .style import figure_title, new_figure, one_model
    from ..studies.xu2026.heads import spec_measure

    _check(ds)
    ds = one_model(ds, model)
    ds = ds.squeeze("model", drop=True) if "model" in ds.dims else ds
    measure = spec_measure(ds)
    wide = max(4.2, 0.45 * ds.sizes["head"] + 2.2)
    fig = new_figure(1, panel_width=2 * wide + 3.8 + 4.4, height=max(3.6, 0.35 * ds.sizes["block"] + 2.2))
    axes = fig.subplots(1, 4, width_ratios=[wide, wide, 3.8, 4.4])
    variables = [measure] + ["kl"] * (measure != "kl")
    for ax, variable in zip(axes, variables):
        _map_panel(fig, ax, ds, variable, log=variable == "kl")
    if len(variables) == 1:
        axes[1].set_visible(False)
    _group_panel(axes[2], ds, measure)
    _top_heads_panel(axes[3], ds, measure)
    fig.suptitle(figure_title(ds, f"persona knockout one head at a time, blocks {_band(ds)}"), fontsize="medium")
    return fig


def _check(ds: xr.Dataset) -> None:
    missing = [v for v in ("kl", "fraction_of_band", "ranked_block", "ranked_head") if v not in ds]
    if missing:
        raise SelectionError(f"the head map needs variable(s) {missing}; the dataset has {sorted(ds.data_vars)}")
    bad = [d for d in DIMS if d not in ds["kl"].dims]
    if bad:
        raise SelectionError(f"variable 'kl' lacks dim(s) {bad}; it has {list(ds['kl'].dims)}")


def _band(ds: xr.Dataset) -> str:
    blocks = ds["block"].values
    return f"{int(blocks.min())}:{int(blocks.max()) + 1}"


def median_map(ds: xr.Dataset, variable: str) -> xr.DataArray:
    """The median over cells, [block, head], skipping NaN."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return ds[variable].median("cell", skipna=True).transpose("block", "head")


def _map_panel(fig, ax, ds: xr.Dataset, variable: str, log: bool) -> None:
    from .style import axis_label

    values = median_map(ds, variable).values
    norm = None
    if log and (values > 0).any():
        positive = values[values > 0]
        norm = LogNorm(vmin=max(positive.min(), positive.max() * 1e-6), vmax=positive.max())
        values = np.where(values > 0, values, np.nan)
    image = ax.imshow(values, aspect="auto", origin="lower", cmap="viridis", norm=norm, interpolation="nearest")
    ax.set_xticks(np.arange(ds.sizes["head"]), [str(h) for h in ds["head"].values])
    ax.set_yticks(np.arange(ds.sizes["block"]), [str(b) for b in ds["block"].values])
    ax.set_xlabel(axis_label(ds["head"], "head"))
    ax.set_ylabel(axis_label(ds["block"], "decoder block"))
    blocks = list(int(b) for b in ds["block"].values)
    for rank in range(min(N_LABELLED, ds.sizes["rank"])):
        row, col = blocks.index(int(ds["ranked_block"][rank])), int(ds["ranked_head"][rank])
        ax.text(col, row, str(rank + 1), ha="center", va="center", color="white", fontsize="small", fontweight="bold")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label(textwrap.fill("median " + axis_label(ds[variable]), 36), fontsize="small")


def _group_panel(ax, ds: xr.Dataset, measure: str) -> None:
    fraction = ds["fraction_of_band"].values
    x = np.arange(ds.sizes["group"])
    ax.bar(x, fraction, color=["#1f77b4"] * (len(x) - 1) + ["#7f7f7f"])
    ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [f"{g}" for g in ds["group"].values], rotation=30, ha="right")
    ax.set_ylabel(textwrap.fill(f"median {measure} of the group / of all heads of the band", 30))
    ax.set_title("top heads knocked out together", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)


def top_head_intervals(ds: xr.Dataset, measure: str, n: int = N_INTERVALS, seed: int = 0) -> list[dict]:
    """The top `n` ranked heads: block, head, and the median of `measure` over cells with its seeded
    95% percentile bootstrap interval over cells (analysis/statistics; cells where it is undefined
    dropped)."""
    from ..analysis.statistics import bootstrap_interval

    out = []
    for rank in range(min(n, ds.sizes["rank"])):
        block, head = int(ds["ranked_block"][rank]), int(ds["ranked_head"][rank])
        iv = bootstrap_interval(ds[measure].sel(block=block, head=head).values, "median", seed=seed)
        out.append({"block": block, "head": head, "estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n})
    return out


def _top_heads_panel(ax, ds: xr.Dataset, measure: str) -> None:
    from .style import axis_label, interval_bars

    rows = top_head_intervals(ds, measure)
    interval_bars(ax, np.arange(len(rows)), rows, "top heads", fmt="o", color="#1f77b4")
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(rows)), [f"{r['block']}.{r['head']}" for r in rows], rotation=30, ha="right")
    ax.set_xlabel("block.head, by rank")
    ax.set_ylabel(textwrap.fill("median " + axis_label(ds[measure]), 36))
    n = max((r["n"] for r in rows), default=0)
    ax.set_title(f"top heads, 95% CI over cells (n = {n})", fontsize="small")
    ax.grid(True, axis="y", alpha=0.3)
