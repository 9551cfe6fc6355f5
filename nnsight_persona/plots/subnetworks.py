"""Figures of `subnetwork eval`: alignment against sparsity, and persona x mask."""

from __future__ import annotations

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

MEASURES = ("p_matching", "marker_rate")
EVIDENCE = "mean_evidence"  # a third row where the file was scored with evidence


def plot_alignment_vs_sparsity(ds: xr.Dataset, model: str | None = None) -> Figure:
    """One column per persona, one row per measure (p_matching, marker_rate, and mean_evidence where
    the file has it): the persona's own mask and the opposite persona's mask against sparsity, each
    with its 95% bootstrap interval of the mean over its units (evaluation items for p_matching,
    generations for marker_rate and evidence; analysis/subnetworks.unit_values), the random masks'
    mean over seeds with its 95% bootstrap interval over seeds as a band, and the unpruned model
    without and with the persona prompt as horizontal lines."""
    from ..analysis.subnetworks import comparison, persona_markers, random_interval, variant_interval
    from .style import axis_label, figure_title, interval_bars, new_figure

    personas = [str(p) for p in ds.persona.values]
    measures = [*MEASURES, *([EVIDENCE] if EVIDENCE in ds else [])]
    markers = persona_markers(ds)
    labels = set(ds.variant.values.astype(str))
    fig = new_figure(len(personas), panel_width=4.4, height=3.2 * len(measures))
    axes = np.array(fig.subplots(len(measures), len(personas), squeeze=False))
    for row, measure in enumerate(measures):
        table = comparison(ds, measure)
        for col, persona in enumerate(personas):
            ax = axes[row, col]
            rows = [r for r in table if r["persona"] == persona]
            s = [r["sparsity"] for r in rows]
            opposite = _opposite(ds, persona)
            for who, owner, fmt, color in (("own mask", persona, "o-", "#d62728"),
                                           ("opposite mask", opposite, "s--", "#1f77b4")):
                wanted = [f"mask:{owner}@{sp:g}" for sp in s]
                if not all(w in labels for w in wanted):
                    continue
                intervals = [variant_interval(ds, measure, w, persona, markers) for w in wanted]
                interval_bars(ax, s, intervals, who, fmt=fmt, color=color)
            rand = [random_interval(ds, measure, persona, sp) for sp in s]
            ax.plot(s, [r["estimate"] for r in rand], "^:", color="#7f7f7f", label="random masks (mean over seeds)")
            ax.fill_between(s, [r["low"] for r in rand], [r["high"] for r in rand], color="#7f7f7f", alpha=0.2,
                            linewidth=0, label="_band random masks")
            ax.axhline(rows[0]["unpruned"], color="black", linewidth=1, label="unpruned, no prompt")
            if np.isfinite(rows[0]["prompt"]):
                ax.axhline(rows[0]["prompt"], color="#2ca02c", linewidth=1, linestyle="-.", label="unpruned + prompt")
            ax.set_xlabel("sparsity")
            ax.set_ylabel(axis_label(ds[measure]), fontsize="small")
            ax.set_title(f"{persona}", fontsize="medium")
            if measure != EVIDENCE:
                ax.set_ylim(-0.05, 1.05)
            else:
                ax.axhline(0, color="0.7", linewidth=0.8, zorder=0)
            ax.grid(True, alpha=0.3)
    axes[0, 0].legend(fontsize="x-small")
    fig.suptitle(figure_title(ds, f"persona alignment against sparsity, no persona prompt ({ds.attrs.get('mask_variant', '')})\n"
                                  "bars: 95% CI over evaluation items or generations; band: over random seeds"),
                 fontsize="medium")
    return fig


def _opposite(ds: xr.Dataset, persona: str) -> str:
    from ..studies.subnetworks.data import load_persona_set

    personas = [str(p) for p in ds.persona.values]
    try:
        return load_persona_set(ds.attrs.get("persona_set", "")).persona(persona).opposite
    except Exception:  # noqa: BLE001 - a set that moved: pair the two personas
        return dict(zip(personas, personas[::-1]))[persona]


def persona_by_mask_cells(ds: xr.Dataset, measure: str = "p_matching") -> tuple[list[str], list[str], list[list[dict]]]:
    """(row labels, personas, intervals[row][persona]): every variant but the random masks, which are
    one row per sparsity (their mean over seeds, interval over seeds); a variant's interval is over
    its units (analysis/subnetworks.unit_values), none where the file does not hold them."""
    from ..analysis.subnetworks import persona_markers, random_interval, variant_interval

    personas = [str(p) for p in ds.persona.values]
    markers = persona_markers(ds)
    labels, cells, seen = [], [], set()
    for label, kind, s in zip(ds.variant.values.astype(str), ds.kind.values.astype(str), ds.sparsity.values):
        if kind == "random":
            if float(s) in seen:
                continue
            seen.add(float(s))
            labels.append(f"random@{float(s):g} (mean)")
            cells.append([random_interval(ds, measure, p, float(s)) for p in personas])
        else:
            labels.append(label)
            cells.append([variant_interval(ds, measure, label, p, markers) for p in personas])
    return labels, personas, cells


def plot_persona_by_mask(ds: xr.Dataset, model: str | None = None) -> Figure:
    """Heatmap of p_matching: variants (random masks averaged per sparsity) x evaluated persona, each
    cell with its 95% bootstrap interval (over evaluation items; random masks: over seeds) where the
    file holds the units."""
    from .style import figure_title, new_figure

    labels, personas, cells = persona_by_mask_cells(ds, "p_matching")
    grid = np.array([[c["estimate"] for c in row] for row in cells])
    fig = new_figure(1, panel_width=2.2 + 1.6 * len(personas), height=1.2 + 0.42 * len(labels))
    ax = fig.subplots()
    image = ax.imshow(grid, cmap="RdBu_r", vmin=0, vmax=1, aspect="auto")
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            text = f"{c['estimate']:.2f}"
            if np.isfinite(c["low"]) and np.isfinite(c["high"]):
                text += f" [{c['low']:.2f}, {c['high']:.2f}]"
            ax.text(j, i, text, ha="center", va="center", fontsize="x-small")
    ax.set_xticks(range(len(personas)), personas)
    ax.set_yticks(range(len(labels)), labels, fontsize="x-small")
    ax.set_xlabel("persona evaluated (A/B items, no prompt unless prompt:P)")
    fig.colorbar(image, ax=ax, label="p(matching answer)")
    fig.suptitle(figure_title(ds, "persona x mask; [95% CI over items; random: over seeds]"), fontsize="small")
    return fig
