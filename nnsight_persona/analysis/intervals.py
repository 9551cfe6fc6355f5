"""Every statistic of a result file as estimate, bootstrap interval and n over the experiment's unit.

`interval_summary(ds)` gives one record per data variable and combination of the dims that are not
the unit: {variable, coords, estimate, ci_low, ci_high, n}. The unit of each experiment is in `UNITS`.
Variables without the unit dim, text variables and per-vector variables (dims in `SKIPPED_DIMS`) are
left out: they are not statistics over units.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from ..core.errors import SelectionError
from .statistics import N_RESAMPLES, bootstrap_dataarray

# experiment (attrs["experiment"]) -> the dim(s) that index the independent units
UNITS = {
    "capture": ("cell",),
    "decompose": ("cell",),
    "substitute": ("cell",),
    "markers": ("cell",),
    "inject": ("cell",),
    "knockout": ("cell",),
    "heads": ("cell",),
    "vectors-extract": ("sample",),
    "vectors-monitor": ("question",),
    "vectors-steer": ("question",),
    "vectors-vs-edit": ("cell",),
    "vectors-trace": ("trait",),  # per checkpoint and layer, one value per trait: few units
    "vectors-vs-delta": ("trait",),  # experiment names vectors-vs-delta-<persona> too
    "subnetwork-eval": ("persona",),
    "subnetwork-find": ("module",),
}
SKIPPED_DIMS = ("hidden", "answer_token", "step", "key", "marker")


def unit_of(ds: xr.Dataset) -> tuple[str, ...]:
    experiment = ds.attrs.get("experiment")
    if experiment not in UNITS and str(experiment).startswith("vectors-vs-delta"):
        experiment = "vectors-vs-delta"
    if experiment not in UNITS:
        raise SelectionError(f"no unit declared for experiment {experiment!r}; known: {sorted(UNITS)}")
    return UNITS[experiment]


def summarised_variables(ds: xr.Dataset, unit=None) -> list[str]:
    unit = tuple(unit or unit_of(ds))
    names = []
    for name, da in ds.data_vars.items():
        numeric = np.issubdtype(da.dtype, np.number) or da.dtype == bool
        if numeric and all(u in da.dims for u in unit) and not any(d in SKIPPED_DIMS for d in da.dims):
            names.append(str(name))
    return names


def interval_summary(ds: xr.Dataset, statistic: str = "median", *, unit=None, variables=None,
                     confidence: float = 0.95, method: str = "percentile", n_resamples: int = N_RESAMPLES,
                     seed: int = 0) -> list[dict]:
    """One record per variable and combination of the non-unit dims (see the module docstring)."""
    unit = tuple(unit or unit_of(ds))
    names = list(variables) if variables else summarised_variables(ds, unit)
    missing = [v for v in names if v not in ds]
    if missing:
        raise SelectionError(f"variable(s) {missing} not in the dataset; it has {sorted(ds.data_vars)}")
    records = []
    for name in names:
        records.extend(bootstrap_dataarray(ds[name].astype(float), unit, statistic, confidence=confidence,
                                           method=method, n_resamples=n_resamples, seed=seed))
    return records


def summary_table_rows(records: list[dict]) -> list[dict]:
    """records flattened for format_table: variable, the coords as columns, estimate, ci_low, ci_high, n."""
    return [{"variable": r["variable"], **r["coords"], "estimate": r["estimate"], "ci_low": r["ci_low"],
             "ci_high": r["ci_high"], "n": r["n"]} for r in records]


def median_with_interval(da: xr.DataArray, over: str = "cell", confidence: float = 0.95, seed: int = 0) -> xr.Dataset:
    """summary.summarize(da, over) plus `ci_low`, `ci_high`: the seeded percentile bootstrap interval of
    the median over `over` (what the figures draw as bands or error bars)."""
    from .summary import summarize

    out = summarize(da, over)
    records = bootstrap_dataarray(da.astype(float), over, "median", confidence=confidence, seed=seed)
    shape = out["median"].shape
    low = np.array([r["ci_low"] for r in records]).reshape(shape)
    high = np.array([r["ci_high"] for r in records]).reshape(shape)
    dims = out["median"].dims
    if tuple(d for d in da.dims if d != over) != dims:
        raise SelectionError(f"unexpected dims {dims} of the summary of {da.name!r}")
    out["ci_low"] = (dims, low, dict(da.attrs))
    out["ci_high"] = (dims, high, dict(da.attrs))
    return out
