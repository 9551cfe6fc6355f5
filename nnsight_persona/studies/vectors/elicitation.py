"""Comparing elicitation variants: the cosine between the persona vectors that different ways of
eliciting a trait give (instruction pairs, a third-person character description, 2-shot
dialogue, combined; traits.VARIANTS), per trait, token set and layer. A pure function of an
extraction dataset with an `elicitation` dim; the pass rates per variant are already there
(`pass_rate`, `n_kept`)."""

from __future__ import annotations

import numpy as np
import xarray as xr


def variant_cosines(ds: xr.Dataset) -> xr.Dataset:
    """`elicitation_cos` (..., elicitation, versus, layer): cos(v_elicitation, v_versus) for every
    pair of variants; NaN where either vector is missing (nonextractable, or not computed yet)."""
    v = ds.vector.transpose(..., "elicitation", "hidden").values.astype(np.float64)  # [m, c, t, s, l, e, h]
    with np.errstate(invalid="ignore", divide="ignore"):
        unit = v / np.linalg.norm(v, axis=-1, keepdims=True)
        cos = np.einsum("...eh,...fh->...ef", unit, unit)
    dims = [d for d in ds.vector.dims if d not in ("elicitation", "hidden")]
    out = xr.DataArray(cos, dims=dims + ["elicitation", "versus"],
                       coords={**{d: ds[d] for d in dims if d in ds.coords}, "elicitation": ds.elicitation.values,
                               "versus": ds.elicitation.values})
    out = out.transpose(*[d for d in dims if d != "layer"], "elicitation", "versus", "layer")
    out.attrs.update(long_name="cosine between the persona vectors of two elicitation variants")
    return xr.Dataset({"elicitation_cos": out})

