"""Substitution KL of the additive vector beside its controls: one panel per position, one line per
condition (median over cells by layer, 95% bootstrap band). Additivity means the additive line lies well
below persona_only, task_only and baseline; where it does not, a small additive KL shows nothing."""

from __future__ import annotations

import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError

CONDITION_STYLE = {
    "additive": ("#1f77b4", "-"),
    "persona_only": ("#2ca02c", "--"),
    "task_only": ("#ff7f0e", "--"),
    "baseline": ("#7f7f7f", ":"),
    "random": ("#9467bd", ":"),
    "oracle": ("#000000", "-."),
}


def plot_controls(ds: xr.Dataset, model: str | None = None) -> Figure:
    from ..analysis.intervals import median_with_interval as summarize
    from .style import axis_label, figure_title, new_figure, one_model

    if "kl" not in ds or "condition" not in ds.dims:
        raise PersonaError(f"the controls figure needs a substitute dataset; this one has {sorted(ds.data_vars)}")
    ds = one_model(ds, model)
    conditions = [c for c in CONDITION_STYLE if c in [str(v) for v in ds.condition.values] and c != "oracle"]
    positions = [str(p) for p in ds.position.values]
    fig = new_figure(len(positions), panel_width=3.6, height=3.6)
    axes = fig.subplots(1, len(positions), sharey=True, squeeze=False)[0]
    kl = ds["kl"].squeeze("model", drop=True) if "model" in ds["kl"].dims else ds["kl"]
    for ax, position in zip(axes, positions):
        for condition in conditions:
            s = summarize(kl.sel(position=position, condition=condition))
            color, style = CONDITION_STYLE[condition]
            layers = s["layer"].values
            ax.plot(layers, s["median"].values, style, marker="o", markersize=3, color=color, label=condition)
            ax.fill_between(layers, s["ci_low"].values, s["ci_high"].values, color=color, alpha=0.12, linewidth=0)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_title(position, fontsize="medium")
        ax.set_xlabel(axis_label(ds["layer"], "layer"))
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(axis_label(ds["kl"]))
    axes[-1].legend(fontsize="x-small", title="condition", title_fontsize="x-small")
    fig.suptitle(figure_title(ds, "substitution KL: the additive vector and its controls"), fontsize="medium")
    return fig
