"""The residual vectors experiments write, built from a capture's four conditions.

With h_C the residual under condition C at one site: Delta_X = h_XB - h_BB, Delta_Y = h_BY - h_BB;
`additive` = h_BB + Delta_X + Delta_Y (the paper's prediction of h_XY), `oracle` = h_XY,
`baseline` = h_BB, `persona_only` = h_BB + Delta_X, `task_only` = h_BB + Delta_Y,
`remove_persona` = h_XY - Delta_X, and `random` = h_BB + a unit direction scaled to
|Delta_X + Delta_Y|. Vectors are computed per site when written, so a sweep holds only the
capture's residuals, not a copy per condition. `vector` takes numpy arrays (local runs) or torch
tensors (the remote-native sweeps build the same vectors on the server, core/recipes.py).
"""

from __future__ import annotations

import zlib

import numpy as np
import xarray as xr

ORDER = ("BB", "XB", "BY", "XY")
NAMES = ("additive", "oracle", "baseline", "persona_only", "task_only", "remove_persona", "random")


def stacked(resid: xr.DataArray) -> np.ndarray:
    """One model's resid as float32 [..., 4, hidden], conditions in the order BB, XB, BY, XY."""
    other = [d for d in resid.dims if d not in ("condition", "hidden")]
    ordered = _selected(resid, "condition", ORDER).transpose(*other, "condition", "hidden")
    return ordered.values.astype(np.float32, copy=False)


def _selected(da: xr.DataArray, dim: str, labels) -> xr.DataArray:
    """da.sel({dim: labels}), or da itself where labels are the whole coordinate in order (a
    selection by list copies the data; the common case, a sweep over everything captured, then
    reads the capture in place)."""
    labels = list(labels)
    return da if da[dim].values.tolist() == labels else da.sel({dim: labels})


def site_residuals(capture_ds: xr.Dataset, layers, positions, cells) -> np.ndarray:
    """A capture's residuals at the chosen sites as one float32 array [layer, position, cell,
    4 (BB, XB, BY, XY), hidden]: a view of the capture when the sites are all of it, in its order,
    else one copy. A sweep that kept a selected DataArray beside it would hold the capture twice
    over."""
    picked = capture_ds.resid.isel(model=0)
    for dim, labels in (("layer", layers), ("position", positions), ("cell", cells)):
        picked = _selected(picked, dim, labels)
    return stacked(picked.transpose("layer", "position", "cell", "condition", "hidden"))


def random_direction(seed: int, layer: int, position: str, cell: str, hidden: int) -> np.ndarray:
    """The random control's unit vector [hidden] at one site, from a generator seeded by `seed`
    and the site's names: the same whichever other sites, cells or batches a run covers, and
    drawn when a patch is written, so a sweep holds no array of them."""
    return direction_of_key(direction_key(seed, layer, position, cell), hidden)


def direction_key(seed: int, layer: int, position: str, cell: str) -> list[int]:
    """The four integers that seed a site's random direction (four numbers, whatever the width:
    what a remote-native sweep sends for the server to draw the direction itself)."""
    return [int(seed), int(layer), zlib.crc32(position.encode()), zlib.crc32(cell.encode())]


def direction_of_key(key, hidden: int) -> np.ndarray:
    """The unit vector [hidden] (float32) a direction key seeds (numpy's PCG64: the same numbers
    on every machine)."""
    direction = np.random.default_rng([int(k) for k in key]).standard_normal(hidden).astype(np.float32)
    return direction / np.linalg.norm(direction)


def delta_x(h: np.ndarray) -> np.ndarray:
    """Delta_X = h_XB - h_BB from h [..., 4, hidden] (BB, XB, BY, XY): what the persona adds."""
    return h[..., ORDER.index("XB"), :] - h[..., ORDER.index("BB"), :]


def vector(h, name: str, direction=None):
    """The vector `name` from h [..., 4, hidden] (BB, XB, BY, XY), a numpy array or a torch tensor
    (`direction` of the same kind)."""
    bb, xb, by, xy = h[..., 0, :], h[..., 1, :], h[..., 2, :], h[..., 3, :]
    dx, dy = xb - bb, by - bb
    if name == "additive":
        return bb + dx + dy
    if name == "oracle":
        return xy
    if name == "baseline":
        return bb
    if name == "persona_only":
        return bb + dx
    if name == "task_only":
        return bb + dy
    if name == "remove_persona":
        return xy - dx
    if name == "random":
        return bb + direction * _norm(dx + dy)
    raise ValueError(f"unknown vector {name!r}; allowed: {list(NAMES)}")


def rescaled(v, to):
    """`v` rescaled to the norm of `to` (torch tensors [..., hidden]): inject's normalisation
    control, `cached_rescaled`."""
    return v * (to.norm(dim=-1, keepdim=True) / v.norm(dim=-1, keepdim=True).clamp_min(1e-12))


def _norm(x):
    """The norm over the last axis, kept, of a numpy array or a torch tensor."""
    if isinstance(x, np.ndarray):
        return np.linalg.norm(x, axis=-1, keepdims=True)
    return x.norm(dim=-1, keepdim=True)
