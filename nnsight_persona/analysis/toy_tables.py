"""Markdown tables of the toy model's own records (its weights folder's `evaluation.json` and
`training_summary.json`), for the docs' generated blocks (docblocks.py)."""

from __future__ import annotations

import json
from pathlib import Path

from .tables import markdown

# (metric key, what it counts, count key): the rows of the evaluation table, in order.
_EVALUATION_ROWS = [
    ("persona_marker_rate", "persona answers with one of their markers (short + long)", ("n_short", "n_long")),
    ("short_marker_rate", "short personas", ("n_short",)),
    ("long_marker_rate", "long personas, profession markers", ("n_long",)),
    ("system_marker_rate", "short personas given in a system turn, bare task as the user turn", ("n_system",)),
    ("neutral_leak_rate", "baseline + bare answers with any persona marker", ("n_baseline", "n_bare")),
    ("baseline_leak_rate", "baseline persona", ("n_baseline",)),
    ("bare_leak_rate", "bare prompts", ("n_bare",)),
    ("system_baseline_leak_rate", "baseline persona in a system turn, any persona marker", ("n_system_baseline",)),
    ("long_copy_rate", "long answers copying every slot value", ("n_long",)),
    ("long_slot_name", "per slot: name", ("n_long",)),
    ("long_slot_city", "per slot: city", ("n_long",)),
    ("long_slot_item", "per slot: item", ("n_long",)),
]


def evaluation_table(path: str) -> str:
    """The held-out evaluation of `toy evaluate --json`, with each metric's required threshold."""
    from ..models.toy.evaluate import THRESHOLDS

    metrics = json.loads(Path(path).read_text())
    rows = []
    for key, label, counts in _EVALUATION_ROWS:
        if key not in metrics:
            continue
        n = sum(int(metrics.get(c, 0)) for c in counts)
        rule = " ".join(str(v) for v in THRESHOLDS[key]).replace(">=", "≥") if key in THRESHOLDS else ""
        rows.append([f"{label} (n = {n})", f"{float(metrics[key]):.3f}", rule])
    return markdown(["metric", "value", "required"], rows)


def novel_table(path: str) -> str:
    """Copy rates of slot values absent from the corpus (`toy evaluate --novel N`)."""
    metrics = json.loads(Path(path).read_text())
    rows = []
    for key in ("name", "city", "item", "name+city+item"):
        if f"novel_{key}_copied" in metrics:
            rows.append([key.replace("+", " + "), f"{float(metrics[f'novel_{key}_copied']):.3f}",
                         f"{float(metrics[f'novel_{key}_marker_rate']):.3f}"])
    return markdown(["novel slot", "copied", "answers with profession markers"], rows)


def training_table(path: str) -> str:
    """What `training_summary.json` records of a toy training run."""
    s = json.loads(Path(path).read_text())
    seconds = float(s["train_seconds"])
    rows = [
        ["seed / steps / batch size", f"{s['seed']} / {s['steps']:,} / {s['batch_size']}"],
        ["training examples", f"{s['examples']:,}"],
        ["parameters", f"{s['parameters']:,}"],
        ["final training loss (mean of the last 50 steps)", f"{float(s['final_loss']):.3f}"],
        ["wall time of the whole command", f"{seconds:.1f} s ({seconds / 60:.1f} min)"],
    ]
    return markdown(["", ""], rows)


GENERATORS = {
    "toy-evaluation": evaluation_table,
    "toy-novel": novel_table,
    "toy-training": training_table,
}
