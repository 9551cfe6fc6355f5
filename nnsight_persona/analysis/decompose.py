"""decompose: how persona and task effects combine in a capture's residual stream.

With h_C the residual under condition C (BB, XB, BY, XY) at one (layer, position, cell):
Delta_X = h_XB - h_BB, Delta_Y = h_BY - h_BB, Delta_XY = h_XY - h_BB and
Inter = Delta_XY - Delta_X - Delta_Y. Additivity means cos(Delta_XY, Delta_X + Delta_Y) near 1
and |Inter| / |Delta_XY| near 0.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from importlib import metadata

import numpy as np
import xarray as xr

from ..core.errors import PersonaError, SelectionError
from ..core.grids import CONDITIONS
from ..storage.provenance import git_commit

OUT_DIMS = ("model", "layer", "position", "cell")

LONG_NAMES = {
    "cos_xy_sum": "cos(Δ_XY, Δ_X + Δ_Y)",
    "cos_x_y": "cos(Δ_X, Δ_Y)",
    "inter_over_xy": "|Inter| / |Δ_XY|",
    "norm_delta_x": "|Δ_X|",
    "norm_delta_y": "|Δ_Y|",
    "norm_delta_xy": "|Δ_XY|",
    "norm_inter": "|Inter|",
}
UNITS = {
    "cos_xy_sum": "1", "cos_x_y": "1", "inter_over_xy": "1",
    "norm_delta_x": "activation", "norm_delta_y": "activation",
    "norm_delta_xy": "activation", "norm_inter": "activation",
}


def _check_capture(ds: xr.Dataset) -> xr.DataArray:
    experiment = ds.attrs.get("experiment", "capture")
    if experiment != "capture":
        raise PersonaError(f"decompose needs a capture dataset; this one is attrs experiment={experiment!r}")
    if "resid" not in ds:
        raise PersonaError(f"decompose needs a variable 'resid'; the dataset has {sorted(ds.data_vars)}")
    resid = ds["resid"]
    needed = set(OUT_DIMS) | {"condition", "hidden"}
    if set(resid.dims) != needed:
        raise PersonaError(f"'resid' must have dims {sorted(needed)}; it has {list(resid.dims)}")
    missing = [c for c in CONDITIONS if c not in resid.condition.values]
    if missing:
        raise SelectionError(
            f"'resid' lacks condition(s) {missing}; decompose needs {list(CONDITIONS)}, "
            f"the dataset has {[str(c) for c in resid.condition.values]}"
        )
    return resid


def delta_vectors(capture_ds: xr.Dataset, dtype=np.float64) -> tuple[xr.DataArray, xr.DataArray]:
    """(Delta_X, Delta_Y) = (h_XB - h_BB, h_BY - h_BB), dims (model, layer, position, cell, hidden).

    Computed in `dtype` (float64 by default); h_BB + Delta_X + Delta_Y is the additive prediction."""
    resid = _check_capture(capture_ds)
    h = {c: resid.sel(condition=c, drop=True).astype(dtype) for c in ("BB", "XB", "BY")}
    dx, dy = h["XB"] - h["BB"], h["BY"] - h["BB"]
    dx.attrs.update(long_name="Δ_X = h_XB - h_BB", units=resid.attrs.get("units", "activation"))
    dy.attrs.update(long_name="Δ_Y = h_BY - h_BB", units=resid.attrs.get("units", "activation"))
    return dx.rename("delta_x"), dy.rename("delta_y")


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, and 0 where den is exactly 0 (the reference's convention for zero vectors).
    NaN (a cell an interrupted capture never reached) stays NaN."""
    zero = den == 0
    return np.where(zero, 0.0, num / np.where(zero, 1.0, den))


def decomposition_stats(h_bb, h_xb, h_by, h_xy) -> dict[str, np.ndarray]:
    """The decomposition statistics for arrays whose last axis is the hidden dimension (float64)."""
    dx, dy, dxy = h_xb - h_bb, h_by - h_bb, h_xy - h_bb
    dsum = dx + dy
    inter = dxy - dsum
    norm = lambda v: np.sqrt(np.einsum("...h,...h->...", v, v))
    n_x, n_y, n_xy, n_sum, n_inter = norm(dx), norm(dy), norm(dxy), norm(dsum), norm(inter)
    dot = lambda a, b: np.einsum("...h,...h->...", a, b)
    return {
        # Clipped: rounding can put a cosine of parallel vectors a hair outside [-1, 1].
        "cos_xy_sum": np.clip(_safe_ratio(dot(dxy, dsum), n_xy * n_sum), -1.0, 1.0),
        "cos_x_y": np.clip(_safe_ratio(dot(dx, dy), n_x * n_y), -1.0, 1.0),
        "inter_over_xy": _safe_ratio(n_inter, n_xy),
        "norm_delta_x": n_x,
        "norm_delta_y": n_y,
        "norm_delta_xy": n_xy,
        "norm_inter": n_inter,
    }


def decompose(capture_ds: xr.Dataset) -> xr.Dataset:
    """The decomposition dataset (see docs/datasets.md) of a capture dataset, in float64."""
    resid = _check_capture(capture_ds).transpose(*OUT_DIMS, "condition", "hidden")
    shape = tuple(resid.sizes[d] for d in OUT_DIMS)
    out = {name: np.full(shape, np.nan) for name in LONG_NAMES}
    conditions = [str(c) for c in resid.condition.values]
    index = [conditions.index(c) for c in CONDITIONS]
    # One layer at a time keeps float64 copies of the residuals small.
    for li in range(shape[1]):
        block = resid.isel(layer=li).values.astype(np.float64)
        stats = decomposition_stats(*(block[:, :, :, j] for j in index))
        for name, values in stats.items():
            out[name][:, li] = values
    coords = {name: coord for name, coord in resid.coords.items() if set(coord.dims) <= set(OUT_DIMS)}
    ds = xr.Dataset({name: (OUT_DIMS, values) for name, values in out.items()}, coords=coords)
    for name in LONG_NAMES:
        ds[name].attrs.update(long_name=LONG_NAMES[name], units=UNITS[name])
    ds.attrs = _attrs(capture_ds)
    return ds


def _attrs(capture_ds: xr.Dataset) -> dict:
    """The capture's provenance, re-stamped for this analysis; the capture's own spec, creation
    time and commit are kept under spec["source"]."""
    attrs = dict(capture_ds.attrs)
    source_spec = json.loads(attrs.get("spec", "{}"))
    spec = {
        "grid": source_spec.get("grid"),
        "source": {
            "experiment": attrs.get("experiment", "capture"),
            "spec": source_spec,
            "created": attrs.get("created"),
            "git_commit": attrs.get("git_commit"),
            "package_version": attrs.get("package_version"),
        },
    }
    try:
        package_version = metadata.version("nnsight-persona")
    except metadata.PackageNotFoundError:
        package_version = "not installed"
    attrs.update(
        experiment="decompose",
        spec=json.dumps(spec, sort_keys=True),
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        git_commit=git_commit(),
        package_version=package_version,
        completed=int(attrs.get("completed", 0)),
    )
    return attrs
