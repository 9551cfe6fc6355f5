"""Markdown tables made from result files, for the docs' generated blocks (see docblocks.py).

Each function takes a file path (and options as strings, since they come from a block's spec) and
returns a Markdown table of medians over cells. The docs quote these tables; a test checks that
they still equal what the committed files give.
"""

from __future__ import annotations

import warnings

import numpy as np

from ..storage.store import load_dataset
from .additivity import CONTROLS, DEFAULT_MARGIN, DESCRIBED, additivity_rows
from .markdown import markdown, number  # noqa: F401 (the docs' generators import them from here too)


def _one_model(ds):
    return ds.isel(model=0) if "model" in ds.dims else ds


def additivity_table(path: str, positions: str = "", margin: str = str(DEFAULT_MARGIN)) -> str:
    """Per (position, layer): the median KL over cells of the additive vector, of every control and of
    `random`, each with its 95% bootstrap interval over cells; the control the additive vector beats
    by the least, the median paired ratio against it with its interval, and the verdict (additivity.py:
    the interval's lower end at or above the margin for every control)."""
    ds = load_dataset(path)
    rows = additivity_rows(ds, float(margin))
    wanted = positions.split(",") if positions else None
    present = [c for c in ("additive", *CONTROLS, *DESCRIBED) if c in [str(v) for v in ds.condition.values]]
    out = []
    for r in rows:
        if wanted and r["position"] not in wanted:
            continue
        out.append([r["position"], r["layer"], *[with_interval(r[c], r[f"{c}_ci_low"], r[f"{c}_ci_high"]) for c in present],
                    r["best_control"], with_interval(r["ratio"], r["ratio_ci_low"], r["ratio_ci_high"], "x"),
                    r["additive_holds"]])
    header = ["position", "layer", *present, "control beaten by the least", "paired ratio",
              f"additive by >= {float(margin):g}x"]
    return markdown(header, out)


def with_interval(estimate, low, high, suffix: str = "") -> str:
    """'estimate [low, high]' in the docs' number format (an interval of n/a where it has no width)."""
    if isinstance(estimate, float) and np.isnan(estimate):
        return "n/a"
    return f"{_short(estimate)}{suffix} [{_short(low)}, {_short(high)}]"


def _short(value) -> str:
    value = float(value)
    if np.isinf(value):
        return "inf" if value > 0 else "-inf"
    return number(value, 2) if abs(value) < 10 ** 4 else f"{value:.1e}"


def decompose_table(path: str, positions: str = "p_last", layers: str = "") -> str:
    """Medians over cells of the decomposition statistics per (position, layer); `layers`: a comma
    list to keep (default every layer of the file)."""
    ds = _one_model(load_dataset(path))
    chosen = [int(v) for v in layers.split(",")] if layers else [int(v) for v in ds.layer.values]
    rows = []
    for position in positions.split(","):
        for layer in chosen:
            site = ds.sel(position=position, layer=layer)
            rows.append([position, int(layer), *[float(np.nanmedian(site[s].values)) for s in ("cos_xy_sum", "cos_x_y", "inter_over_xy")]])
    return markdown(["position", "layer", "cos(ΔXY, ΔX+ΔY)", "cos(ΔX, ΔY)", "\\|Inter\\| / \\|ΔXY\\|"], rows)


def markers_table(path: str) -> str:
    """Cells with any own-persona marker, per condition; where the file is scored with evidence,
    beside it the mean evidence with its 95% bootstrap interval over cells, the answers with
    positive evidence, those in persona and the AUROC against bare (markers.evidence_table)."""
    from ..studies.xu2026.markers import evidence_table

    full = load_dataset(path)
    ds = _one_model(full)
    scored = {row["condition"]: row for row in evidence_table(full if "model" in full.dims else full.expand_dims("model"))}
    extra = [k for k in next(iter(scored.values()), {}) if k != "condition"]
    rows = []
    for condition in ds.condition.values:
        flags = ds.any_marker.sel(condition=condition).values.astype(float)
        row = [str(condition), f"{int(np.nansum(flags))}/{int((~np.isnan(flags)).sum())}"]
        rows.append(row + [scored[str(condition)][k] for k in extra])
    return markdown(["condition", "cells with markers", *extra], rows)


def inject_table(path: str, variable: str = "kl") -> str:
    """Median summed KL to the target (or `gap_closed`) per layer set and condition."""
    ds = _one_model(load_dataset(path))
    conditions = [str(c) for c in ds.condition.values]
    rows = []
    for layer_set in ds.layer_set.values:
        site = ds.sel(layer_set=layer_set)
        rows.append([str(layer_set), *[float(np.nanmedian(site[variable].sel(condition=c).values)) for c in conditions]])
    return markdown(["layer set", *conditions], rows)


def inject_sites_table(path: str, condition: str = "oracle") -> str:
    """Median KL with the injection at other sites (the injection-site ablation)."""
    ds = _one_model(load_dataset(path))
    positions = [str(p) for p in ds.site_position.values]
    rows = [[int(L), *[float(np.nanmedian(ds.kl_site.sel(site_layer=L, site_position=p, site_condition=condition).values))
                       for p in positions]] for L in ds.site_layer.values]
    return markdown(["layer", *positions], rows)


def prompt_lengths_table(path: str) -> str:
    """Token lengths of the target, host and length-matched host prompts (min, median, max)."""
    ds = _one_model(load_dataset(path))
    lengths = ds.prompt_length
    return markdown(["prompt", "min", "median", "max"],
                    [[str(p), int(lengths.sel(prompt=p).min()), float(lengths.sel(prompt=p).median()), int(lengths.sel(prompt=p).max())]
                     for p in ds.prompt.values])


def inject_norms_table(path: str) -> str:
    """Median residual norms at p_last: clean h_XY, the host's, and the cached vector's."""
    ds = _one_model(load_dataset(path))
    rows = [[int(L), *[float(np.nanmedian(ds[v].sel(layer=L).values)) for v in ("norm_clean", "norm_host", "norm_injected")]]
            for L in ds.layer.values]
    return markdown(["layer", "\\|h_XY\\|", "\\|h_host\\|", "\\|cached\\|"], rows)


def knockout_table(path: str, variable: str = "kl") -> str:
    """Median of `variable` over cells per band (columns) and condition (rows); for marker flags,
    the count of cells with markers."""
    ds = _one_model(load_dataset(path))
    bands = [str(b) for b in ds.band.values]
    rows = []
    for condition in ds.condition.values:
        one = ds[variable].sel(condition=condition)
        if variable == "any_marker":
            cells = [f"{int(np.nansum(one.sel(band=b).values))}/{int(one.sel(band=b).notnull().sum())}" for b in bands]
        else:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # a condition with no defined value: n/a
                cells = [float(np.nanmedian(one.sel(band=b).values)) for b in bands]
        rows.append([str(condition), *cells])
    return markdown(["condition \\ band", *bands], rows)


def compare_table(path: str, paper: str = "", positions: str = "") -> str:
    """compare's rows (ours next to the paper's medians) as a Markdown table; `positions`: a comma
    list to keep (rows without a position are always kept)."""
    from .compare import compare

    rows = compare(load_dataset(path), paper=paper or None)
    if positions:
        rows = [r for r in rows if "position" not in r or r["position"] in positions.split(",")]
    columns = [c for c in rows[0] if c != "model"]
    return markdown(columns, [[row.get(c, "") for c in columns] for row in rows])


GENERATORS = {
    "additivity": additivity_table,
    "decompose": decompose_table,
    "markers": markers_table,
    "inject": inject_table,
    "inject-sites": inject_sites_table,
    "inject-norms": inject_norms_table,
    "prompt-lengths": prompt_lengths_table,
    "knockout": knockout_table,
    "compare": compare_table,
}

from .subnetworks import GENERATORS as _SUBNETWORK_TABLES

GENERATORS.update(_SUBNETWORK_TABLES)
