"""The analysis side of the Python API: `summary` (a file's statistics with intervals) and `findings`
(the claims a folder supports), the same as the commands of the same names."""

from __future__ import annotations

from pathlib import Path

import xarray as xr

from .findings import folder_findings
from .intervals import interval_summary


def summary(result, stat: str = "median", **options) -> list[dict]:
    """Records {variable, coords, estimate, ci_low, ci_high, n} of a result file (path) or Dataset."""
    from ..storage.store import load_dataset

    ds = result if isinstance(result, xr.Dataset) else load_dataset(Path(result))
    return interval_summary(ds, stat, **options)


def findings(folder, seed: int = 0) -> list[dict]:
    """Every claim of the folder's result files, Holm-adjusted within each rule and file (analysis/findings.py)."""
    return folder_findings(folder, seed=seed)
