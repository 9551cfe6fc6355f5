"""Steering curves of a `vectors steer --scorer evidence` result: per trait, the mean trait
evidence (against the negative side) with its bootstrap interval over questions against coef, for
the vector and each control (first layer of the run, or `layer`), the mean coherence with its
95% interval over questions (error bars) on a second axis, and the unsteered clean and prompted answers' evidence as horizontal lines."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure


def plot_steering_evidence(ds: xr.Dataset, layer: int | None = None, reference: str = "neg") -> Figure:
    from ..analysis.calibration import mean_interval
    from .style import new_figure

    ds = ds.isel(model=0)
    layer = int(ds.layer.values[0]) if layer is None else layer
    traits = ds.trait.values.tolist()
    fig = new_figure(len(traits))
    styles = {"vector": "-", "random": "--", "shuffled": "-."}
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        coh_ax = ax.twinx()
        coefs = ds.coef.values.astype(float)
        for j, kind in enumerate(ds.kind.values.tolist()):
            sel = ds.sel(trait=trait, layer=layer, kind=kind)
            stats = np.array([mean_interval(sel.evidence.sel(coef=c, reference=reference).values, n_boot=1000)
                              for c in coefs])
            style = styles.get(kind.split("_s")[0], ":")
            ax.plot(coefs, stats[:, 0], style, color=f"C{j}", marker="o", ms=3, label=kind)
            ax.fill_between(coefs, stats[:, 1], stats[:, 2], color=f"C{j}", alpha=0.15, lw=0)
            coh = np.array([mean_interval(sel.coherence.sel(coef=c).values, n_boot=1000) for c in coefs])
            coh_ax.errorbar(coefs, coh[:, 0], yerr=[coh[:, 0] - coh[:, 1], coh[:, 2] - coh[:, 0]], fmt=":",
                            color=f"C{j}", alpha=0.6, lw=1, capsize=2, label=f"{kind} coherence")
        base = ds.baseline_evidence.sel(trait=trait, reference=reference)
        ax.axhline(float(base.sel(baseline="prompted").mean()), color="black", lw=0.8, label="prompted")
        ax.axhline(float(base.sel(baseline="clean").mean()), color="grey", lw=0.8, ls="--", label="clean")
        ax.set_title(f"{trait} (L{layer})", fontsize="medium")
        ax.set_xlabel("coef")
        ax.set_ylabel(f"trait evidence vs {reference} (nats/token)")
        coh_ax.set_ylabel("coherence (dotted, 95% CI bars, 0-100)")
        coh_ax.set_ylim(-3, 103)
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle(f"steering, evidence (95% bootstrap interval over questions); positions "
                 f"{ds.attrs.get('positions')}, scale {ds.attrs.get('scale')}", fontsize="medium")
    return fig
