"""Analyses of result datasets: pure xarray/numpy, no model needed.

decompose: the 2x2 decomposition of a capture (Delta_X, Delta_Y, interaction).
summary:   medians and quartiles over cells, as functions of a dataset.
compare:   our medians side by side with the numbers the paper reports.
"""

from .decompose import decompose, delta_vectors
from .summary import format_table, summarize

__all__ = ["decompose", "delta_vectors", "format_table", "summarize"]
