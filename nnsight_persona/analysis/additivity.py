"""When does a substitution result show additivity? The additive vector against its controls.

A small KL for h_BB + Delta_X + Delta_Y means little on its own: where the persona moves the
residual little (or the task does), h_BB + Delta_X alone (`persona_only`), h_BB + Delta_Y alone
(`task_only`) or the plain baseline h_BB may do as well. Additivity is claimed at a site only
where the additive vector beats EVERY one of those controls by a named margin, judged from the
cells' paired ratios and their interval, not from two medians:

    ratio_c(cell) = KL(control c, cell) / KL(additive, cell)      (paired: the same cell)
    median over cells of ratio_c, with its seeded 95% percentile bootstrap interval over cells
    additive at this site  <=>  for every control c: lower end of that interval >= margin (default 10)

The row names the control with the lowest lower end (`best_control`, the one the additive vector
beats by the least) and its paired ratio; every condition's median KL over cells comes with its
95% bootstrap interval over cells. `wins` is the fraction of cells where the additive KL, times the
margin, is still at most that cell's smallest control KL.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from ..core.errors import SelectionError
from ..storage.results import own_layers
from .statistics import bootstrap_interval

CONTROLS = ("persona_only", "task_only", "baseline")
DESCRIBED = ("random",)  # shown beside the controls with its interval; not part of the verdict
DEFAULT_MARGIN = 10.0
CONFIDENCE = 0.95


def paired_ratio(control: np.ndarray, additive: np.ndarray) -> np.ndarray:
    """KL(control) / KL(additive) per cell; 0/0 (both runs equal the clean one) counts as 1, a
    positive control KL over a zero additive KL as inf; NaN where either side is NaN."""
    control = np.asarray(control, dtype=float)
    additive = np.asarray(additive, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = control / additive
    ratio[(control == 0) & (additive == 0)] = 1.0
    return ratio


def additivity_rows(ds: xr.Dataset, margin: float = DEFAULT_MARGIN, seed: int = 0) -> list[dict]:
    """One row per (model, position, layer): the median KL over cells of `additive`, of every control
    and of `random` where the dataset has them, each with its 95% interval (`*_ci_low`, `*_ci_high`);
    the control the additive vector beats by the least (`best_control`), the median paired ratio
    against it with its interval (`ratio`, `ratio_ci_low`, `ratio_ci_high`), the per-cell win
    fraction and the verdict `additive_holds` (every control's ratio interval at or above `margin`)."""
    if ds.attrs.get("experiment") != "substitute":
        raise SelectionError(f"additivity needs a substitute dataset, not experiment={ds.attrs.get('experiment')!r}")
    if margin <= 1:
        raise SelectionError(f"the additivity margin must be > 1 (a factor), got {margin}")
    present = [str(c) for c in ds.condition.values]
    controls = [c for c in CONTROLS if c in present]
    described = [c for c in DESCRIBED if c in present]
    if "additive" not in present or not controls:
        raise SelectionError(
            f"additivity needs condition 'additive' and at least one of {list(CONTROLS)}; this dataset has {present}"
        )
    kl = ds["kl"]
    if "model" not in kl.dims:
        kl = kl.expand_dims(model=[ds.attrs.get("model_id", "?")])
    rows = []
    for model in kl.model.values:
        # A depth-aligned dataset of several models (results.open_results): each on its own layers.
        mine = own_layers(ds[["kl"]].sel(model=[model]))["kl"].isel(model=0) if "layer_frac" in kl.dims \
            else kl.sel(model=model)
        for position in mine.position.values:
            for layer in mine.layer.values:
                site = mine.sel(position=position, layer=layer)
                values = {c: site.sel(condition=c).values.astype(float).ravel()
                          for c in ("additive", *controls, *described)}
                row = {"model": str(model), "position": str(position), "layer": int(layer)}
                for condition, cells in values.items():
                    iv = bootstrap_interval(cells, "median", confidence=CONFIDENCE, seed=seed)
                    row.update({condition: iv.estimate, f"{condition}_ci_low": iv.low, f"{condition}_ci_high": iv.high})
                ratios = {c: bootstrap_interval(paired_ratio(values[c], values["additive"]), "median",
                                                confidence=CONFIDENCE, seed=seed) for c in controls}
                best = min(controls, key=lambda c: (_or_inf(ratios[c].low), _or_inf(ratios[c].estimate)))
                additive = values["additive"]
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # cells an interrupted run never reached
                    smallest = np.nanmin(np.stack([values[c] for c in controls]), axis=0)
                valid = ~np.isnan(additive) & ~np.isnan(smallest)
                row.update({
                    "best_control": best, "ratio": ratios[best].estimate, "ratio_ci_low": ratios[best].low,
                    "ratio_ci_high": ratios[best].high,
                    "wins": float(np.mean(additive[valid] * margin <= smallest[valid])) if valid.any() else float("nan"),
                    "additive_holds": bool(all(ratios[c].low >= margin for c in controls)),
                    "n": int(valid.sum()),
                })
                rows.append(row)
    return rows


def _or_inf(value: float) -> float:
    return np.inf if np.isnan(value) else value


def verdict_text(rows: list[dict], margin: float = DEFAULT_MARGIN) -> str:
    """One sentence per model: at which (position, layer) sites additivity holds by the margin."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        held = [f"{r['position']}@{r['layer']}" for r in mine if r["additive_holds"]]
        lines.append(
            f"{model}: the additive vector beats each of {list(CONTROLS)} by >= {margin:g}x at {len(held)} of "
            f"{len(mine)} sites" + (f" ({', '.join(held)})" if held else "")
            + f" (judged by the lower end of the {CONFIDENCE:.0%} interval of the median paired ratio over cells)"
        )
    return "\n".join(lines)
