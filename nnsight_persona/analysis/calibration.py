"""Calibration of the evidence score: how well it tells answers with the persona from answers
without it, and where a per-persona decision threshold sits.

- `auroc(positive, negative)`: the probability that a random answer with the persona scores above
  a random one without it (ties count one half; the Mann-Whitney U over n_pos x n_neg). 0.5: no
  separation; 1: complete.
- `threshold`: per persona, a null: the QUANTILE (95th percentile) of that persona's answers
  WITHOUT the persona (markers: its `bare` answers, one per task), taken as an observed value
  rounded up (numpy's "higher" method), so that at most 5% of those answers lie strictly above it.
  An answer is `in_persona` when its evidence exceeds its persona's threshold and it is coherent
  (coherence >= core.evidence.COHERENCE_MIN). With 20 negatives or fewer the threshold is their maximum
  (the paper's 24 cells give 3 bare answers per persona): a null that small is coarse, which is
  why the AUROC, pooled over personas, is reported beside it.
- `calibrate(ds)`: a markers dataset with `evidence_auroc` (each condition against `bare`),
  `evidence_threshold` (per persona) and `in_persona` (per answer) added.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

QUANTILE = 0.95
NEGATIVE = "bare"


def auroc(positive, negative) -> float:
    """P(score of a positive > score of a negative), ties one half; NaNs dropped; NaN if a side is empty."""
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (len(pos) * len(neg)))


def threshold(negatives, quantile: float = QUANTILE) -> float:
    """The `quantile` of one persona's negative answers' evidence, an observed value rounded up
    (at most 1 - quantile of them lie strictly above it); NaN if none."""
    values = np.asarray(negatives, dtype=float)
    values = values[np.isfinite(values)]
    return float(np.quantile(values, quantile, method="higher")) if len(values) else float("nan")


def calibrate(ds: xr.Dataset, negative: str = NEGATIVE, quantile: float = QUANTILE) -> xr.Dataset:
    """`ds` (dims model, cell, condition; variables evidence and coherence; coord persona on cell)
    with the calibration added. A dataset without the `negative` condition is returned as it is."""
    from ..core.evidence import COHERENCE_MIN

    if "evidence" not in ds or negative not in [str(c) for c in ds.condition.values]:
        return ds
    personas = list(dict.fromkeys(str(p) for p in ds.persona.values))
    conditions = [str(c) for c in ds.condition.values]
    n_models = ds.sizes["model"]
    aurocs = np.full((n_models, len(conditions)), np.nan)
    thresholds = np.full((n_models, len(personas)), np.nan)
    for m in range(n_models):
        one = ds.isel(model=m)
        neg = one.evidence.sel(condition=negative).values
        for k, cond in enumerate(conditions):
            if cond != negative:
                aurocs[m, k] = auroc(one.evidence.sel(condition=cond).values, neg)
        cell_persona = np.array([str(p) for p in one.persona.values])
        for j, persona in enumerate(personas):
            thresholds[m, j] = threshold(neg[cell_persona == persona], quantile)
    out = ds.assign_coords(evidence_persona=personas)
    out["evidence_auroc"] = (("model", "condition"), aurocs)
    out["evidence_threshold"] = (("model", "evidence_persona"), thresholds)
    index = np.array([personas.index(str(p)) for p in ds.persona.values])
    cell_threshold = thresholds[:, index][:, :, None]  # [model, cell, 1]
    above = (ds.evidence.transpose("model", "cell", "condition").values > cell_threshold)
    coherent = ds.coherence.transpose("model", "cell", "condition").values >= COHERENCE_MIN
    out["in_persona"] = (("model", "cell", "condition"), (above & coherent).astype(np.int8))
    out["evidence_auroc"].attrs.update(long_name=f"AUROC of the condition's evidence against {negative}'s", units="1")
    out["evidence_threshold"].attrs.update(
        long_name=f"per-persona decision threshold: the {quantile:g} quantile of its {negative} answers' evidence",
        units="nats/token", quantile=quantile, negative=negative)
    out["in_persona"].attrs.update(
        long_name=f"evidence above its persona's threshold and coherence >= {COHERENCE_MIN}")
    out["evidence_persona"].attrs.update(long_name="persona of evidence_threshold")
    return out


def mean_interval(values, level: float = 0.95, n_boot: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high): the mean of the finite values and its percentile-bootstrap interval
    (resampling the values, e.g. cells, with replacement; a fixed seed, so a table is reproducible)."""
    x = np.asarray(values, dtype=float)
    x = x[np.isfinite(x)]
    if not len(x):
        return float("nan"), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    tail = (1 - level) / 2
    return float(x.mean()), float(np.quantile(means, tail)), float(np.quantile(means, 1 - tail))


def roc_curve(positive, negative) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) over every threshold, from (0, 0) to (1, 1)."""
    pos = np.asarray(positive, dtype=float)
    neg = np.asarray(negative, dtype=float)
    pos, neg = pos[np.isfinite(pos)], neg[np.isfinite(neg)]
    if not len(pos) or not len(neg):
        return np.array([0.0, 1.0]), np.array([0.0, 1.0])
    cuts = np.unique(np.concatenate([pos, neg]))[::-1]
    fpr = [0.0] + [float((neg >= c).mean()) for c in cuts]
    tpr = [0.0] + [float((pos >= c).mean()) for c in cuts]
    return np.array(fpr), np.array(tpr)
