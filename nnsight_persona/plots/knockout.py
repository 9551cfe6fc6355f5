"""Attention-knockout figure: by band of decoder blocks, one line per condition (the persona span
and its controls), the median KL to each condition's reference run, the KL per key knocked out,
the persona-specific shift (with the persona knockout's toward-BY measure), and (when the run
tested markers) how often persona markers survive the knockout, and (when its answers were scored)
their mean persona evidence with a 95% bootstrap interval over cells. Panels are drawn for the
variables a result has (results of earlier versions hold the KL only)."""

from __future__ import annotations

import textwrap

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import SelectionError

CONDITION_COLORS = {
    "persona": "#d62728", "task_span": "#1f77b4", "control": "#1f77b4", "neutral_span": "#2ca02c",
    "template_span": "#9467bd", "baseline_persona": "#ff7f0e", "none": "#7f7f7f",
}
DIMS = ("band", "cell", "condition")


def plot_knockout_by_band(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Median KL by band with its 95% bootstrap interval (log y where positive); below it the any-marker rate when present."""
    from .style import figure_title, new_figure, one_model

    _check(ds)
    ds = one_model(ds, model)
    ds = ds.squeeze("model", drop=True) if "model" in ds.dims else ds
    panels = [_kl_panel] + [_per_key_panel] * ("kl_per_key" in ds) + [_shift_panel] * ("persona_shift" in ds)
    panels += [_marker_panel] * ("any_marker" in ds) + [_evidence_panel] * ("evidence" in ds)
    fig = new_figure(1, panel_width=max(5.5, 0.7 * ds.sizes["band"] + 2), height=0.6 + 2.9 * len(panels))
    axes = fig.subplots(len(panels), 1, squeeze=False, sharex=True)[:, 0]
    for ax, panel in zip(axes, panels):
        panel(ax, ds)
    axes[-1].set_xlabel(ds["band"].attrs.get("long_name", "band"))
    axes[0].set_title(figure_title(ds, "attention knockout of the persona span"), fontsize="medium")
    return fig


def _check(ds: xr.Dataset) -> None:
    if "kl" not in ds:
        raise SelectionError(f"the knockout figure needs variable 'kl'; the dataset has {sorted(ds.data_vars)}")
    for name in [v for v in ("kl", "any_marker", "evidence") if v in ds]:
        bad = [d for d in DIMS if d not in ds[name].dims]
        if bad:
            raise SelectionError(f"variable {name!r} lacks dim(s) {bad}; it has {list(ds[name].dims)}")


def _color(condition: str, i: int) -> str:
    from .style import OTHER_COLORS

    return CONDITION_COLORS.get(condition, OTHER_COLORS[i % len(OTHER_COLORS)])


def _kl_panel(ax, ds: xr.Dataset, variable: str = "kl", legend: bool = True) -> None:
    from ..analysis.intervals import median_with_interval as summarize
    from .style import axis_label

    summary = summarize(ds[variable])
    x = np.arange(ds.sizes["band"])
    for i, condition in enumerate(str(c) for c in ds["condition"].values):
        s = summary.sel(condition=condition)
        median = s["median"].values
        color = _color(condition, i)
        label = condition
        if not (median > 0).any():  # e.g. 'none', which equals the clean run: KL 0 has no place on a log axis
            label += " (KL 0, not shown)"
        ax.plot(x, median, marker="o", markersize=3.5, color=color, label=label)
        ax.fill_between(x, s["ci_low"].values, s["ci_high"].values, color=color, alpha=0.18, linewidth=0)
    values = summary["median"].values
    if (values > 0).any():
        ax.set_yscale("log", nonpositive="mask")
    ax.set_xticks(x, [str(b) for b in ds["band"].values])
    ax.set_ylabel(textwrap.fill(axis_label(ds[variable]), 32))
    ax.grid(True, alpha=0.3)
    if legend:
        handles, labels = ax.get_legend_handles_labels()
        ax.legend(handles, [_with_key_count(ds, label) for label in labels], fontsize="small", title="keys knocked out")


def _with_key_count(ds: xr.Dataset, label: str) -> str:
    """'persona' -> 'persona (20 keys)' (or a range over cells), from n_keys when the result has it."""
    if "n_keys" not in ds or label not in [str(c) for c in ds["condition"].values]:
        return label
    keys = ds["n_keys"].sel(condition=label)
    low, high = int(keys.min()), int(keys.max())
    return f"{label} ({low} keys)" if low == high else f"{label} ({low}-{high} keys)"


def _per_key_panel(ax, ds: xr.Dataset) -> None:
    _kl_panel(ax, ds, "kl_per_key", legend=False)


def _shift_panel(ax, ds: xr.Dataset) -> None:
    """persona_shift per condition (0: no change, 1: the clean tokens as likely as under BY) and
    the persona knockout's toward_by (1: its distributions are BY's), both medians over cells."""
    from ..analysis.summary import summarize
    from .style import axis_label

    x = np.arange(ds.sizes["band"])
    summary = summarize(ds["persona_shift"])
    for i, condition in enumerate(str(c) for c in ds["condition"].values):
        if condition == "none":
            continue
        s = summary.sel(condition=condition)
        ax.plot(x, s["median"].values, marker="o", markersize=3.5, color=_color(condition, i),
                label=condition + _defined_in(s, ds.sizes["cell"]))
    if "toward_by" in ds and "persona" in ds["condition"].values:
        toward = summarize(ds["toward_by"]).sel(condition="persona")
        ax.plot(x, toward["median"].values, linestyle="--", marker="s", markersize=3, color=_color("persona", 0),
                label="persona, toward BY" + _defined_in(toward, ds.sizes["cell"]))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axhline(1, color="black", linewidth=0.8, linestyle=":")
    ax.set_xticks(x, [str(b) for b in ds["band"].values])
    ax.set_ylabel(textwrap.fill(axis_label(ds["persona_shift"]) + " (1 = as under BY)", 32))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small")


def _defined_in(summary: xr.Dataset, n_cells: int) -> str:
    """' (medians of k/n cells)' when the measure is undefined (NaN: too small a gap) in some cells."""
    count = int(summary["count"].max())
    return "" if count == n_cells else f" (medians of {count}/{n_cells} cells)"


def _marker_panel(ax, ds: xr.Dataset) -> None:
    hits = ds["any_marker"].astype(float)
    rate = hits.sum("cell", skipna=True) / hits.notnull().sum("cell")
    x = np.arange(ds.sizes["band"])
    for i, condition in enumerate(str(c) for c in ds["condition"].values):
        ax.plot(x, rate.sel(condition=condition).values, marker="o", markersize=3.5, color=_color(condition, i),
                label=condition, clip_on=False)
    ax.set_ylim(0, 1)
    ax.set_xticks(x, [str(b) for b in ds["band"].values])
    ax.set_ylabel(f"fraction of cells with any\npersona marker (of {ds.sizes['cell']})")
    ax.grid(True, alpha=0.3)


def _evidence_panel(ax, ds: xr.Dataset) -> None:
    """Mean evidence of the knocked-out answers (the cell's XY prompt against its BY prompt) per
    band and condition, with a seeded 95% percentile bootstrap interval over cells; `none` (no
    knockout: the clean answers) is the level a knockout that removes nothing keeps. The
    neutral_span and baseline_persona hosts hold no persona, so their answers sit near bare."""
    from ..analysis.statistics import bootstrap_dataarray

    x = np.arange(ds.sizes["band"])
    records = bootstrap_dataarray(ds["evidence"].transpose("band", "condition", "cell"), "cell", "mean")
    by_key = {(r["coords"]["band"], r["coords"]["condition"]): r for r in records}
    for i, condition in enumerate(str(c) for c in ds["condition"].values):
        rows = [by_key[(str(b), condition)] for b in ds["band"].values]
        color = _color(condition, i)
        ax.plot(x, [r["estimate"] for r in rows], marker="o", markersize=3.5, color=color, label=condition)
        ax.fill_between(x, [r["ci_low"] for r in rows], [r["ci_high"] for r in rows], color=color, alpha=0.15,
                        linewidth=0)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(x, [str(b) for b in ds["band"].values])
    ax.set_ylabel(textwrap.fill("mean persona evidence of the answer, XY vs BY prompt [nats/token]", 32))
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="x-small", title="keys knocked out (95% CI over cells)", title_fontsize="x-small", ncol=2)
