"""compare: our medians over cells next to the numbers the paper (Xu 2026) reports.

The paper reports three models on two grids. The short grid (4 x 3 cells) is in its v15_* files,
the long grid (8 x 6 cells) in its v16_* files: per position and layer, `decomposition` holds the
cell median and IQR of each statistic and `causal` those of the additive substitution KL. Its
behavioural test (v17, Gemma-2-2B only, long-grid personas x tasks arch/plan/proposal) holds, per
condition, how many cells show any persona marker.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np
import xarray as xr

from ..errors import PersonaError, SelectionError
from ..store import spec_of
from .summary import summarize

MODEL_KEYS = {
    "google/gemma-2-2b-it": "gemma2b",
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen15",
    "Qwen/Qwen2.5-3B-Instruct": "qwen3b",
}
GRID_FILES = {
    "xu2026-short": "v15_{key}_localized_positions.json",
    "xu2026-long": "v16_{key}_diverse_grid.json",
}
MARKERS_FILE = "v17_behavioral_markers.json"
# Our marker condition names -> the paper's.
MARKER_CONDITIONS = {"clean": "clean", "additive": "additive", "remove_persona": "remove_X", "bare": "bare"}
DECOMPOSITION_STATS = ("cos_xy_sum", "cos_x_y", "inter_over_xy")


@cache
def load_reference(name: str) -> dict:
    """One of the paper's JSON files, shipped in nnsight_persona/reference/xu2026/."""
    path = resources.files("nnsight_persona.reference").joinpath("xu2026", name)
    if not path.is_file():
        raise PersonaError(f"no reference file {name!r} in nnsight_persona/reference/xu2026/")
    return json.loads(path.read_text(encoding="utf-8"))


def _has_reference(name: str) -> bool:
    return resources.files("nnsight_persona.reference").joinpath("xu2026", name).is_file()


def reported_combinations() -> list[tuple[str, str]]:
    """(model id, grid) pairs the paper reports decomposition and causal numbers for."""
    return [
        (model, grid)
        for model, key in MODEL_KEYS.items()
        for grid, pattern in GRID_FILES.items()
        if _has_reference(pattern.format(key=key))
    ]


def reference_file(model_id: str, grid: str, experiment: str) -> str:
    """The paper's file for this model, grid and experiment, or a PersonaError listing what exists."""
    key = MODEL_KEYS.get(model_id)
    if experiment == "markers":
        if key == "gemma2b" and grid == "xu2026-long":
            return MARKERS_FILE
        raise PersonaError(
            f"the paper reports no marker results for model {model_id!r} on grid {grid!r}; "
            f"it reports them only for google/gemma-2-2b-it on xu2026-long"
        )
    name = GRID_FILES[grid].format(key=key) if key and grid in GRID_FILES else None
    if name is None or not _has_reference(name):
        listed = ", ".join(f"{m} on {g}" for m, g in reported_combinations())
        raise PersonaError(
            f"the paper reports no results for model {model_id!r} on grid {grid!r}; it reports: {listed}"
        )
    return name


def compare(ds: xr.Dataset) -> list[dict]:
    """Rows of our cell medians (and quartiles) next to the paper's, for every model in `ds`.

    Works on decompose, substitute (condition additive) and markers datasets."""
    experiment = ds.attrs.get("experiment")
    handlers = {"decompose": _compare_decompose, "substitute": _compare_substitute, "markers": _compare_markers}
    if experiment not in handlers:
        raise PersonaError(
            f"cannot compare a dataset with attrs experiment={experiment!r}; allowed: {sorted(handlers)}"
        )
    grid = spec_of(ds).get("grid")
    models = [str(m) for m in ds["model"].values] if "model" in ds.coords else [ds.attrs.get("model_id")]
    rows = []
    for model_id in models:
        name = reference_file(model_id, grid, experiment)
        one = ds.sel(model=model_id) if "model" in ds.dims else ds
        rows.extend(handlers[experiment](one, load_reference(name), model_id))
    return rows


def _row(model_id, statistic, position, layer, ours: xr.Dataset, paper: dict) -> dict:
    q25, q75 = paper["iqr"]
    return {
        "model": model_id,
        "statistic": statistic,
        "position": position,
        "layer": layer,
        "n": int(ours["count"]),
        "ours_median": float(ours["median"]),
        "paper_median": float(paper["median"]),
        "ours_q25": float(ours["q25"]),
        "paper_q25": float(q25),
        "ours_q75": float(ours["q75"]),
        "paper_q75": float(q75),
    }


def _shared_sites(ds: xr.Dataset, table: dict, what: str) -> list[tuple[str, int]]:
    """(position, layer) pairs both we and the paper have, in our order."""
    ours = [(str(p), int(L)) for p in ds.position.values for L in ds.layer.values]
    shared = [(p, L) for p, L in ours if str(L) in table.get(p, {})]
    if not shared:
        paper = {p: sorted(int(L) for L in layers) for p, layers in table.items()}
        raise SelectionError(
            f"no (position, layer) in common with the paper's {what}: ours are positions "
            f"{[str(p) for p in ds.position.values]} x layers {[int(L) for L in ds.layer.values]}, "
            f"the paper's are {paper}"
        )
    return shared


def _compare_decompose(ds, ref, model_id):
    table = ref["decomposition"]
    summaries = {s: summarize(ds[s]) for s in DECOMPOSITION_STATS}
    return [
        _row(model_id, s, p, L, summaries[s].sel(position=p, layer=L), table[p][str(L)][s])
        for p, L in _shared_sites(ds, table, "decomposition")
        for s in DECOMPOSITION_STATS
        if s in table[p][str(L)]
    ]


def _compare_substitute(ds, ref, model_id):
    conditions = [str(c) for c in ds.condition.values]
    if "additive" not in conditions:
        raise SelectionError(f"the paper's causal numbers are for condition 'additive'; this dataset has {conditions}")
    summary = summarize(ds["kl"].sel(condition="additive"))
    table = ref["causal"]
    return [
        _row(model_id, "kl additive", p, L, summary.sel(position=p, layer=L), table[p][str(L)]["summary"])
        for p, L in _shared_sites(ds, table, "causal results")
    ]


def _compare_markers(ds, ref, model_id):
    # Like for like: keep the paper's cells when the dataset has them all.
    paper_cells = [f"{x}__{y}" for x in ref["personas"] for y in ref["tasks"]]
    ours_cells = [str(c) for c in ds.cell.values]
    if set(paper_cells) <= set(ours_cells):
        ds = ds.sel(cell=paper_cells)
    rows = []
    for condition in [str(c) for c in ds.condition.values]:
        paper = ref["summary"].get(MARKER_CONDITIONS.get(condition, condition))
        if paper is None:
            continue
        one = ds.sel(condition=condition)
        any_marker = one["any_marker"].values.astype(float)
        valid = ~np.isnan(any_marker)
        rows.append({
            "model": model_id,
            "condition": condition,
            "ours_any": f"{int(np.nansum(any_marker))}/{int(valid.sum())}",
            "paper_any": f"{paper['any_present_count']}/{paper['total_cells']}",
            "ours_rate": float(np.nanmean(any_marker)) if valid.any() else float("nan"),
            "paper_rate": float(paper["any_present_count"] / paper["total_cells"]),
            "ours_distinct_mean": float(np.nanmean(one["n_distinct"].values.astype(float))) if valid.any() else float("nan"),
            "paper_distinct_mean": float(paper["distinct_mean"]),
        })
    if not rows:
        raise SelectionError(
            f"no marker condition in common with the paper: ours are {[str(c) for c in ds.condition.values]}, "
            f"allowed: {list(MARKER_CONDITIONS)}"
        )
    return rows
