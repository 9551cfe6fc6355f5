"""The residual vectors experiments write, built from a capture's four conditions.

With h_C the residual under condition C at one site: Delta_X = h_XB - h_BB, Delta_Y = h_BY - h_BB;
`additive` = h_BB + Delta_X + Delta_Y (the paper's prediction of h_XY), `persona_only` = h_BB +
Delta_X, `task_only` = h_BB + Delta_Y, `remove_persona` = h_XY - Delta_X.
"""

from __future__ import annotations

import numpy as np
import xarray as xr


def site_vectors(resid: xr.DataArray) -> dict[str, np.ndarray]:
    """float32 arrays (the resid's dims without `condition`, hidden last) for one model's resid."""
    h = {c: resid.sel(condition=c).values.astype(np.float32) for c in ("BB", "XB", "BY", "XY")}
    dx, dy = h["XB"] - h["BB"], h["BY"] - h["BB"]
    return {
        "BB": h["BB"], "XB": h["XB"], "BY": h["BY"], "XY": h["XY"],
        "delta_x": dx, "delta_y": dy,
        "additive": h["BB"] + dx + dy,
        "persona_only": h["BB"] + dx,
        "task_only": h["BB"] + dy,
        "remove_persona": h["XY"] - dx,
    }
