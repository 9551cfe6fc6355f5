"""Write and read result datasets as netCDF, atomically, with a completion flag."""

from __future__ import annotations

import json
import os
import re
import secrets
from pathlib import Path

import xarray as xr

from ..core.errors import ResultFileError


def _temp_name(path: Path) -> Path:
    """A hidden temp file next to `path`, unique to this process and this write."""
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.partial")


def save_dataset(ds: xr.Dataset, path: str | Path) -> Path:
    """Write `ds` to `path` (netCDF4). The file is replaced atomically, so an interrupted or killed
    write never leaves a truncated file behind, and two processes writing at once never share a
    temp file. attrs["completed"] (1 or 0) says whether the run finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        ds.to_netcdf(tmp, engine="netcdf4")
        with open(tmp, "rb+") as f:  # on disk before it takes the name
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def remove_stale_temps(path: str | Path) -> list[Path]:
    """Remove the temp files of `path` left by writers that were killed (their process is gone)."""
    path = Path(path)
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.(\d+)\.[0-9a-f]+\.partial$")
    removed = []
    if not path.parent.is_dir():
        return removed
    for entry in path.parent.iterdir():
        match = pattern.match(entry.name)
        if match and not _alive(int(match.group(1))):
            entry.unlink(missing_ok=True)
            removed.append(entry)
    return removed


def load_dataset(path: str | Path) -> xr.Dataset:
    """Load a result file fully into memory (the file is closed afterwards). A file that is empty,
    truncated or not netCDF raises ResultFileError naming it."""
    try:
        with xr.open_dataset(path, engine="netcdf4") as ds:
            return ds.load()
    except FileNotFoundError:
        raise ResultFileError(f"no result file {str(path)!r}") from None
    except (OSError, ValueError, RuntimeError, KeyError, IndexError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).splitlines() or [type(exc).__name__])[0]
        raise ResultFileError(
            f"cannot read {path} as a result file ({reason}): it is empty, truncated or not netCDF"
        ) from None


def spec_of(ds: xr.Dataset) -> dict:
    """The experiment spec a dataset was made with."""
    return json.loads(ds.attrs.get("spec", "{}"))


# Spec fields that change how a run is chunked, not what it computes.
_NOT_RESULT_FIELDS = {"batch_size", "batches_per_request"}
# Fields of a derived dataset's source (decompose) that say when and by which code it was made,
# not what was computed.
_NOT_RESULT_SOURCE_FIELDS = {"created", "git_commit", "package_version"}


def result_spec(spec: dict) -> dict:
    """`spec` as JSON (tuples as lists) without the fields that do not change the numbers, at any
    depth (a decompose's spec holds its capture's spec)."""

    def strip(value, in_source=False):
        if isinstance(value, dict):
            drop = _NOT_RESULT_FIELDS | (_NOT_RESULT_SOURCE_FIELDS if in_source else set())
            return {k: strip(v, k == "source") for k, v in value.items() if k not in drop}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(json.loads(json.dumps(spec)))


def same_computation(ds: xr.Dataset, experiment: str, spec: dict) -> bool:
    """Whether `ds` was made by `experiment` with a spec computing the same numbers as `spec`."""
    return ds.attrs.get("experiment") == experiment and result_spec(spec_of(ds)) == result_spec(spec)


def spec_differences(ds: xr.Dataset, experiment: str, spec: dict) -> list[str]:
    """What differs between `ds`'s computation and (experiment, spec): 'experiment' or spec keys."""
    if ds.attrs.get("experiment") != experiment:
        return ["experiment"]
    theirs, ours = result_spec(spec_of(ds)), result_spec(spec)
    return sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))


def model_differences(ds: xr.Dataset, model_id: str, dtype: str | None = None, revision=None) -> list[str]:
    """What differs between the model `ds` was made with and this one: 'model', 'dtype', 'model
    weights'. `revision` (the weights' fingerprint) may be a function, called only when needed."""
    if ds.attrs.get("model_id") != model_id:
        return ["model"]
    if dtype is not None and ds.attrs.get("dtype") != dtype:
        return ["dtype"]
    if revision is not None:
        revision = revision() if callable(revision) else revision
        if ds.attrs.get("model_revision") != revision:
            return ["model weights"]
    return []


def resumable(path: str | Path, experiment: str, spec: dict, model_id: str, dtype: str | None = None,
              revision=None) -> xr.Dataset | None:
    """The unfinished result at `path` of the same computation (same model, and where given the
    same dtype and weights), to resume from, or None."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        ds = load_dataset(path)
    except ResultFileError:
        return None
    if ds.attrs.get("completed") or not same_computation(ds, experiment, spec):
        return None
    if model_differences(ds, model_id, dtype, revision):
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
