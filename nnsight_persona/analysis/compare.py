"""compare: our medians over cells next to the numbers the paper (Xu 2026) reports.

The paper reports three models on two grids. The short grid (4 x 3 cells) is in its v15_* files,
the long grid (8 x 6 cells) in its v16_* files: per position and layer, `decomposition` holds the
cell median and IQR of each statistic and `causal` those of the additive substitution KL. Its
behavioural test (v17, Gemma-2-2B only, long-grid personas x tasks arch/plan/proposal) holds, per
condition, how many cells show any persona marker. Its host-injection test (Gemma-2-2B, the same 24
cells) is in v14b_v2 (host, oracle and cached at layer 14, per cell) and v14e_multilayer (cached,
clamped at several layer sets).

A model the paper does not report (the toy, SmolLM2, any other) is compared with a paper model
named by `paper=` (gemma2b, qwen15, qwen3b): layers are then matched by depth, through the paper's
fractional grid (ours round(f x n) against the paper's round(f x N), for the same fraction f), and
layer sets of the injection test are the paper's clamp sets scaled the same way.
"""

from __future__ import annotations

import json
from functools import cache
from importlib import resources

import numpy as np
import xarray as xr

from ..core.errors import PersonaError, SelectionError
from ..storage.store import spec_of
from .summary import summarize

MODEL_KEYS = {
    "google/gemma-2-2b-it": "gemma2b",
    "Qwen/Qwen2.5-1.5B-Instruct": "qwen15",
    "Qwen/Qwen2.5-3B-Instruct": "qwen3b",
}
PAPER_N_LAYERS = {"gemma2b": 26, "qwen15": 28, "qwen3b": 36}
INJECT_FILES = ("v14b_v2.json", "v14e_multilayer.json")
# Our inject condition names -> the per-cell keys of v14b_v2 (layer 14 only).
INJECT_CONDITIONS = {"host": "kl_host_clean", "oracle": "kl_oracle", "cached": "kl_cached"}
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


def paper_key(model_id: str, paper: str | None = None) -> str | None:
    """The paper's key for a model it reports, or the `paper` model named for any other."""
    if paper is not None:
        if paper not in PAPER_N_LAYERS:
            raise SelectionError(f"unknown paper model {paper!r}; allowed: {sorted(PAPER_N_LAYERS)}")
        return paper
    return MODEL_KEYS.get(model_id)


def reference_file(model_id: str, grid: str, experiment: str, paper: str | None = None) -> str:
    """The paper's file for this model, grid and experiment, or a PersonaError listing what exists."""
    key = paper_key(model_id, paper)
    if experiment in ("markers", "inject"):
        if key == "gemma2b" and grid == "xu2026-long":
            return MARKERS_FILE if experiment == "markers" else " + ".join(INJECT_FILES)
        raise PersonaError(
            f"the paper reports no {experiment} results for model {model_id!r} on grid {grid!r}; "
            f"it reports them only for google/gemma-2-2b-it on xu2026-long (compare another model "
            f"with it through paper='gemma2b' / --paper gemma2b)"
        )
    name = GRID_FILES[grid].format(key=key) if key and grid in GRID_FILES else None
    if name is None or not _has_reference(name):
        listed = ", ".join(f"{m} on {g}" for m, g in reported_combinations())
        raise PersonaError(
            f"the paper reports no results for model {model_id!r} on grid {grid!r}; it reports: {listed}. "
            f"Another model is compared with a paper model through --paper {'|'.join(sorted(PAPER_N_LAYERS))}"
        )
    return name


def layer_partner(layer: int, n_layers: int, paper_n_layers: int) -> int | None:
    """The paper model's layer at the same depth: ours is round(f x n_layers) for some fraction f
    of the paper's grid, the partner round(f x paper_n_layers); None off the grid."""
    from ..core.selection import PAPER_LAYER_FRACTIONS

    clip = lambda v, n: min(max(round(v), 1), n - 1)
    for f in PAPER_LAYER_FRACTIONS:
        if clip(f * n_layers, n_layers) == layer:
            return clip(f * paper_n_layers, paper_n_layers)
    return None


def compare(ds: xr.Dataset, paper: str | None = None) -> list[dict]:
    """Rows of our cell medians (and quartiles) next to the paper's, for every model in `ds`.

    Works on decompose, substitute (condition additive), markers and inject datasets. `paper`:
    the paper model (gemma2b, qwen15, qwen3b) to set beside a model the paper does not report."""
    experiment = ds.attrs.get("experiment")
    handlers = {"decompose": _compare_decompose, "substitute": _compare_substitute, "markers": _compare_markers,
                "inject": _compare_inject}
    if experiment not in handlers:
        raise PersonaError(
            f"cannot compare a dataset with attrs experiment={experiment!r}; allowed: {sorted(handlers)}"
        )
    grid = spec_of(ds).get("grid")
    if "position" in ds.dims and "p_user_last" in ds.position.values and "position_convention" not in ds.attrs:
        raise SelectionError(
            "this file was made before p_user_last took the paper's definition (the last token of the "
            "template without the generation prompt) and its KL window started at the probe: rerun it, "
            "or compare the other positions (ds.drop_sel(position='p_user_last'))"
        )
    models = [str(m) for m in ds["model"].values] if "model" in ds.coords else [ds.attrs.get("model_id")]
    rows = []
    for model_id in models:
        name = reference_file(model_id, grid, experiment, paper)
        one = _one_model(ds, model_id)
        key = paper_key(model_id, paper)
        if MODEL_KEYS.get(model_id) == key:  # the paper's own model: its own layers
            partner = lambda L: L
        else:
            n_layers = int(one.attrs["n_layers"])
            partner = lambda L, n=n_layers, N=PAPER_N_LAYERS[key]: layer_partner(L, n, N)
        references = [load_reference(n) for n in name.split(" + ")]
        rows.extend(handlers[experiment](one, references[0] if len(references) == 1 else references, model_id, partner))
    return rows


def _one_model(ds: xr.Dataset, model_id: str) -> xr.Dataset:
    """One model of `ds` without the model dim, on its own layers (a depth-aligned dataset of
    several models, results.open_results, holds layer_frac) and with its own n_layers in attrs."""
    from ..storage.results import n_layers_of, own_layers

    if "model" not in ds.dims:
        return ds
    one = own_layers(ds.sel(model=[model_id])).isel(model=0)
    one.attrs = {**ds.attrs, "n_layers": n_layers_of(ds, model_id)}
    return one


def side_by_side(rows: list[dict]) -> list[dict]:
    """compare's rows as one table with a column per model beside the paper's: one row per
    statistic or condition, position and paper layer (or layer set); values are medians (rates
    for markers)."""
    table: dict[tuple, dict] = {}
    for row in rows:
        key = tuple((k, row[k]) for k in ("statistic", "condition", "position") if k in row)
        if "layer" in row:
            key += (("paper_layer", row.get("paper_layer", row["layer"])),)
        if "layer_set" in row:
            key += (("paper_layer_set", row.get("paper_layer_set", row["layer_set"])),)
        entry = table.setdefault(key, dict(key))
        entry.setdefault("paper", row.get("paper_median", row.get("paper_rate")))
        entry[row["model"]] = row.get("ours_median", row.get("ours_rate"))
    return list(table.values())


def _row(model_id, statistic, position, layer, ours: xr.Dataset, paper: dict, paper_layer=None, cells=None) -> dict:
    from .paper_interval import interval_fields

    q25, q75 = paper["iqr"]
    return {
        "model": model_id,
        "statistic": statistic,
        "position": position,
        "layer": layer,
        **({} if paper_layer is None or paper_layer == layer else {"paper_layer": paper_layer}),
        "n": int(ours["count"]),
        "ours_median": float(ours["median"]),
        "paper_median": float(paper["median"]),
        "ours_q25": float(ours["q25"]),
        "paper_q25": float(q25),
        "ours_q75": float(ours["q75"]),
        "paper_q75": float(q75),
        **({} if cells is None else interval_fields(cells, paper["median"])),
    }


def _shared_sites(ds: xr.Dataset, table: dict, what: str, partner) -> list[tuple[str, int, int]]:
    """(position, our layer, the paper's layer) for sites both we and the paper have, in our order."""
    ours = [(str(p), int(L), partner(int(L))) for p in ds.position.values for L in ds.layer.values]
    shared = [(p, L, P) for p, L, P in ours if P is not None and str(P) in table.get(p, {})]
    if not shared:
        paper = {p: sorted(int(L) for L in layers) for p, layers in table.items()}
        raise SelectionError(
            f"no (position, layer) in common with the paper's {what}: ours are positions "
            f"{[str(p) for p in ds.position.values]} x layers {[int(L) for L in ds.layer.values]}, "
            f"the paper's are {paper}"
        )
    return shared


def _compare_decompose(ds, ref, model_id, partner):
    table = ref["decomposition"]
    summaries = {s: summarize(ds[s]) for s in DECOMPOSITION_STATS}
    return [
        _row(model_id, s, p, L, summaries[s].sel(position=p, layer=L), table[p][str(P)][s], P,
             ds[s].sel(position=p, layer=L).values)
        for p, L, P in _shared_sites(ds, table, "decomposition", partner)
        for s in DECOMPOSITION_STATS
        if s in table[p][str(P)]
    ]


def _compare_substitute(ds, ref, model_id, partner):
    conditions = [str(c) for c in ds.condition.values]
    if "additive" not in conditions:
        raise SelectionError(f"the paper's causal numbers are for condition 'additive'; this dataset has {conditions}")
    summary = summarize(ds["kl"].sel(condition="additive"))
    table = ref["causal"]
    return [
        _row(model_id, "kl additive", p, L, summary.sel(position=p, layer=L), table[p][str(P)]["summary"], P,
             ds["kl"].sel(condition="additive", position=p, layer=L).values)
        for p, L, P in _shared_sites(ds, table, "causal results", partner)
    ]


def _compare_markers(ds, ref, model_id, partner):
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
            **_rate_interval(any_marker[valid], paper["any_present_count"] / paper["total_cells"]),
        })
    if not rows:
        raise SelectionError(
            f"no marker condition in common with the paper: ours are {[str(c) for c in ds.condition.values]}, "
            f"allowed: {list(MARKER_CONDITIONS)}"
        )
    return rows


def _rate_interval(values, paper_rate):
    from .paper_interval import interval_fields

    return interval_fields(values, paper_rate, statistic="mean")


def _compare_inject(ds, refs, model_id, partner):
    """Host injection: host, oracle and cached at the paper's single layer (v14b_v2), and cached
    at each clamp set (v14e_multilayer), medians over the cells both have."""
    from ..studies.xu2026.inject import PAPER_CLAMPS, label
    from .paper_interval import interval_fields

    single, multi = refs
    paper_cells = list(single["results"])
    ours_cells = [str(c) for c in ds.cell.values]
    shared = [c for c in paper_cells if c in ours_cells]
    if not shared:
        raise SelectionError(f"no cell in common with the paper's injection test: ours are {ours_cells[:4]}..., "
                             f"the paper's {paper_cells[:4]}...")
    ds = ds.sel(cell=shared)
    our_sets = [str(s) for s in ds.layer_set.values]
    rows = []
    for paper_set in PAPER_CLAMPS:
        ours_label = _scaled_label(paper_set, ds.attrs.get("n_layers"))
        if ours_label not in our_sets:
            continue
        paper_label = label(paper_set)
        conditions = list(INJECT_CONDITIONS) if paper_set == PAPER_CLAMPS[0] else ["cached"]
        for condition in conditions:
            if condition not in [str(c) for c in ds.condition.values]:
                continue
            ours = ds.kl.sel(layer_set=ours_label, condition=condition).values.astype(float)
            if paper_set == PAPER_CLAMPS[0]:
                paper = np.array([single["results"][c][INJECT_CONDITIONS[condition]] for c in shared])
            else:
                paper = np.array([multi["results"]["_".join(str(L) for L in paper_set)]["kls"][c] for c in shared])
            rows.append({
                "model": model_id, "condition": condition, "layer_set": ours_label,
                **({} if paper_label == ours_label else {"paper_layer_set": paper_label}),
                "n": int((~np.isnan(ours)).sum()),
                "ours_median": float(np.nanmedian(ours)), "paper_median": float(np.median(paper)),
                "ours_q25": float(np.nanpercentile(ours, 25)), "paper_q25": float(np.percentile(paper, 25)),
                "ours_q75": float(np.nanpercentile(ours, 75)), "paper_q75": float(np.percentile(paper, 75)),
                **interval_fields(ours, np.median(paper)),
            })
    if not rows:
        raise SelectionError(f"no layer set in common with the paper's clamp sets {[label(s) for s in PAPER_CLAMPS]} "
                             f"(scaled to this model's depth); ours are {our_sets}")
    return rows


def _scaled_label(paper_set, n_layers) -> str:
    """The label our inject run gives the paper's clamp set scaled to a model of n_layers."""
    from ..studies.xu2026.inject import PAPER_N_LAYERS as INJECT_PAPER_N, label, scaled_layer_sets

    if n_layers is None or int(n_layers) == INJECT_PAPER_N:
        return label(paper_set)
    return label(scaled_layer_sets(int(n_layers), (paper_set,))[0])
