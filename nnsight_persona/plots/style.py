"""What every figure shares: colours, a new headless figure, axis labels from attrs, titles with
the run's context, one model out of several, the median-with-band line, the mean-with-band line
over any unit, and saving."""

from __future__ import annotations

from pathlib import Path

import xarray as xr
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..core.errors import SelectionError
from ..storage.store import spec_of


# One colour per position, the same in every figure.
POSITION_COLORS = {"p_user_last": "#7f7f7f", "p_last": "#1f77b4", "g1": "#d62728", "g2": "#ff7f0e"}
OTHER_COLORS = ("#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")


def new_figure(n_panels: int = 1, panel_width: float = 5.0, height: float = 3.8) -> Figure:
    fig = Figure(figsize=(panel_width * n_panels, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def axis_label(obj: xr.DataArray, fallback: str | None = None) -> str:
    """'long_name [units]' from an array's attrs (units '1' means dimensionless and is left out)."""
    name = obj.attrs.get("long_name") or fallback or str(obj.name)
    units = obj.attrs.get("units")
    return f"{name} [{units}]" if units and units != "1" else name


def figure_title(ds: xr.Dataset, what: str) -> str:
    """'what', then 'model, grid G (n cells)' on a second line, from the dataset's attrs and spec;
    flags an interrupted run."""
    model = ds.attrs.get("model_id")
    if "model" in ds.coords and ds["model"].size == 1:
        model = str(ds["model"].values.item())
    grid = spec_of(ds).get("grid")
    context = ", ".join([str(model)] * bool(model) + [f"grid {grid}"] * bool(grid))
    if ds.sizes.get("cell"):
        context += f" ({ds.sizes['cell']} cells)"
    if not int(ds.attrs.get("completed", 1)):
        context += " [incomplete run]"
    return f"{what}\n{context.strip()}" if context.strip() else what


def one_model(ds: xr.Dataset, model: str | None) -> xr.Dataset:
    """The dataset at one model (kept as a size-1 dim, on its own layers); `model` may be omitted
    when there is one."""
    if "model" not in ds.dims:
        return ds
    models = [str(m) for m in ds["model"].values]
    if model is None:
        if len(models) != 1:
            raise SelectionError(f"the dataset holds {len(models)} models; choose one of {models}")
        return ds
    if model not in models:
        raise SelectionError(f"model {model!r} not in the dataset; allowed: {models}")
    from ..storage.results import n_layers_of, own_layers

    one = own_layers(ds.sel(model=[model]))  # a depth-aligned dataset: back on the model's own layers
    if "n_layers" in ds.coords:
        one.attrs["n_layers"] = n_layers_of(ds, model)
    return one


def position_color(position: str, i: int) -> str:
    return POSITION_COLORS.get(position, OTHER_COLORS[i % len(OTHER_COLORS)])


def median_band_by_layer(ax, da: xr.DataArray) -> None:
    """One line per position: the median over cells by layer, with its 95% bootstrap interval as a band."""
    from ..analysis.intervals import median_with_interval

    summary = median_with_interval(da.squeeze("model", drop=True) if "model" in da.dims else da)
    layers = summary["layer"].values
    for i, position in enumerate(str(p) for p in summary["position"].values):
        s = summary.sel(position=position)
        color = position_color(position, i)
        ax.plot(layers, s["median"].values, marker="o", markersize=3, color=color, label=position)
        ax.fill_between(layers, s["ci_low"].values, s["ci_high"].values, color=color, alpha=0.18, linewidth=0)
    ax.set_xlabel(axis_label(da["layer"], "layer"))
    ax.set_ylabel(axis_label(da))
    ax.grid(True, alpha=0.3)


def mean_band(ax, x, samples, color, label: str, style: str = "-", seed: int = 0, alpha: float = 0.15, **line):
    """The mean over units of `samples` (array [len(x), units]) against x as a line, and its seeded 95%
    percentile bootstrap interval over units (analysis/statistics) as a band labelled '_band ' + label
    (left out of legends; tests find it by that label). Returns (means, lows, highs)."""
    import numpy as np

    from ..analysis.statistics import bootstrap_interval

    stats = np.array([[iv.estimate, iv.low, iv.high] for iv in
                      (bootstrap_interval(np.asarray(row, dtype=float), "mean", seed=seed) for row in samples)])
    ax.plot(x, stats[:, 0], style, color=color, label=label, **line)
    ax.fill_between(x, stats[:, 1], stats[:, 2], color=color, alpha=alpha, linewidth=0, label="_band " + label)
    return stats[:, 0], stats[:, 1], stats[:, 2]


def interval_bars(ax, x, intervals: list[dict], label: str, **style) -> None:
    """Points with error bars from interval records {estimate, low, high} (NaN ends: the point alone);
    the container is labelled `label`, so tests can read the bars back."""
    import numpy as np

    est = np.array([r["estimate"] for r in intervals], dtype=float)
    low = np.array([r["low"] for r in intervals], dtype=float)
    high = np.array([r["high"] for r in intervals], dtype=float)
    yerr = np.vstack([np.where(np.isfinite(low), est - low, 0.0), np.where(np.isfinite(high), high - est, 0.0)])
    ax.errorbar(x, est, yerr=yerr, label=label, capsize=3, **style)


def save_figure(fig: Figure, path_without_suffix: str | Path, pdf: bool = False) -> list[Path]:
    """Write `fig` as PNG (and PDF when asked) next to `path_without_suffix`; returns the paths."""
    base = Path(path_without_suffix)
    base.parent.mkdir(parents=True, exist_ok=True)
    paths = [base.with_name(base.name + ".png")]
    if pdf:
        paths.append(base.with_name(base.name + ".pdf"))
    for path in paths:
        fig.savefig(path, dpi=150)
    return paths
