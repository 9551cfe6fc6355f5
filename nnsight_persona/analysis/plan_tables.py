"""The docs' table of what runs cost, from JSON files `nnsight-persona plan --json` wrote."""

from __future__ import annotations

import json
from pathlib import Path

from .markdown import markdown


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def plan_cost_table(*paths: str) -> str:
    """One row per step of each plan: model, grid, step, requests, bytes up and down,
    token-layer-forwards, and the largest batch with its estimated activation memory."""
    rows = []
    for path in paths:
        plan = json.loads(Path(path).read_text())
        for step in plan["steps"]:
            rows.append([plan["model"], plan["grid"], step["step"], f"{step['requests']:,}", _size(step["bytes_up"]),
                         _size(step["bytes_down"]), f"{step['token_layer_forwards']:,}",
                         f"{step['peak_rows']} x {step['peak_width']}, {_size(step['peak_activation_bytes'])}"])
    return markdown(["model", "grid", "step", "requests", "bytes up", "bytes down", "token-layer-forwards",
                     "largest batch (rows x tokens, activation memory)"], rows)


GENERATORS = {"plan-cost": plan_cost_table}
