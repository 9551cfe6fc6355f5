"""Comparing elicitation variants: the cosine between the persona vectors that different ways of
eliciting a trait give (instruction pairs, a third-person character description, 2-shot
dialogue, combined; traits.VARIANTS), per trait, token set and layer. A pure function of an
extraction dataset with an `elicitation` dim; the pass rates per variant are already there
(`pass_rate`, `n_kept`). `pair_differences`: how strongly each variant elicits the trait, the
positive answer's score minus the negative answer's in every generated (pair, question) of the
variant, the unit the figure's intervals resample."""

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



def pair_differences(ds: xr.Dataset, variable: str = "trait_score") -> dict[tuple[str, str], np.ndarray]:
    """{(elicitation variant, trait): pos - neg `variable` per generated (pair, question) of that
    variant and trait} (NaN dropped). A sample is one answer; its pair is (pair, question_index)."""
    model = {d: 0 for d in ("model", "checkpoint") if d in ds[variable].dims}
    values = ds[variable].isel(model).values.astype(float)
    generated = ds["generated"].isel(model).values.astype(bool) if "generated" in ds else np.ones(values.shape, bool)
    sides: dict[tuple, dict[str, float]] = {}
    keys = zip(ds.sample_elicitation.values.astype(str), ds.sample_trait.values.astype(str), ds.pair.values,
               ds.question_index.values, ds.side.values.astype(str))
    for i, (variant, trait, pair, question, side) in enumerate(keys):
        if generated[i]:
            sides.setdefault((variant, trait, int(pair), int(question)), {})[side] = values[i]
    out: dict[tuple[str, str], list[float]] = {}
    for (variant, trait, _, _), both in sides.items():
        if "pos" in both and "neg" in both and np.isfinite(both["pos"] - both["neg"]):
            out.setdefault((variant, trait), []).append(both["pos"] - both["neg"])
    return {key: np.array(diffs) for key, diffs in out.items()}
