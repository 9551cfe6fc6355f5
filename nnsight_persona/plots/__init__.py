"""Figures from result datasets. Each figure function takes a Dataset and returns a matplotlib
Figure drawn on the Agg canvas (no pyplot state, no display needed); `save_figure` writes it.

FIGURES maps a dataset's attrs["experiment"] to its figures, so a file alone says what to draw.
"""

from __future__ import annotations

import re

import xarray as xr
from matplotlib.figure import Figure

from ..core.errors import PersonaError
from .style import (  # noqa: F401 (the package's figure helpers, importable from here)
    POSITION_COLORS,
    OTHER_COLORS,
    new_figure,
    axis_label,
    figure_title,
    one_model,
    position_color,
    median_band_by_layer,
    save_figure,
)
from .controls import plot_controls
from .decomposition import plot_decomposition
from .evidence import plot_evidence
from .inject import plot_gap_closed
from .heads import plot_head_map
from .kl_by_layer import plot_kl_by_layer
from .knockout import plot_knockout_by_band
from .markers import plot_markers
from .models import VARIABLE as ACROSS_MODELS, plot_across_models
from .subnetworks import plot_alignment_vs_sparsity, plot_persona_by_mask
from .persona_vectors import plot_elicitation_cos, plot_steering
from .steering_evidence import plot_steering_evidence


def _steering(ds: xr.Dataset, model: str | None = None) -> Figure:
    """A steer result's curves: trait evidence with intervals where it was scored by evidence."""
    ds = one_model(ds, model)
    return plot_steering_evidence(ds) if "evidence" in ds else plot_steering(ds)


def _elicitation(ds: xr.Dataset, model: str | None = None) -> Figure:
    return plot_elicitation_cos(one_model(ds, model))


FIGURES = {
    "substitute": {"kl_by_layer": plot_kl_by_layer, "controls": plot_controls},
    "decompose": {"decomposition": plot_decomposition},
    "markers": {"markers": plot_markers, "evidence": plot_evidence},
    "inject": {"gap_closed": plot_gap_closed},
    "knockout": {"knockout_by_band": plot_knockout_by_band},
    "heads": {"head_map": plot_head_map},
    "subnetwork-eval": {"alignment_vs_sparsity": plot_alignment_vs_sparsity, "persona_by_mask": plot_persona_by_mask},
    "vectors-steer": {"steering": _steering},
    "vectors-extract": {"elicitation": _elicitation},
}
# Figures drawn only where the dataset has the variable (results made before it existed lack it;
# an extraction compares elicitation variants only when it ran several).
NEEDS = {"evidence": "evidence_auroc", "elicitation": "elicitation_cos"}


def figure_names(ds: xr.Dataset) -> list[str]:
    """The names of the figures FIGURES has for this dataset's experiment that it can draw."""
    return [name for name in FIGURES.get(ds.attrs.get("experiment"), {}) if name not in NEEDS or NEEDS[name] in ds]


def figures_for(ds: xr.Dataset) -> dict[str, Figure]:
    """Every figure the registry has for this dataset, one per model, keyed by a file-name stem."""
    experiment = ds.attrs.get("experiment")
    if experiment not in FIGURES:
        raise PersonaError(f"no figures for a dataset with attrs experiment={experiment!r}; allowed: {sorted(FIGURES)}")
    models = [str(m) for m in ds["model"].values] if "model" in ds.dims else [None]
    out = {}
    for model in models:
        suffix = "" if len(models) == 1 else "-" + re.sub(r"[^A-Za-z0-9._-]+", "_", model)
        for name in figure_names(ds):
            plot = FIGURES[experiment][name]
            out[name + suffix] = plot(ds, model=model)
    if len(models) > 1 and experiment in ACROSS_MODELS:
        out["across_models"] = plot_across_models(ds)
    return out


__all__ = [
    "FIGURES", "figure_names", "figures_for", "save_figure", "plot_controls", "plot_decomposition", "plot_head_map", "plot_kl_by_layer",
    "plot_markers", "plot_evidence", "plot_across_models",
]
