"""Write and read result datasets as netCDF, atomically, with a completion flag."""

from __future__ import annotations

import json
import os
from pathlib import Path

import xarray as xr


def save_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write `ds` to `path` (netCDF4). The file is replaced atomically, so an interrupted write
    never leaves a truncated file behind. attrs["completed"] (1 or 0) says whether the run finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".partial")
    ds.to_netcdf(tmp, engine="netcdf4")
    os.replace(tmp, path)
    return path


def load_dataset(path: str | Path) -> xr.Dataset:
    """Load a result file fully into memory (the file is closed afterwards)."""
    with xr.open_dataset(path, engine="netcdf4") as ds:
        return ds.load()


def spec_of(ds: xr.Dataset) -> dict:
    """The experiment spec a dataset was made with."""
    return json.loads(ds.attrs.get("spec", "{}"))
