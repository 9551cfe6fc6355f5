"""Injection figure: can a cached residual stand in for the persona text? Median summed KL to the
persona run per condition and layer set, the gap closed relative to the unedited host, and (when
the run has one) the injection-site ablation by layer."""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import SelectionError

CONDITION_COLORS = {
    "oracle": "#1f77b4", "cached": "#d62728", "cached_rescaled": "#ff7f0e",
    "lm_oracle": "#aec7e8", "lm_cached": "#ff9896",
}
# Conditions without an edit: the same at every layer set, so drawn as horizontal reference lines.
REFERENCE_STYLES = {"host": {"color": "black", "linestyle": "--"}, "lm_host": {"color": "#7f7f7f", "linestyle": ":"}}
SITE_STYLES = {"oracle": {"linestyle": "-", "marker": "o"}, "cached": {"linestyle": "--", "marker": "s"}}
DIMS = ("layer_set", "cell", "condition")
SITE_DIMS = ("site_layer", "site_position", "cell", "site_condition")


def plot_gap_closed(ds: xr.Dataset, model: str | None = None) -> Figure:
    """KL per condition (bars over layer sets, 95% bootstrap interval of the median over cells), gap closed, and KL by injection site."""
    from .style import figure_title, new_figure, one_model

    _check(ds)
    ds = one_model(ds, model)
    ds = ds.squeeze("model", drop=True) if "model" in ds.dims else ds
    has_site = "kl_site" in ds and ds.sizes.get("site_layer", 0) > 0
    fig = new_figure(3 if has_site else 2, panel_width=5.2, height=4.2)
    axes = fig.subplots(1, 3 if has_site else 2, squeeze=False)[0]
    _kl_panel(axes[0], ds)
    _gap_panel(axes[1], ds)
    if has_site:
        _site_panel(axes[2], ds)
    # One legend for the first two panels: they share the conditions' colours and reference styles.
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncol=min(len(labels), 7), fontsize="small")
    fig.suptitle(figure_title(ds, "cached-residual injection into the host prompt"), fontsize="medium")
    return fig


def _check(ds: xr.Dataset) -> None:
    missing = [v for v in ("kl", "gap_closed") if v not in ds]
    if missing:
        raise SelectionError(f"the injection figure needs variable(s) {missing}; the dataset has {sorted(ds.data_vars)}")
    for name in ("kl", "gap_closed"):
        bad = [d for d in DIMS if d not in ds[name].dims]
        if bad:
            raise SelectionError(f"variable {name!r} lacks dim(s) {bad}; it has {list(ds[name].dims)}")
    if "kl_site" in ds:
        bad = [d for d in SITE_DIMS if d not in ds["kl_site"].dims]
        if bad:
            raise SelectionError(f"variable 'kl_site' lacks dim(s) {bad}; it has {list(ds['kl_site'].dims)}")


def _split(ds: xr.Dataset) -> tuple[list[str], list[str]]:
    conditions = [str(c) for c in ds["condition"].values]
    return [c for c in conditions if c in REFERENCE_STYLES], [c for c in conditions if c not in REFERENCE_STYLES]


def _color(condition: str, i: int) -> str:
    from .style import OTHER_COLORS

    return CONDITION_COLORS.get(condition, OTHER_COLORS[i % len(OTHER_COLORS)])


def _reference(summary: xr.Dataset, condition: str) -> float:
    """A no-edit condition's median over cells (identical at every layer set; the first one with a value)."""
    values = summary["median"].sel(condition=condition).values
    values = values[np.isfinite(values)]
    return float(values[0]) if values.size else float("nan")


def _kl_panel(ax, ds: xr.Dataset) -> None:
    """Grouped bars: one group per layer set, one bar per edited condition; error bars: the 95%
    bootstrap interval of the median over cells."""
    from ..analysis.intervals import median_with_interval as summarize
    from .style import axis_label

    summary = summarize(ds["kl"])
    references, edited = _split(ds)
    layer_sets = [str(s) for s in ds["layer_set"].values]
    x = np.arange(len(layer_sets))
    width = 0.8 / max(len(edited), 1)
    for i, condition in enumerate(edited):
        s = summary.sel(condition=condition)
        median = s["median"].values
        err = np.stack([median - s["ci_low"].values, s["ci_high"].values - median])
        ax.bar(x + (i - (len(edited) - 1) / 2) * width, median, width, yerr=err, capsize=2,
               color=_color(condition, i), label=condition, error_kw={"linewidth": 0.8})
    for condition in references:
        ax.axhline(_reference(summary, condition), label=f"{condition} (no edit)", linewidth=1.2,
                   **REFERENCE_STYLES[condition])
    ax.set_xticks(x, layer_sets)
    ax.set_xlabel("injected layer set")
    ax.set_ylabel(textwrap.fill(axis_label(ds["kl"]), 36))
    ax.set_title("median over cells, 95% bootstrap interval", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)


def _gap_panel(ax, ds: xr.Dataset) -> None:
    """Median gap closed by layer set, one line per condition with its 95% bootstrap band; 0 = the
    host, 1 = the persona run."""
    from ..analysis.intervals import median_with_interval as summarize
    from .style import axis_label

    gap = ds["gap_closed"]
    gap = gap.where(np.isfinite(gap))  # a host already at the target (KL 0) has no gap to close
    summary = summarize(gap)
    references, edited = _split(ds)
    layer_sets = [str(s) for s in ds["layer_set"].values]
    x = np.arange(len(layer_sets))
    for i, condition in enumerate(edited):
        ax.plot(x, summary["median"].sel(condition=condition).values, marker="o", markersize=4,
                color=_color(condition, i), label=condition)
        ax.fill_between(x, summary["ci_low"].sel(condition=condition).values,
                        summary["ci_high"].sel(condition=condition).values, color=_color(condition, i), alpha=0.15,
                        linewidth=0)
    for condition in references:
        if condition != "host":  # the host closes no gap by definition: it is the line at 0
            ax.axhline(_reference(summary, condition), label=f"{condition} (no edit)", linewidth=1.2,
                       **REFERENCE_STYLES[condition])
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(1, color="#2ca02c", linewidth=0.8)
    ax.annotate("persona text fully replaced", (0, 1), xycoords=("axes fraction", "data"), xytext=(3, -10),
                textcoords="offset points", fontsize="x-small", color="#2ca02c")
    ax.annotate("host (no edit)", (0, 0), xycoords=("axes fraction", "data"), xytext=(3, 3),
                textcoords="offset points", fontsize="x-small")
    ax.set_xticks(x, layer_sets)
    ax.set_xlim(-0.5, len(layer_sets) - 0.5)
    ax.set_xlabel("injected layer set")
    ax.set_ylabel(axis_label(ds["gap_closed"]))
    ax.set_title("median over cells, 95% bootstrap band", fontsize="medium")
    ax.grid(True, axis="y", alpha=0.3)


def _site_panel(ax, ds: xr.Dataset) -> None:
    """Median KL by injection layer, one line per (position, vector); the host median for reference."""
    from ..analysis.summary import summarize
    from .style import axis_label, position_color

    summary = summarize(ds["kl_site"])
    layers = ds["site_layer"].values
    for i, position in enumerate(str(p) for p in ds["site_position"].values):
        for condition in (str(c) for c in ds["site_condition"].values):
            median = summary["median"].sel(site_position=position, site_condition=condition).values
            ax.plot(layers, median, color=position_color(position, i), markersize=3.5,
                    label=f"{position}, {condition}", **SITE_STYLES.get(condition, {"marker": "^"}))
    if "host" in ds["condition"].values:
        ax.axhline(_reference(summarize(ds["kl"]), "host"), label="host (no edit)", linewidth=1.2,
                   **REFERENCE_STYLES["host"])
    values = summary["median"].values
    positive = values[np.isfinite(values) & (values > 0)]
    if positive.size and positive.max() / positive.min() > 100:
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xlabel(axis_label(ds["site_layer"], "injection layer"))
    ax.set_xticks(layers)
    ax.set_ylabel(textwrap.fill(axis_label(ds["kl_site"]), 36))
    ax.set_title("injection site (one layer, one position)", fontsize="medium")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", title="position, vector", title_fontsize="small")

