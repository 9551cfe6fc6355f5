"""trace: persona vectors across training checkpoints (Moskvoretskii et al. 2026).

Given the extraction of each checkpoint (one vectors dataset per checkpoint, concatenated along
`checkpoint` ordered by training step) and the steering of each checkpoint's vector on its own
checkpoint, this module computes what the pretraining paper reports:
- cosine of each checkpoint's vector to the final checkpoint's, between consecutive checkpoints,
  and the full checkpoint x checkpoint matrix, per trait, token set and layer;
- the vector's norm relative to the mean residual norm at its layer;
- per checkpoint: the steering effect (mean trait-score change against the unsteered answer, per
  question), the coherence change beside it, and its statistics against zero: the paired exact
  sign-flip test (two-sided and one-sided, trait up), the sign test, and Bonferroni over the
  checkpoints of a trait; the same for each control (Gaussian and label-shuffled, seeds 0-2);
- the same statistics for each checkpoint's vector transferred to the final checkpoint
  (``target`` = ``final``, beside ``own``): what the vector (and each control) added at its own
  checkpoint, times R_final / R_source, R the mean residual norm of the trait's extraction answers
  at the steer layer in each checkpoint (the pretraining paper's rescaling by the ratio of
  activation norms: residual norms change about 20x across training). At the final checkpoint
  the ratio is 1, so its transferred steering is its own.
All pure functions of datasets.
"""

from __future__ import annotations

import dataclasses
import itertools
import math

import numpy as np
import xarray as xr

MAX_EXACT = 20  # questions; beyond, the sign-flip test samples 2**16 sign patterns (seeded)


def concat_checkpoints(datasets: list[xr.Dataset]) -> xr.Dataset:
    """Vectors datasets of one model's checkpoints, along `checkpoint`, by training step."""
    keep = ["vector", "norm", "resid_norm", "n_kept", "outcome", "shuffled"]
    # Each checkpoint is its own model folder: the model dim is dropped, the checkpoint labels it.
    parts = [ds[[v for v in keep if v in ds]].isel(model=0, drop=True) for ds in datasets]
    ds = xr.concat(parts, dim="checkpoint", coords="minimal", compat="override", join="outer")
    return ds.sortby("step").expand_dims(model=["checkpoints"])


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def geometry(vectors: xr.Dataset) -> xr.Dataset:
    """cos_to_final, cos_consecutive, cos_matrix, rel_norm of checkpoint-ordered vectors."""
    v = vectors.vector.isel(model=0).transpose("checkpoint", "trait", "token_set", "layer", "hidden").values
    final = v[-1]
    to_final = cosine(v, final[None])
    consecutive = np.full(to_final.shape, np.nan)
    consecutive[1:] = cosine(v[1:], v[:-1])
    matrix = cosine(v[:, None], v[None, :])  # [ckpt, ckpt, trait, set, layer]
    rn = vectors.resid_norm.isel(model=0).transpose("checkpoint", "trait", "layer").values
    rel = np.linalg.norm(v, axis=-1) / rn[:, :, None, :]
    coords = {k: vectors[k].values for k in ("checkpoint", "trait", "token_set", "layer")}
    dims = ("checkpoint", "trait", "token_set", "layer")
    ds = xr.Dataset(
        {
            "cos_to_final": (dims, to_final),
            "cos_consecutive": (dims, consecutive),
            "cos_matrix": (("checkpoint", "checkpoint_b") + dims[1:], matrix),
            "rel_norm": (dims, rel),
        },
        coords={**coords, "checkpoint_b": coords["checkpoint"], "step": ("checkpoint", vectors.step.values)},
    )
    ds["cos_to_final"].attrs.update(long_name="cosine to the final checkpoint's vector")
    ds["cos_consecutive"].attrs.update(long_name="cosine to the previous checkpoint's vector")
    ds["rel_norm"].attrs.update(long_name="|v| / mean residual norm at the layer")
    return ds


def sign_flip_test(diffs) -> tuple[float, float]:
    """Paired sign-flip (permutation) test of mean(diffs) against 0: (two-sided p, one-sided p
    for a mean > 0). Exact over all 2**n sign patterns up to MAX_EXACT values (NaNs dropped)."""
    d = np.asarray([x for x in diffs if np.isfinite(x)], dtype=float)
    n = len(d)
    if n == 0:
        return float("nan"), float("nan")
    if n <= MAX_EXACT:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = np.random.default_rng(0).choice((1.0, -1.0), size=(2 ** 16, n))
    means = signs @ d / n
    observed = d.mean()
    tol = 1e-12 * max(1.0, abs(observed))
    two = float(np.mean(np.abs(means) >= abs(observed) - tol))
    one = float(np.mean(means >= observed - tol))
    return two, one


def sign_test(diffs) -> float:
    """Two-sided exact sign test of the median difference against 0 (zeros dropped)."""
    d = [x for x in diffs if np.isfinite(x) and x != 0]
    n, k = len(d), sum(1 for x in d if x > 0)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(0, min(k, n - k) + 1)) / 2 ** n
    return float(min(1.0, 2 * tail))


def steering_stats(steers: list[xr.Dataset], coef: float, layer: int) -> xr.Dataset:
    """Per checkpoint (the steer datasets, in checkpoint order), trait and kind: the mean trait
    change and coherence change against the clean answers, the sign-flip and sign tests, and the
    Bonferroni-corrected p within each trait (times the number of checkpoints)."""
    traits = steers[0].trait.values.tolist()
    kinds = steers[0].kind.values.tolist()
    shape = (len(steers), len(traits), len(kinds))
    out = {name: np.full(shape, np.nan) for name in
           ("delta_trait", "delta_coherence", "p_signflip", "p_signflip_greater", "p_sign", "p_bonferroni")}
    for c, ds in enumerate(steers):
        s = ds.isel(model=0).sel(layer=layer, coef=coef)
        for t, trait in enumerate(traits):
            clean_c = s.baseline_coherence.sel(trait=trait, baseline="clean").values
            for k, kind in enumerate(kinds):
                d = s.delta_trait.sel(trait=trait, kind=kind).values
                out["delta_trait"][c, t, k] = np.nanmean(d)
                out["delta_coherence"][c, t, k] = np.nanmean(s.coherence.sel(trait=trait, kind=kind).values - clean_c)
                out["p_signflip"][c, t, k], out["p_signflip_greater"][c, t, k] = sign_flip_test(d)
                out["p_sign"][c, t, k] = sign_test(d)
    out["p_bonferroni"] = np.minimum(1.0, out["p_signflip"] * len(steers))
    dims = ("checkpoint", "trait", "kind")
    ds = xr.Dataset({k: (dims, v) for k, v in out.items()}, coords={"trait": traits, "kind": kinds})
    ds["p_bonferroni"].attrs.update(long_name="two-sided sign-flip p x number of checkpoints (within a trait)")
    return ds


TARGETS = ("own", "final")


def transfer_ratio(vectors_source: xr.Dataset, vectors_final: xr.Dataset, trait: str, layer: int) -> float:
    """R_final / R_source: the mean residual norms at `layer` over the trait's extraction answers."""
    norm = lambda v: float(v.resid_norm.sel(trait=trait, layer=layer).isel(model=0, checkpoint=0))
    return norm(vectors_final) / norm(vectors_source)


def transfer_spec(own_spec, vectors_source: xr.Dataset, steer_source: xr.Dataset, vectors_final: xr.Dataset,
                  final_label: str):
    """The SteerSpec steering the final checkpoint with a source checkpoint's vector: per trait and
    layer, the factor the source steered itself with (its --scale) times transfer_ratio."""
    from .steer import control_vectors, scale_factor

    factors = []
    for trait in own_spec.traits:
        for layer in own_spec.layers:
            v = control_vectors(vectors_source, trait, layer, own_spec.token_set, ())["vector"]
            source = float(vectors_source.resid_norm.sel(trait=trait, layer=layer).isel(model=0, checkpoint=0))
            target = float(steer_source.target_resid_norm.isel(model=0).sel(layer=layer))
            own = scale_factor(own_spec.scale, v, target, source)
            factors.append((trait, int(layer), own * transfer_ratio(vectors_source, vectors_final, trait, layer)))
    return dataclasses.replace(own_spec, transfer=tuple(factors),
                               vectors_source=tuple(own_spec.vectors_source) + (f"steering {final_label}",))


def with_transfer(own: xr.Dataset, transferred: xr.Dataset, ratios: np.ndarray) -> xr.Dataset:
    """The own and transferred steering statistics along a `target` dim (own, final), and the
    norm ratio [checkpoint, trait] the transfer scaled by."""
    ds = xr.concat([own, transferred], dim=xr.DataArray(list(TARGETS), dims="target", name="target"))
    ds["transfer_ratio"] = (("checkpoint", "trait"), ratios)
    ds["transfer_ratio"].attrs.update(long_name="R_final / R_checkpoint: mean residual norm of the extraction "
                                                "answers at the steer layer")
    ds["target"].attrs.update(long_name="own: the vector steers its own checkpoint; final: it steers the final "
                                        "checkpoint, scaled by transfer_ratio")
    return ds
