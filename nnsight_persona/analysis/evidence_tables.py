"""Generated docs tables of the evidence measure in the persona-vector and subnetwork results
(scripts/update_docs.py): calibration AUROCs, steering curves and subnetwork evaluations, each
mean with a percentile bootstrap interval over questions (BOOTSTRAP resamples, numpy seed 0)."""

from __future__ import annotations


import numpy as np

from ..storage.store import load_dataset
from .calibration import mean_interval
from .tables import markdown


def _fmt(triple, digits: int = 3) -> str:
    m, lo, hi = triple
    return f"{m:+.{digits}f} [{lo:+.{digits}f}, {hi:+.{digits}f}]"


def calibrate_table(path: str) -> str:
    """Per trait: the evidence AUROC of prompted against unprompted answers (intervals over questions)."""
    from ..studies.vectors.calibrate import markdown_table

    return markdown_table(load_dataset(path))


def steer_evidence_table(path: str, reference: str = "neg") -> str:
    """Per trait and vector kind (the steer run's layers): mean trait evidence against `reference`
    [95% interval over questions] and mean coherence at each coefficient, and the unsteered
    baselines' evidence."""
    ds = load_dataset(path).isel(model=0)
    coefs = ds.coef.values.tolist()
    rows = []
    for trait in ds.trait.values.tolist():
        base = ds.baseline_evidence.sel(trait=trait, reference=reference)
        clean, prompted = _fmt(mean_interval(base.sel(baseline="clean").values)), _fmt(
            mean_interval(base.sel(baseline="prompted").values))
        for layer in ds.layer.values.tolist():
            for kind in ds.kind.values.tolist():
                s = ds.sel(trait=trait, layer=layer, kind=kind)
                cells = [f"{_fmt(mean_interval(s.evidence.sel(coef=c, reference=reference).values))} / "
                         f"{float(s.coherence.sel(coef=c).mean()):.0f}" for c in coefs]
                rows.append([trait, str(layer), kind, *cells, clean, prompted])
    return markdown(["trait", "layer", "kind", *[f"coef {c:g}: evidence / coh." for c in coefs],
                     "clean (unsteered)", "prompted (unsteered)"], rows)


def steer_score_table(path: str) -> str:
    """Per trait and kind: the AxBench-style steering score (evidence scaled between the clean and
    prompted baselines, harmonic mean with coherence) at each coefficient."""
    ds = load_dataset(path).isel(model=0)
    coefs = ds.coef.values.tolist()
    rows = []
    for trait in ds.trait.values.tolist():
        for layer in ds.layer.values.tolist():
            for kind in ds.kind.values.tolist():
                s = ds.steering_score.sel(trait=trait, layer=layer, kind=kind)
                rows.append([trait, str(layer), kind, *[float(s.sel(coef=c)) for c in coefs],
                             float(ds.baseline_score.sel(trait=trait, baseline="prompted"))])
    return markdown(["trait", "layer", "kind", *[f"coef {c:g}" for c in coefs], "prompted"], rows)


def subnetwork_evidence_table(path: str) -> str:
    """Per variant and persona: mean evidence (the persona's prompt against none) [95% interval
    over the generations' questions], the share above the persona's null, the marker rate; and
    each persona's AUROC of prompt:P against unpruned."""
    ds = load_dataset(path)
    rows = []
    for persona in ds.persona.values.tolist():
        for variant in ds.variant.values.tolist():
            e = ds.evidence.sel(variant=variant, persona=persona).values
            rows.append([persona, variant, _fmt(mean_interval(e)),
                         float(ds.evidence_rate.sel(variant=variant, persona=persona)),
                         float(ds.marker_rate.sel(variant=variant, persona=persona))])
    table = markdown(["persona", "variant", "mean evidence [95% CI]", "above null", "marker rate"], rows)
    aurocs = ", ".join(f"{p} {float(ds.evidence_auroc.sel(persona=p)):.3f} (null "
                       f"{float(ds.evidence_threshold.sel(persona=p)):+.3f})" for p in ds.persona.values.tolist())
    return table + f"\n\nAUROC of prompt:P against unpruned: {aurocs}."


def knockout_evidence_table(path: str) -> str:
    """Per condition (rows) and band (columns): the mean evidence of the answers generated under the
    knockout (the cell's XY prompt against its BY prompt) [95% interval over cells]."""
    ds = load_dataset(path)
    ds = ds.isel(model=0) if "model" in ds.dims else ds
    bands = [str(b) for b in ds.band.values]
    rows = [[str(c), *[_fmt(mean_interval(ds.evidence.sel(condition=c, band=b).values)) for b in bands]]
            for c in ds.condition.values]
    return markdown(["keys knocked out \\ band", *bands], rows)


def persona_contrast(ds, variant: str, persona: str, opposite: str):
    """Per generation of `variant`: evidence for `persona` minus evidence for `opposite`, i.e.
    log p(answer | persona's prompt) - log p(answer | opposite's prompt) per token, which tells the
    two personas apart where each one's evidence against no prompt does not; an incoherent answer
    (coherence below the evidence module's minimum) keeps only a negative part, as evidence_coherent."""
    from ..core.evidence import COHERENCE_MIN

    diff = (ds.evidence.sel(variant=variant, persona=persona) - ds.evidence.sel(variant=variant, persona=opposite)).values
    coherent = ds.coherence.sel(variant=variant).values >= COHERENCE_MIN
    return np.where(coherent, diff, np.minimum(diff, 0.0))


def subnetwork_contrast_table(path: str) -> str:
    """Per persona and sparsity: the persona contrast (persona_contrast) of each variant's answers,
    mean over the generations [95% interval] for the prompt and the own mask; the random masks'
    mean (and their largest); the share of coherent answers under the own mask."""
    from ..core.evidence import COHERENCE_MIN
    from .subnetworks import opposites

    ds = load_dataset(path)
    labels = ds.variant.values.astype(str).tolist()
    kinds = ds.kind.values.astype(str)
    opposite = opposites(ds)
    rows = []
    for p in [str(x) for x in ds.persona.values]:
        q = opposite[p]
        mean = lambda v: float(np.nanmean(persona_contrast(ds, v, p, q)))  # noqa: E731 - an empty answer has no score
        for s in sorted({float(s) for s, k in zip(ds.sparsity.values, kinds) if k == "mask"}):
            own = f"mask:{p}@{s:g}"
            rand = [mean(v) for v, k, sp in zip(labels, kinds, ds.sparsity.values) if k == "random" and float(sp) == s]
            rows.append([p, f"{s:g}", f"{mean('unpruned'):+.3f}", _fmt(mean_interval(persona_contrast(ds, f"prompt:{p}", p, q))),
                         _fmt(mean_interval(persona_contrast(ds, own, p, q))),
                         f"{mean(f'mask:{q}@{s:g}'):+.3f}" if f"mask:{q}@{s:g}" in labels else "",
                         f"{np.nanmean(rand):+.3f} ({np.nanmax(rand):+.3f})" if rand else "",
                         f"{float(np.mean(ds.coherence.sel(variant=own).values >= COHERENCE_MIN)):.2f}"])
    return markdown(["persona", "sparsity", "unpruned", "prompt [95% CI]", "own mask [95% CI]", "opposite mask",
                     "random masks: mean (max)", "own mask: coherent answers"], rows)


GENERATORS = {
    "subnetwork-contrast": subnetwork_contrast_table,
    "knockout-evidence": knockout_evidence_table,
    "vectors-calibrate": calibrate_table,
    "vectors-steer-evidence": steer_evidence_table,
    "vectors-steer-evidence-score": steer_score_table,
    "subnetwork-evidence": subnetwork_evidence_table,
}
