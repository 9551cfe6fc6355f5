"""Beyond the papers: a persona vector (Chen et al.'s difference of means over answers or at the
last prompt token) against the additive decomposition's Delta_X = h_XB - h_BB at p_last (the
first paper's persona effect at the prompt-to-answer transition), cosine per layer.

Both are "what the persona adds to the residual": Delta_X from one prompt pair, the persona
vector averaged over instruction pairs and questions. A persona of the capture's grid is matched
to the trait of the same name."""

from __future__ import annotations

import numpy as np
import xarray as xr

from .decompose import delta_vectors


def vector_vs_delta_x(vectors: xr.Dataset, capture: xr.Dataset, position: str = "p_last") -> xr.Dataset:
    dx, _ = delta_vectors(capture)
    dx = dx.isel(model=0).sel(position=position)
    personas = sorted(set(capture.persona.values.tolist()) & set(vectors.trait.values.tolist()))
    layers = sorted(set(vectors.layer.values.tolist()) & set(dx.layer.values.tolist()))
    sets = vectors.token_set.values.tolist()
    cos = np.full((len(personas), len(sets), len(layers)), np.nan)
    ratio = np.full_like(cos, np.nan)
    for i, persona in enumerate(personas):
        cell = [c for c, p in zip(capture.cell.values.tolist(), capture.persona.values.tolist()) if p == persona][0]
        d = dx.sel(cell=cell, layer=layers).values  # XB and BB hold the baseline task: one Delta_X per persona
        for j, s in enumerate(sets):
            v = vectors.vector.sel(trait=persona, token_set=s, layer=layers).isel(model=0, checkpoint=0).values
            with np.errstate(invalid="ignore", divide="ignore"):  # Delta_X is 0 at layer 0 (same token)
                cos[i, j], ratio[i, j] = _cos_and_ratio(v, d)
    ds = xr.Dataset(
        {"cosine": (("trait", "token_set", "layer"), cos), "norm_ratio": (("trait", "token_set", "layer"), ratio)},
        coords={"trait": personas, "token_set": sets, "layer": layers},
        attrs={"experiment": "vectors-vs-delta-x", "position": position, "completed": 1,
               "layer_convention": "L = hidden_states[L]; 0 = embeddings"},
    )
    ds["cosine"].attrs.update(long_name=f"cos(persona vector, Delta_X at {position})")
    ds["norm_ratio"].attrs.update(long_name=f"|persona vector| / |Delta_X at {position}|")
    return ds


def _cos_and_ratio(v, d):
    nv, nd = np.linalg.norm(v, axis=-1), np.linalg.norm(d, axis=-1)
    return (v * d).sum(-1) / (nv * nd), nv / nd


def delta_table(vectors_path: str, capture_path: str, token_sets: str = "prompt_last,response_avg") -> str:
    from ..storage.store import load_dataset
    from .tables import markdown

    ds = vector_vs_delta_x(load_dataset(vectors_path), load_dataset(capture_path))
    rows = []
    for trait in ds.trait.values.tolist():
        for s in token_sets.split(","):
            rows.append([trait, s, *[float(x) for x in ds.cosine.sel(trait=trait, token_set=s).values]])
    return markdown(["persona", "persona vector", *[f"L{L}" for L in ds.layer.values]], rows)
