"""Figures of the persona-vector commands: steering score against coefficient (one panel per
trait, a line per layer and vector kind), across checkpoints the cosine-to-final trajectory
and the checkpoint x checkpoint cosine matrix, and the cosine between elicitation variants per layer."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure


def plot_steering(ds: xr.Dataset) -> Figure:
    """Mean trait score (solid) and coherence (dotted) against coef, per trait; the vector and
    its first controls; the prompted baseline's trait score as a horizontal line."""
    from . import new_figure

    ds = ds.isel(model=0)
    traits = ds.trait.values.tolist()
    fig = new_figure(len(traits))
    kinds = [k for k in ds.kind.values.tolist() if k == "vector" or k.endswith("_s0")]
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        for j, layer in enumerate(ds.layer.values.tolist()):
            for kind in kinds:
                sel = ds.sel(trait=trait, layer=layer, kind=kind)
                style = {"vector": "-", "random_s0": "--", "shuffled_s0": "-."}.get(kind, ":")
                ax.plot(ds.coef.values, sel.trait_score.mean("question"), style, color=f"C{j}", marker="o", ms=3,
                        label=f"L{layer} {kind}")
            ax.plot(ds.coef.values, ds.sel(trait=trait, layer=layer, kind="vector").coherence.mean("question"),
                    ":", color=f"C{j}", alpha=0.6, label=f"L{layer} coherence")
        prompted = float(ds.baseline_trait.sel(trait=trait, baseline="prompted").mean())
        ax.axhline(prompted, color="grey", lw=0.8, label="prompted")
        ax.set_title(trait, fontsize="medium")
        ax.set_xlabel("coef")
        ax.set_ylabel("trait score (0-100)")
        ax.set_ylim(-3, 103)
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle(f"{ds.model.values.item() if ds.model.ndim == 0 else ''} steering, positions "
                 f"{ds.attrs.get('positions')}, scale {ds.attrs.get('scale')}", fontsize="medium")
    return fig


def plot_cos_to_final(geometry: xr.Dataset, token_set: str = "response_avg") -> Figure:
    from . import new_figure

    g = geometry.sel(token_set=token_set)
    traits = g.trait.values.tolist()
    fig = new_figure(len(traits))
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        for j, layer in enumerate(g.layer.values.tolist()):
            ax.plot(g.step.values, g.cos_to_final.sel(trait=trait, layer=layer), marker="o", ms=3, color=f"C{j % 10}",
                    label=f"L{layer}")
        ax.set_xscale("log")
        ax.set_xlabel("training step")
        ax.set_ylabel("cosine to the final vector")
        ax.set_title(trait, fontsize="medium")
        if i == 0:
            ax.legend(fontsize="x-small", ncol=2)
    return fig


def plot_cos_matrix(geometry: xr.Dataset, layer: int, token_set: str = "response_avg") -> Figure:
    from . import new_figure

    g = geometry.sel(token_set=token_set, layer=layer)
    traits = g.trait.values.tolist()
    fig = new_figure(len(traits), panel_width=4.2)
    steps = [str(s) for s in g.step.values]
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        m = np.asarray(g.cos_matrix.sel(trait=trait).values)
        im = ax.imshow(m, vmin=-1, vmax=1, cmap="RdBu_r")
        ax.set_xticks(range(len(steps)), steps, rotation=90, fontsize="x-small")
        ax.set_yticks(range(len(steps)), steps, fontsize="x-small")
        ax.set_title(f"{trait}, layer {layer}", fontsize="medium")
        fig.colorbar(im, ax=ax, shrink=0.8)
    return fig


def plot_elicitation_cos(ds: xr.Dataset, token_set: str = "response_avg") -> Figure:
    """Cosine between the vectors of two elicitation variants against layer, one panel per
    trait, a line per pair of variants (an extraction with an `elicitation` dim)."""
    from . import new_figure

    c = ds.elicitation_cos.isel(model=0, checkpoint=0).sel(token_set=token_set)
    variants = ds.elicitation.values.tolist()
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1:]]
    traits = c.trait.values.tolist()
    fig = new_figure(len(traits))
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        for j, (a, b) in enumerate(pairs):
            ax.plot(c.layer.values, c.sel(trait=trait, elicitation=a, versus=b), marker="o", ms=3,
                    color=f"C{j % 10}", label=f"{a} vs {b}")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_ylim(-1.05, 1.05)
        ax.set_xlabel("layer L (hidden_states[L])")
        ax.set_ylabel(f"cosine ({token_set})")
        ax.set_title(trait, fontsize="medium")
        if i == 0:
            ax.legend(fontsize="x-small")
    return fig
