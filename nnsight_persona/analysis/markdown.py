"""Markdown tables and numbers as the docs' generated blocks print them (one formatting for all)."""

from __future__ import annotations

import math

import numpy as np


def number(value, digits: int = 3) -> str:
    """Significant digits for values that span orders of magnitude (KLs), plain otherwise."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    value = float(value)
    if value == 0:
        return "0"
    if abs(value) >= 10 ** 4 or abs(value) < 10 ** -4:
        return f"{value:.{digits - 1}e}"
    return f"{value:.{digits}g}"


def markdown(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(v if isinstance(v, str) else number(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
