"""Our 95% bootstrap interval beside a paper's number, and whether the paper's number lies outside it
(the `compare` command's ours_ci_low, ours_ci_high and paper_outside columns)."""

from __future__ import annotations

import numpy as np

from .statistics import bootstrap_interval


def interval_fields(values, paper_value: float, statistic: str = "median", seed: int = 0) -> dict:
    """The interval of `statistic` over the cells in `values` and the flag `paper_outside`
    ("yes" when the paper's value lies outside it, "" otherwise, "n/a" without an interval)."""
    iv = bootstrap_interval(np.asarray(values, dtype=float).ravel(), statistic, seed=seed)
    if np.isnan(iv.low):
        flag = "n/a"
    else:
        flag = "yes" if not iv.low <= float(paper_value) <= iv.high else ""
    return {"ours_ci_low": iv.low, "ours_ci_high": iv.high, "paper_outside": flag}
