"""Markdown tables of the persona-vector results, for the docs' generated blocks (docblocks.py)."""

from __future__ import annotations

import numpy as np

from ..storage.store import load_dataset
from .tables import markdown


def extract_table(path: str, layer: str = "") -> str:
    ds = load_dataset(path).isel(model=0, checkpoint=0)
    at = int(layer) if layer else int(ds.layer.values[len(ds.layer) // 2])
    rows = []
    for trait in ds.trait.values.tolist():
        s = ds.sel(trait=trait)
        rates = s.pass_rate.values
        rel = float(s.norm.sel(token_set="response_avg", layer=at) / s.resid_norm.sel(layer=at)) \
            if "response_avg" in ds.token_set.values else float("nan")
        rows.append([trait, str(s.outcome.values), f"{int(s.n_kept)}/{int(s.n_pairs)}", float(rates[0]), float(rates[1]),
                     float(rates[2]), float(s.norm.sel(token_set="response_avg", layer=at)), rel])
    return markdown(["trait", "outcome", "pairs kept", "pos trait pass", "neg trait pass", "coherence pass",
                     f"\\|v\\| at L{at}", f"\\|v\\| / residual norm at L{at}"], rows)


def steer_table(path: str, kinds: str = "vector,random_s0,shuffled_s0") -> str:
    """Per trait, layer and vector kind: mean trait score / coherence at each coefficient, and
    the best AxBench steering score beside the prompted and clean baselines'."""
    ds = load_dataset(path).isel(model=0)
    coefs = ds.coef.values.tolist()
    rows = []
    for trait in ds.trait.values.tolist():
        base = ds.baseline_score.sel(trait=trait)
        for layer in ds.layer.values.tolist():
            for kind in [k for k in kinds.split(",") if k in ds.kind.values.tolist()]:
                s = ds.sel(trait=trait, layer=layer, kind=kind)
                trait_format = "+.3f" if "evidence" in ds else ".0f"  # evidence: nats/token, else 0-100
                cells = [f"{float(s.trait_score.sel(coef=c).mean()):{trait_format}} / "
                         f"{float(s.coherence.sel(coef=c).mean()):.0f}" for c in coefs]
                rows.append([trait, str(layer), kind, *cells, float(s.steering_score.max()),
                             float(base.sel(baseline="prompted")), float(base.sel(baseline="clean"))])
    return markdown(["trait", "layer", "kind", *[f"coef {c:g}: trait / coh." for c in coefs], "best score",
                     "prompted score", "clean score"], rows)


def monitor_table(path: str, layers: str = "") -> str:
    ds = load_dataset(path).isel(model=0)
    chosen = [int(x) for x in layers.split(",")] if layers else ds.layer.values.tolist()
    rows = []
    for trait in ds.trait.values.tolist():
        for layer in chosen:
            p = ds.projection.sel(trait=trait, layer=layer).mean("question")
            rows.append([trait, str(layer), *[float(p.sel(read="prompt_last", condition=c)) for c in ds.condition.values],
                         *[float(p.sel(read="response_avg", condition=c)) for c in ds.condition.values]])
    cond = ds.condition.values.tolist()
    return markdown(["trait", "layer", *[f"last prompt token: {c}" for c in cond], *[f"answer mean: {c}" for c in cond]],
                    rows)


def trace_table(path: str, token_set: str = "") -> str:
    ds = load_dataset(path)
    token_set = token_set or ds.attrs.get("token_set", "response_avg")
    at = int(ds.attrs["steer_layer"])
    rows = []
    transfer = "target" in ds.dims  # a trace with transfer: own steering here, the transfer as extra columns
    for trait in ds.trait.values.tolist():
        for i, step in enumerate(ds.step.values.tolist()):
            g = ds.isel(checkpoint=i).sel(trait=trait)
            t = g.sel(target="final") if transfer else None
            g = g.sel(target="own") if transfer else g
            ctrl = [k for k in g.kind.values.tolist() if k != "vector"]
            rows.append([trait, str(int(step)), float(g.cos_to_final.sel(token_set=token_set, layer=at)),
                         float(g.cos_consecutive.sel(token_set=token_set, layer=at)),
                         float(g.rel_norm.sel(token_set=token_set, layer=at)),
                         float(g.delta_trait.sel(kind="vector")), float(g.delta_coherence.sel(kind="vector")),
                         float(g.p_bonferroni.sel(kind="vector")),
                         float(np.nanmean(g.delta_trait.sel(kind=ctrl).values)) if ctrl else float("nan")])
            if transfer:
                rows[-1] += [float(t.transfer_ratio), float(t.delta_trait.sel(kind="vector")),
                             float(t.delta_coherence.sel(kind="vector")), float(t.p_bonferroni.sel(kind="vector")),
                             float(np.nanmean(t.delta_trait.sel(kind=ctrl).values)) if ctrl else float("nan")]
    extra = ["norm ratio final / here", "on final: trait change", "on final: coherence change",
             "on final: p (Bonferroni)", "on final: controls"] if transfer else []
    return markdown(["trait", "step", f"cos to final (L{at})", "cos to previous", "\\|v\\| / residual",
                     "trait change", "coherence change", "p (sign-flip, Bonferroni)", "mean change, controls", *extra],
                    rows)


def _delta(*args):
    from .vector_delta import delta_table

    return delta_table(*args)


def elicitation_table(path: str, layers: str = "") -> str:
    """Per trait and elicitation variant: the extraction outcome, pairs kept, pass rates, |v| and
    the cosine of its response_avg vector with the instruction variant's at the given layers."""
    ds = load_dataset(path).isel(model=0, checkpoint=0)
    chosen = [int(x) for x in layers.split(",")] if layers else ds.layer.values.tolist()[1::max(1, len(ds.layer) // 4)]
    rows = []
    for trait in ds.trait.values.tolist():
        for variant in ds.elicitation.values.tolist():
            s = ds.sel(trait=trait, elicitation=variant)
            rates = s.pass_rate.values
            cos = ds.elicitation_cos.sel(trait=trait, token_set="response_avg", elicitation=variant, versus="instruction")
            rows.append([trait, variant, str(s.outcome.values), f"{int(s.n_kept)}/{int(s.n_pairs)}", float(rates[0]),
                         float(rates[1]), float(rates[2]),
                         *[float(cos.sel(layer=L)) for L in chosen]])
    return markdown(["trait", "variant", "outcome", "pairs kept", "pos trait pass", "neg trait pass", "coherence pass",
                     *[f"cos to instruction, L{L}" for L in chosen]], rows)


def vs_edit_table(path: str, layer: str = "") -> str:
    """Persona-marker rate (and mean coherence) of greedy answers to the bare task prompts at one
    layer: the references (bare, persona prompt, one-site Delta_X edit), then steering at every
    response step per condition and coefficient (in units of |Delta_X|)."""
    ds = load_dataset(path).isel(model=0)
    at = int(layer) if layer else int(ds.layer.values[len(ds.layer) // 2])
    d = ds.sel(layer=at)
    cell = lambda rate, coh: f"{float(rate):.2f} ({float(coh):.0f})"  # noqa: E731
    rows = [[ref, cell(d.ref_marker_rate.sel(reference=ref), d.ref_coherence.sel(reference=ref).mean()),
             *[""] * len(d.coef)] for ref in d.reference.values.tolist()]
    for cond in d.condition.values.tolist():
        rows.append([f"steered: {cond}", "", *[cell(d.marker_rate.sel(condition=cond, coef=c),
                                                    d.coherence.sel(condition=cond, coef=c).mean()) for c in d.coef.values]])
    return markdown([f"L{at}: marker rate (coherence)", "no steering", *[f"coef {float(c):g}" for c in d.coef.values]],
                    rows)


GENERATORS = {
    "vectors-elicitation": elicitation_table,
    "vectors-vs-edit": vs_edit_table,
    "vectors-delta-x": _delta,
    "vectors-extract": extract_table,
    "vectors-steer": steer_table,
    "vectors-monitor": monitor_table,
    "vectors-trace": trace_table,
}
