"""The evidence score of a markers result and its calibration: per condition, every answer's
evidence (hollow where the answer is degenerate) with the mean and its bootstrap interval, each
persona's decision threshold; and each condition's ROC curve against the bare answers, with its
AUROC."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError
from .markers import CONDITION_COLORS

NEGATIVE = "bare"


def plot_evidence(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Two panels: evidence by condition (points per cell, mean and 95% bootstrap interval,
    per-persona thresholds as grey ticks) and ROC curves of each condition against bare."""
    from ..analysis.calibration import mean_interval, roc_curve
    from ..core.evidence import COHERENCE_MIN
    from .style import OTHER_COLORS, figure_title, new_figure, one_model

    missing = [v for v in ("evidence", "coherence", "evidence_auroc", "evidence_threshold") if v not in ds]
    if missing:
        raise PersonaError(f"the evidence figure needs variable(s) {missing} (a markers result scored with evidence "
                           f"and a {NEGATIVE!r} condition); the dataset has {sorted(ds.data_vars)}")
    ds = one_model(ds, model)
    if "model" in ds.dims:
        ds = ds.isel(model=0)
    conditions = [str(c) for c in ds["condition"].values]
    colors = {c: CONDITION_COLORS.get(c, OTHER_COLORS[i % len(OTHER_COLORS)]) for i, c in enumerate(conditions)}
    fig = new_figure(2, panel_width=4.8)
    ax_points, ax_roc = fig.subplots(1, 2)
    rng = np.random.default_rng(0)
    for k, cond in enumerate(conditions):
        values = ds.evidence.sel(condition=cond).values.astype(float)
        degenerate = ds.coherence.sel(condition=cond).values < COHERENCE_MIN
        x = k + rng.uniform(-0.18, 0.18, size=len(values))
        ax_points.scatter(x[~degenerate], values[~degenerate], s=14, color=colors[cond], alpha=0.7)
        ax_points.scatter(x[degenerate], values[degenerate], s=14, facecolors="none", edgecolors=colors[cond])
        mean, low, high = mean_interval(values)
        if np.isfinite(mean):
            ax_points.errorbar(k + 0.3, mean, yerr=[[mean - low], [high - mean]], fmt="D", color="black", ms=4,
                               capsize=3)
    for t in ds.evidence_threshold.values:
        if np.isfinite(t):
            ax_points.plot([len(conditions) - 0.45, len(conditions) - 0.25], [t, t], color="0.5", lw=1)
    ax_points.axhline(0, color="0.7", lw=0.8, zorder=0)
    ax_points.set_xticks(range(len(conditions)), conditions)
    ax_points.set_xlim(-0.6, len(conditions) - 0.15)
    ax_points.tick_params(axis="x", labelrotation=20)
    ax_points.set_xlabel("condition (diamond: mean, 95% bootstrap interval; grey ticks: per-persona thresholds)",
                         fontsize="small")
    ax_points.set_ylabel("evidence, nats / answer token")
    ax_points.grid(True, axis="y", alpha=0.3)
    negative = ds.evidence.sel(condition=NEGATIVE).values
    curves = [c for c in conditions if c != NEGATIVE]
    for i, cond in enumerate(curves):
        fpr, tpr = roc_curve(ds.evidence.sel(condition=cond).values, negative)
        auc = float(ds.evidence_auroc.sel(condition=cond))
        # Earlier curves drawn wider, so one that coincides with a later one still shows.
        ax_roc.step(fpr, tpr, where="post", color=colors[cond], lw=1.2 + 1.5 * (len(curves) - 1 - i),
                    label=f"{cond} (AUROC {auc:.2f})")
    ax_roc.plot([0, 1], [0, 1], color="0.7", lw=0.8, ls="--")
    ax_roc.set_xlabel(f"fraction of {NEGATIVE} answers above a cut")
    ax_roc.set_ylabel("fraction of the condition above it")
    ax_roc.set_xlim(-0.02, 1.02)
    ax_roc.set_ylim(-0.02, 1.02)
    ax_roc.legend(fontsize="small", loc="lower right")
    ax_roc.grid(True, alpha=0.3)
    fig.suptitle(figure_title(ds, "evidence: XY prompt against BY prompt, on the unedited model"), fontsize="medium")
    return fig
