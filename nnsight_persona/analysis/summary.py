"""Summaries over cells, computed from a dataset when needed (never stored as copies)."""

from __future__ import annotations

import math
import warnings
from typing import Iterable, Sequence

import numpy as np
import xarray as xr

from ..core.errors import SelectionError

STATS = ("median", "q25", "q75", "min", "max", "count")


def summarize(da: xr.DataArray, over: str = "cell") -> xr.Dataset:
    """median, q25, q75, min, max and count (of non-NaN values) of `da` over dimension `over`.

    NaN values (cells an interrupted run never reached) are skipped; a slice with no values gives
    NaN. Quartiles use numpy's default linear interpolation."""
    if not isinstance(da, xr.DataArray):
        raise SelectionError(f"summarize needs an xarray DataArray, got {type(da).__name__}")
    if over not in da.dims:
        raise SelectionError(f"cannot summarize {da.name!r} over {over!r}; its dims are {list(da.dims)}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slices: NaN is the answer
        quartiles = da.quantile([0.25, 0.75], dim=over, skipna=True)
        out = xr.Dataset(
            {
                "median": da.median(over, skipna=True),
                "q25": quartiles.sel(quantile=0.25, drop=True),
                "q75": quartiles.sel(quantile=0.75, drop=True),
                "min": da.min(over, skipna=True),
                "max": da.max(over, skipna=True),
                "count": da.notnull().sum(over),
            }
        )
    for name in STATS[:-1]:
        out[name].attrs = dict(da.attrs)
    out["count"].attrs = {"long_name": f"number of {over}s with a value"}
    out.attrs = {"variable": str(da.name), "over": over}
    return out


def median_rows(ds: xr.Dataset, variables: Sequence[str], over: str = "cell") -> list[dict]:
    """One row per combination of the remaining dims (e.g. model, layer, position) with the median
    of each variable over `over`, and the count of cells behind it."""
    missing = [v for v in variables if v not in ds]
    if missing:
        raise SelectionError(f"variable(s) {missing} not in the dataset; it has {sorted(ds.data_vars)}")
    medians = {v: summarize(ds[v], over) for v in variables}
    first = medians[variables[0]]["median"]
    rows = []
    for index in np.ndindex(*first.shape):
        sel = {d: first[d].values[i] for d, i in zip(first.dims, index)}
        row = {d: _plain(v) for d, v in sel.items()}
        for v in variables:
            row[v] = float(medians[v]["median"].sel(sel).values)
        row["n"] = int(medians[variables[0]]["count"].sel(sel).values)
        rows.append(row)
    return rows


def _plain(value):
    """numpy scalars as plain Python values, for printing."""
    return value.item() if hasattr(value, "item") else value


def format_table(rows: Iterable[dict], columns: Sequence[str] | None = None, digits: int = 4) -> str:
    """A plain-text table: one line per row, columns aligned, floats with `digits` decimals."""
    rows = list(rows)
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[_format(row.get(c, ""), digits) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    line = lambda parts: "  ".join(p.rjust(w) for p, w in zip(parts, widths)).rstrip()
    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def _format(value, digits: int) -> str:
    if isinstance(value, (float, np.floating)):
        return "nan" if math.isnan(value) else f"{value:.{digits}f}"
    return str(value)


def condition_medians(ds: xr.Dataset, sites: Sequence[str], model: int = 0) -> list[dict]:
    """Median KL over cells of each condition, one row per site (the `substitute` command's table
    with sites ('layer', 'position'), `inject`'s with ('layer_set',)), for one model."""
    kl = ds["kl"].isel(model=model) if "model" in ds["kl"].dims else ds["kl"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        median = kl.median("cell")
    coords = [[(d, v) for v in ds[d].values] for d in sites]
    rows = []
    for combo in _product(coords):
        at = dict(combo)
        row = {d: _plain(v) if d == "layer" else str(v) for d, v in combo}
        row.update({str(c): float(median.sel(**at, condition=c)) for c in ds.condition.values})
        rows.append(row)
    return rows


def _product(lists):
    import itertools

    return list(itertools.product(*lists))
