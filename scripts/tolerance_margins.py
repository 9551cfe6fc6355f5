"""The margins table of tests/README.md ("Comparing two computations"), from committed logs.

Each log is what `NNSIGHT_PERSONA_TOLERANCE_LOG=FILE pytest -m numeric` writes (tests/tolerances.py):
one JSON line per comparison with the test, its bound and its worst relative error. The table gives
each test's worst error under each log and its margin (bound / worst) under the worse of the two.
"""

from __future__ import annotations

import json
from pathlib import Path


def _worst(path: str) -> dict[str, tuple[float, float]]:
    worst: dict[str, tuple[float, float]] = {}
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        row = json.loads(line)
        test = row["test"].split("[")[0].removeprefix("tests/")
        bound, error = float(row["bound"]), float(row["worst"])
        old = worst.get(test, (bound, 0.0))
        worst[test] = (min(old[0], bound), max(old[1], error))
    return worst


def margins_table(native: str, second: str) -> str:
    a, b = _worst(native), _worst(second)
    rows = ["| test | bound | worst, native | worst, second rounding | margin |", "|---|---|---|---|---|"]
    def used(t):  # the largest error over the bound, on either rounding
        return max(a.get(t, (1, 0.0))[1], b.get(t, (1, 0.0))[1]) / min(a.get(t, (1.0, 0))[0], b.get(t, (1.0, 0))[0])

    for test in sorted(set(a) | set(b), key=lambda t: (-used(t), t)):  # the thinnest margin first
        bound = min(a.get(test, (1.0, 0))[0], b.get(test, (1.0, 0))[0])
        worst = max(a.get(test, (1, 0.0))[1], b.get(test, (1, 0.0))[1])
        cells = [f"{a[test][1]:.1e}" if test in a else "-", f"{b[test][1]:.1e}" if test in b else "-"]
        margin = f"{bound / worst:,.0f}x" if worst > 0 else "exact"
        rows.append(f"| `{test}` | {bound:g} | {cells[0]} | {cells[1]} | {margin} |")
    return "\n".join(rows) + "\n"


GENERATORS = {"tolerance-margins": margins_table}
