"""Intervals and paired tests over the experiment's unit (cells, questions, seeds...).

Pure functions of numpy arrays and xarray objects:
- `bootstrap_interval`: a seeded bootstrap interval (percentile or BCa) of a median or mean, resampling
  whole units: with a 2-D array (unit, rows) the rows of a unit stay together (a cluster bootstrap).
- `bootstrap_dataarray`: the same for every combination of the dims that are not the unit.
- `sign_flip_test`: a paired sign-flip permutation test of paired differences, exact (every sign
  pattern) for n <= `EXACT_MAX_N`, Monte Carlo otherwise.
- `holm`: Holm's step-down adjustment of a family of p-values.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np
import xarray as xr

from ..core.errors import SelectionError

STATISTICS = ("median", "mean")
METHODS = ("percentile", "bca")
ALTERNATIVES = ("greater", "less", "two-sided")
N_RESAMPLES = 2000
EXACT_MAX_N = 20
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int


def _statistic(name: str):
    if name not in STATISTICS:
        raise SelectionError(f"unknown statistic {name!r}; choose one of {list(STATISTICS)}")
    return np.median if name == "median" else np.mean


def _units(values) -> np.ndarray:
    """values as (unit, rows) with units holding any NaN dropped."""
    x = np.asarray(values, dtype=float)
    if x.ndim == 0:
        raise SelectionError("bootstrap needs an array over units, got a scalar")
    x = x.reshape(x.shape[0], int(np.prod(x.shape[1:])))
    return x[~np.isnan(x).any(axis=1)]


def bootstrap_interval(values, statistic: str = "median", *, confidence: float = 0.95,
                       n_resamples: int = N_RESAMPLES, method: str = "percentile", seed: int = 0) -> Interval:
    """The `statistic` of `values` and its bootstrap interval, resampling units (axis 0) with replacement.

    Extra axes are rows within a unit (e.g. positions of a cell): a resample takes whole units and the
    statistic pools their rows. Units with a NaN are dropped; n is the number of units kept."""
    func = _statistic(statistic)
    if method not in METHODS:
        raise SelectionError(f"unknown interval method {method!r}; choose one of {list(METHODS)}")
    if not 0 < confidence < 1:
        raise SelectionError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise SelectionError(f"n_resamples must be positive, got {n_resamples}")
    x = _units(values)
    n = x.shape[0]
    if n == 0:
        return Interval(float("nan"), float("nan"), float("nan"), 0)
    estimate = float(func(x.ravel()))
    if n == 1:
        return Interval(estimate, float("nan"), float("nan"), 1)
    rng = np.random.default_rng(seed)
    index = rng.integers(0, n, size=(n_resamples, n))
    boot = func(x[index].reshape(n_resamples, -1), axis=1)
    alpha = (1 - confidence) / 2
    if method == "percentile":
        low_q, high_q = alpha, 1 - alpha
    else:
        low_q, high_q = _bca_levels(x, func, estimate, boot, alpha)
    with np.errstate(invalid="ignore"):  # infinite values (a ratio over a zero norm): NaN or inf ends
        low, high = np.quantile(boot, [low_q, high_q])
    return Interval(estimate, float(low), float(high), n)


def _bca_levels(x, func, estimate, boot, alpha):
    """The BCa-adjusted quantile levels (bias from the bootstrap, acceleration from the jackknife)."""
    share = ((boot < estimate).sum() + (boot <= estimate).sum()) / (2 * boot.size)
    share = min(max(share, 1 / (2 * boot.size)), 1 - 1 / (2 * boot.size))
    z0 = _NORMAL.inv_cdf(share)
    n = x.shape[0]
    jack = np.array([func(np.delete(x, i, axis=0).ravel()) for i in range(n)])
    dev = jack.mean() - jack
    denom = 6 * (dev ** 2).sum() ** 1.5
    accel = (dev ** 3).sum() / denom if denom > 0 else 0.0
    levels = []
    for a in (alpha, 1 - alpha):
        z = _NORMAL.inv_cdf(a)
        levels.append(_NORMAL.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z))))
    return levels


def bootstrap_dataarray(da: xr.DataArray, unit: str | Sequence[str] = "cell", statistic: str = "median",
                        **options) -> list[dict]:
    """One record per combination of the dims that are not the unit: coords, estimate, ci_low, ci_high, n.

    `unit` may name several dims (e.g. ("trait", "question")); they are stacked into one unit axis."""
    units = [unit] if isinstance(unit, str) else list(unit)
    missing = [u for u in units if u not in da.dims]
    if missing:
        raise SelectionError(f"{da.name!r} has no unit dim {missing}; its dims are {list(da.dims)}")
    groups = [d for d in da.dims if d not in units]
    arr = da.transpose(*groups, *units).values.astype(float)
    arr = arr.reshape(*arr.shape[: len(groups)], int(np.prod(arr.shape[len(groups):])))
    records = []
    for index in np.ndindex(*arr.shape[: len(groups)]):
        coords = {d: _plain(da[d].values[i]) for d, i in zip(groups, index)}
        iv = bootstrap_interval(arr[index], statistic, **options)
        records.append({"variable": str(da.name), "coords": coords, "estimate": iv.estimate,
                        "ci_low": iv.low, "ci_high": iv.high, "n": iv.n})
    return records


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def sign_flip_test(differences, alternative: str = "greater", *, n_resamples: int = 10000,
                   seed: int = 0, exact_max_n: int = EXACT_MAX_N) -> float:
    """p-value of the mean of paired `differences` against sign-flip symmetry around 0.

    Exact over all 2^n sign patterns for n <= exact_max_n; otherwise Monte Carlo with `n_resamples`
    random patterns, p = (1 + hits) / (1 + n_resamples). NaN differences are dropped."""
    if alternative not in ALTERNATIVES:
        raise SelectionError(f"unknown alternative {alternative!r}; choose one of {list(ALTERNATIVES)}")
    d = np.asarray(differences, dtype=float).ravel()
    d = d[~np.isnan(d)]
    n = d.size
    if n == 0:
        return float("nan")
    observed = d.mean()
    tolerance = 1e-12 * max(1.0, float(np.abs(d).max()))

    def hits(means):
        if alternative == "greater":
            return int((means >= observed - tolerance).sum())
        if alternative == "less":
            return int((means <= observed + tolerance).sum())
        return int((np.abs(means) >= abs(observed) - tolerance).sum())

    if n <= exact_max_n:
        total, count = 2 ** n, 0
        bits = np.arange(n)
        chunk = 1 << 15
        for start in range(0, total, chunk):
            patterns = np.arange(start, min(start + chunk, total))[:, None]
            signs = 1.0 - 2.0 * ((patterns >> bits) & 1)
            count += hits(signs @ d / n)
        return count / total
    rng = np.random.default_rng(seed)
    count = 0
    for start in range(0, n_resamples, 4096):
        size = min(4096, n_resamples - start)
        signs = rng.choice((-1.0, 1.0), size=(size, n))
        count += hits(signs @ d / n)
    return (1 + count) / (1 + n_resamples)


def holm(p_values) -> np.ndarray:
    """Holm's step-down adjusted p-values, in the input order (NaN stays NaN and is not counted)."""
    p = np.asarray(p_values, dtype=float)
    out = np.full(p.shape, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = valid.size
    order = valid[np.argsort(p[valid], kind="stable")]
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out


def paired_comparison(treatment, control, alternative: str = "greater", *, confidence: float = 0.95,
                      n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Treatment against control on the same units (axis 0 of both, in the same order).

    The effect is the mean paired difference (treatment - control), with a percentile bootstrap
    interval over units and the sign-flip p-value of `alternative`. Units with a NaN on either side are
    dropped; extra axes are averaged within a unit first."""
    a = np.asarray(treatment, dtype=float)
    b = np.asarray(control, dtype=float)
    if a.shape != b.shape or a.ndim == 0:
        raise SelectionError(f"paired sides need the same units; got shapes {a.shape} and {b.shape}")
    d = (a - b).reshape(a.shape[0], int(np.prod(a.shape[1:])))
    d = d[~np.isnan(d).any(axis=1)].mean(axis=1)
    iv = bootstrap_interval(d, "mean", confidence=confidence, n_resamples=n_resamples, seed=seed)
    return {"effect": iv.estimate, "ci_low": iv.low, "ci_high": iv.high, "n": iv.n,
            "p": sign_flip_test(d, alternative, seed=seed)}
