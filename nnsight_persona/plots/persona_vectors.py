"""Figures of the persona-vector commands: steering score against coefficient (one panel per
trait, a line per layer and vector kind), across checkpoints the cosine-to-final trajectory
and the checkpoint x checkpoint cosine matrix, and the cosine between elicitation variants per layer."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure


def plot_steering(ds: xr.Dataset) -> Figure:
    """Mean trait score over questions (solid; controls dashed) with its 95% bootstrap interval over
    questions as a band, and the vector's mean coherence (dotted) against coef, per trait; the vector
    and its first controls; the prompted baseline's trait score as a horizontal line."""
    from .style import mean_band, new_figure

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
                mean_band(ax, ds.coef.values, sel.trait_score.transpose("coef", "question").values, f"C{j}",
                          f"L{layer} {kind}", style, alpha=0.12, marker="o", ms=3)
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
                 f"{ds.attrs.get('positions')}, scale {ds.attrs.get('scale')}; bands: 95% bootstrap interval over "
                 f"{ds.sizes['question']} questions", fontsize="medium")
    return fig


def plot_cos_to_final(geometry: xr.Dataset, token_set: str = "response_avg") -> Figure:
    from .style import new_figure

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
    from .style import new_figure

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
    """Top row: the cosine between the vectors of two elicitation variants against layer, one panel
    per trait, a line per pair of variants (an extraction with an `elicitation` dim). Bottom row: how
    strongly each variant elicits the trait, the mean over its generated (pair, question) units of
    the positive answer's trait score minus the negative one's, with the 95% bootstrap interval over
    those units. The cosines have no interval: the file keeps each variant's mean vectors only, not
    the per-pair activations a resample would need."""
    from ..studies.vectors.elicitation import pair_differences
    from ..analysis.statistics import bootstrap_interval
    from .style import interval_bars, new_figure

    c = ds.elicitation_cos.isel(model=0, checkpoint=0).sel(token_set=token_set)
    variants = ds.elicitation.values.tolist()
    pairs = [(a, b) for i, a in enumerate(variants) for b in variants[i + 1:]]
    traits = c.trait.values.tolist()
    separation = pair_differences(ds)
    units = ds["trait_score"].attrs.get("units", "")
    fig = new_figure(len(traits), height=6.6)
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(2, len(traits), i + 1)
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
        low_ax = fig.add_subplot(2, len(traits), len(traits) + i + 1)
        for k, variant in enumerate(variants):
            diffs = separation.get((variant, trait), np.array([]))
            iv = bootstrap_interval(diffs, "mean") if diffs.size else None
            record = {"estimate": iv.estimate, "low": iv.low, "high": iv.high} if iv else \
                {"estimate": np.nan, "low": np.nan, "high": np.nan}
            interval_bars(low_ax, [k], [record], f"{variant} (n={diffs.size})", fmt="o", color=f"C{k % 10}")
        low_ax.axhline(0, color="grey", lw=0.6)
        low_ax.set_xticks(range(len(variants)), variants, rotation=20, fontsize="x-small")
        low_ax.set_ylabel(f"trait score pos - neg{f' [{units}]' if units else ''}", fontsize="small")
        low_ax.set_title("elicitation strength (mean, 95% CI over pairs)", fontsize="small")
    return fig


def plot_trace_steering(trace: xr.Dataset) -> Figure:
    """The steering effect (mean trait change against the unsteered answers) per checkpoint, one
    panel per trait: the vector on its own checkpoint (solid) and transferred to the final one
    (dashed, when the trace has a `target` dim), each control seed as a thin grey line; filled
    markers where the Bonferroni-corrected sign-flip p is below 0.05."""
    from .style import new_figure

    traits = trace.trait.values.tolist()
    targets = trace.target.values.tolist() if "target" in trace.dims else [None]
    fig = new_figure(len(traits))
    steps = trace.step.values
    for i, trait in enumerate(traits):
        ax = fig.add_subplot(1, len(traits), i + 1)
        for j, target in enumerate(targets):
            d = trace.sel(trait=trait, **({"target": target} if target else {}))
            style = "-" if target in (None, "own") else "--"
            for kind in d.kind.values.tolist():
                if kind != "vector":
                    ax.plot(steps, d.delta_trait.sel(kind=kind), style, color="grey", lw=0.6, alpha=0.6)
            v = d.sel(kind="vector")
            ax.plot(steps, v.delta_trait, style, color=f"C{j}", label=f"vector, {target or 'own'} checkpoint")
            sig = np.asarray(v.p_bonferroni.values) < 0.05
            ax.scatter(steps, v.delta_trait, s=18, edgecolors=f"C{j}", facecolors=[f"C{j}" if s else "none" for s in sig],
                       zorder=3)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("training step of the vector")
        ax.set_ylabel("trait score change")
        ax.set_title(trait, fontsize="medium")
        if i == 0:
            ax.legend(fontsize="x-small")
    fig.suptitle(f"steering at L{trace.attrs.get('steer_layer')}, coef {trace.attrs.get('coef')} "
                 f"({trace.attrs.get('scale')}); grey: controls; filled: p (Bonferroni) < 0.05", fontsize="medium")
    return fig


def plot_vs_edit(ds: xr.Dataset) -> Figure:
    """vs-edit, one column per persona: the persona-marker rate (top; fraction of the persona's
    cells whose answer has a marker) and the mean coherence (bottom) against the coefficient
    (units of |Delta_X|, symlog axis): steering at every response step along the persona vector
    (solid) and along Delta_X (dashed), a colour per layer; the one-site Delta_X edit (dash-dotted,
    the layer's colour), the persona prompt (grey, the ceiling) and the bare prompt (grey dotted)
    as horizontal lines."""
    from .style import new_figure

    ds = ds.isel(model=0)
    personas = list(dict.fromkeys(ds.persona.values.tolist()))
    fig = new_figure(len(personas), height=6.4)
    styles = {"vector": "-", "delta_x": "--"}
    coefs = np.asarray(ds.coef.values, dtype=float)
    positive = coefs[coefs > 0]
    for i, persona in enumerate(personas):
        d = ds.sel(cell=ds.persona == persona)
        for row, (var, label, top) in enumerate((("any_marker", "cells with a persona marker", 1.05),
                                                 ("coherence", "coherence (0-100)", 103))):
            ax = fig.add_subplot(2, len(personas), row * len(personas) + i + 1)
            for j, layer in enumerate(d.layer.values.tolist()):
                for cond in d.condition.values.tolist():
                    ax.plot(coefs, d[var].sel(condition=cond, layer=layer).mean("cell"), styles.get(cond, ":"),
                            marker="o", ms=3, color=f"C{j}", label=f"L{layer} steer {cond}")
                ax.axhline(float(d["ref_" + var].sel(reference="one_site", layer=layer).mean()), color=f"C{j}",
                           ls="-.", lw=1, label=f"L{layer} one-site Delta_X")
            ref = d["ref_" + var].isel(layer=0)
            ax.axhline(float(ref.sel(reference="prompted").mean()), color="grey", lw=1, label="persona prompt")
            ax.axhline(float(ref.sel(reference="bare").mean()), color="grey", ls=":", lw=1, label="bare prompt")
            if len(positive):
                ax.set_xscale("symlog", linthresh=float(positive.min()))
            ax.set_xticks(coefs, [f"{c:g}" for c in coefs], fontsize="x-small")
            ax.set_xlim(coefs.min(), coefs.max())
            ax.set_ylim(-0.05 * top, top)
            ax.set_ylabel(label)
            if row == 0:
                ax.set_title(persona, fontsize="medium")
            else:
                ax.set_xlabel("coef (units of |Delta_X|)")
            if i == 0 and row == 0:
                ax.legend(fontsize="x-small")
    fig.suptitle(f"{ds.model.values.item()}: steering at every response step vs the one-site Delta_X edit "
                 "(bare task prompts)", fontsize="medium")
    return fig
