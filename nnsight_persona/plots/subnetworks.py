"""Figures of `subnetwork eval`: alignment against sparsity, and persona x mask."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

MEASURES = ("p_matching", "marker_rate")


def plot_alignment_vs_sparsity(ds: xr.Dataset, model: str | None = None) -> Figure:
    """One column per persona, one row per measure: the persona's own mask and the opposite
    persona's mask against sparsity, the random masks (mean, min-max band), and the unpruned model
    without and with the persona prompt as horizontal lines."""
    from ..analysis.subnetworks import comparison
    from .style import axis_label, figure_title, new_figure

    personas = [str(p) for p in ds.persona.values]
    fig = new_figure(len(personas), panel_width=4.4, height=6.4)
    axes = np.array(fig.subplots(len(MEASURES), len(personas), squeeze=False))
    for row, measure in enumerate(MEASURES):
        table = comparison(ds, measure)
        for col, persona in enumerate(personas):
            ax = axes[row, col]
            rows = [r for r in table if r["persona"] == persona]
            s = [r["sparsity"] for r in rows]
            ax.plot(s, [r["own mask"] for r in rows], "o-", color="#d62728", label="own mask")
            ax.plot(s, [r["opposite mask"] for r in rows], "s--", color="#1f77b4", label="opposite mask")
            rand = [[float(ds[measure].sel(variant=v, persona=persona)) for v in ds.variant.values[
                (ds.kind.values.astype(str) == "random") & (ds.sparsity.values == sp)]] for sp in s]
            ax.plot(s, [np.mean(r) if r else np.nan for r in rand], "^:", color="#7f7f7f", label="random mask (mean)")
            ax.fill_between(s, [min(r) if r else np.nan for r in rand], [max(r) if r else np.nan for r in rand],
                            color="#7f7f7f", alpha=0.2, linewidth=0)
            ax.axhline(rows[0]["unpruned"], color="black", linewidth=1, label="unpruned, no prompt")
            if np.isfinite(rows[0]["prompt"]):
                ax.axhline(rows[0]["prompt"], color="#2ca02c", linewidth=1, linestyle="-.", label="unpruned + prompt")
            ax.set_xlabel("sparsity")
            ax.set_ylabel(axis_label(ds[measure]), fontsize="small")
            ax.set_title(f"{persona}", fontsize="medium")
            ax.set_ylim(-0.05, 1.05)
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize="x-small")
    fig.suptitle(figure_title(ds, f"persona alignment against sparsity, no persona prompt ({ds.attrs.get('mask_variant', '')})"),
                 fontsize="medium")
    return fig


def plot_persona_by_mask(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Heatmap of p_matching: variants (random masks averaged per sparsity) x evaluated persona."""
    from .style import figure_title, new_figure

    labels, values = [], []
    kinds = ds.kind.values.astype(str)
    seen = set()
    for label, kind, s in zip(ds.variant.values.astype(str), kinds, ds.sparsity.values):
        if kind == "random":
            if s in seen:
                continue
            seen.add(s)
            picked = ds.p_matching.isel(variant=np.flatnonzero((kinds == "random") & (ds.sparsity.values == s)))
            labels.append(f"random@{float(s):g} (mean)")
            values.append(picked.mean("variant").values)
        else:
            labels.append(label)
            values.append(ds.p_matching.sel(variant=label).values)
    grid = np.array(values)
    personas = [str(p) for p in ds.persona.values]
    fig = new_figure(1, panel_width=2.2 + 1.3 * len(personas), height=1.2 + 0.32 * len(labels))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
    for i in range(grid.shape[0]):
        for j in range(grid.shape[1]):
            ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize="x-small")
    ax.set_xticks(range(len(personas)), personas)
    ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
    ax.set_xlabel("persona evaluated (A/B items, no prompt unless prompt:P)")
    fig.colorbar(image, ax=ax, label="p(matching answer)")
    fig.suptitle(figure_title(ds, "persona x mask"), fontsize="small")
    return fig
