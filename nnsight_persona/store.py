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


# Spec fields that change how a run is chunked, not what it computes.
_NOT_RESULT_FIELDS = {"batch_size", "batches_per_request"}


def same_computation(ds: xr.Dataset, experiment: str, spec: dict) -> bool:
    """Whether `ds` was made by `experiment` with a spec computing the same numbers as `spec`."""
    theirs = spec_of(ds)
    ours = json.loads(json.dumps(spec))  # normalise tuples to lists, as stored
    strip = lambda d: {k: v for k, v in d.items() if k not in _NOT_RESULT_FIELDS}
    return ds.attrs.get("experiment") == experiment and strip(theirs) == strip(ours)


def resumable(path: str | Path, experiment: str, spec: dict, model_id: str) -> xr.Dataset | None:
    """The unfinished result at `path` of the same computation, to resume from, or None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ds = load_dataset(path)
    except (OSError, ValueError):
        return None
    if ds.attrs.get("completed") or ds.attrs.get("model_id") != model_id or not same_computation(ds, experiment, spec):
        return None
    return ds


class Checkpoint:
    """Writes the partial result of a long run to its output file every `every_s` seconds, so a
    crash or a kill loses at most that much work. The file says completed=0 until the end."""

    def __init__(self, path: str | Path, every_s: float = 60.0):
        import time

        self.path = Path(path)
        self.every_s = every_s
        self._clock = time.monotonic
        self._last = self._clock()

    def __call__(self, make_dataset) -> None:
        if self._clock() - self._last >= self.every_s:
            save_dataset(make_dataset(), self.path)
            self._last = self._clock()
