"""When does a substitution result show additivity? The additive vector against its controls.

A small KL for h_BB + Delta_X + Delta_Y means little on its own: where the persona moves the
residual little (or the task does), h_BB + Delta_X alone (`persona_only`), h_BB + Delta_Y alone
(`task_only`) or the plain baseline h_BB may do as well. Additivity is claimed at a site only
where the additive vector beats the BEST of those controls by a named margin:

    ratio = median KL(best control) / median KL(additive)   (medians over cells)
    additive at this site  <=>  ratio >= margin             (default margin 10)

`wins` is the fraction of cells where the additive KL, times the margin, is still at most that
cell's smallest control KL: a per-cell check of the same claim.
"""

from __future__ import annotations

import warnings

import numpy as np
import xarray as xr

from ..core.errors import SelectionError
from ..storage.results import own_layers

CONTROLS = ("persona_only", "task_only", "baseline")
DEFAULT_MARGIN = 10.0


def additivity_rows(ds: xr.Dataset, margin: float = DEFAULT_MARGIN) -> list[dict]:
    """One row per (model, position, layer): the median KL of `additive` and of every control the
    dataset has, the best control, the ratio, the per-cell win fraction and the verdict."""
    if ds.attrs.get("experiment") != "substitute":
        raise SelectionError(f"additivity needs a substitute dataset, not experiment={ds.attrs.get('experiment')!r}")
    if margin <= 1:
        raise SelectionError(f"the additivity margin must be > 1 (a factor), got {margin}")
    present = [str(c) for c in ds.condition.values]
    controls = [c for c in CONTROLS if c in present]
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
                additive = site.sel(condition="additive").values.astype(float)
                per_control = {c: site.sel(condition=c).values.astype(float) for c in controls}
                medians = {c: _median(v) for c, v in per_control.items()}
                best = min(controls, key=lambda c: (np.inf if np.isnan(medians[c]) else medians[c]))
                add_median = _median(additive)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", RuntimeWarning)  # cells an interrupted run never reached
                    smallest = np.nanmin(np.stack(list(per_control.values())), axis=0)
                valid = ~np.isnan(additive) & ~np.isnan(smallest)
                ratio = medians[best] / add_median if add_median > 0 else np.inf
                rows.append({
                    "model": str(model), "position": str(position), "layer": int(layer),
                    "additive": add_median, **medians, "best_control": best, "ratio": float(ratio),
                    "wins": float(np.mean(additive[valid] * margin <= smallest[valid])) if valid.any() else float("nan"),
                    "additive_holds": bool(ratio >= margin),
                    "n": int(valid.sum()),
                })
    return rows


def _median(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(np.median(values)) if values.size else float("nan")


def verdict_text(rows: list[dict], margin: float = DEFAULT_MARGIN) -> str:
    """One sentence per model: at which (position, layer) sites additivity holds by the margin."""
    lines = []
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        held = [f"{r['position']}@{r['layer']}" for r in mine if r["additive_holds"]]
        lines.append(
            f"{model}: the additive vector beats the best of {list(CONTROLS)} by >= {margin:g}x at "
            f"{len(held)} of {len(mine)} sites" + (f" ({', '.join(held)})" if held else "")
        )
    return "\n".join(lines)
