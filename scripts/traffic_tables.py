"""docs/remote.md's traffic tables, from committed logs.

Each log is what `NNSIGHT_PERSONA_TRAFFIC_LOG=FILE pytest ...` writes (tests/traffic_log.py): one
JSON line per measurement. `traffic-widths` sets the bytes of one run at hidden size 64 beside
the same run at 1024 (tests/test_native.py, tests/test_ndif.py), one row per log, backend and
experiment, the log's name saying which remote path made it; `traffic-plan` sets `plan` beside the
loopback server's measured requests and bytes (tests/test_ndif.py).
"""

from __future__ import annotations

import json
from pathlib import Path


def _rows(path: str, kind: str) -> list[dict]:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [row for row in map(json.loads, lines) if row.get("kind") == kind]


def _ratio(a: int, b: int) -> str:
    return f"{max(a, b) / min(a, b):.2f}"


def widths_table(*paths: str) -> str:
    out = ["| remote path (log) | backend | experiment | requests | bytes sent, width 64 | width 1024 | ratio "
           "| bytes received, width 64 | width 1024 | ratio |", "|---|---|---|---|---|---|---|---|---|---|"]
    for path in paths:
        runs: dict = {}
        for row in _rows(path, "width"):  # the last measurement of each run counts
            runs.setdefault((row["backend"], row["experiment"]), {})[row["width"]] = row
        for (backend, experiment), by_width in sorted(runs.items()):
            narrow, wide = by_width[64], by_width[1024]
            out.append(f"| {Path(path).stem} | {backend} | {experiment} | {narrow['requests']} | {narrow['sent']:,} | "
                       f"{wide['sent']:,} | {_ratio(narrow['sent'], wide['sent'])} | {narrow['received']:,} | "
                       f"{wide['received']:,} | {_ratio(narrow['received'], wide['received'])} |")
    return "\n".join(out) + "\n"


def plan_table(path: str) -> str:
    out = ["| experiment | requests (plan, measured) | bytes up: plan | measured | plan / measured | bytes down: plan "
           "| measured | plan / measured | with zstd: up | down |", "|---|---|---|---|---|---|---|---|---|---|"]
    rows = {row["experiment"]: row for row in _rows(path, "plan")}
    for name, r in sorted(rows.items()):
        out.append(f"| {name} | {r['requests_plan']}, {r['requests']} | {r['up_plan']:,} | {r['up']:,} | "
                   f"{r['up_plan'] / r['up']:.3f} | {r['down_plan']:,} | {r['down']:,} | {r['down_plan'] / r['down']:.3f} "
                   f"| {r['up_zstd']:,} | {r['down_zstd']:,} |")
    return "\n".join(out) + "\n"


GENERATORS = {"traffic-widths": widths_table, "traffic-plan": plan_table}
