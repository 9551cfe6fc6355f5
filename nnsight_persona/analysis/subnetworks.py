"""Tables of persona-subnetwork results (find statistics, evaluation against the baselines), for
the CLI's summaries and the docs' generated blocks. Pure functions of the datasets."""

from __future__ import annotations

import numpy as np

from ..storage.store import load_dataset
from .markdown import markdown


def _ds(source):
    return load_dataset(source) if isinstance(source, str) else source


def find_rows(source) -> str:
    """Per pair of personas and sparsity: the kept fraction, and the Jaccard index of kept and of
    pruned entries over all masked modules, beside what two independent random masks of that
    sparsity would give (kept q/(2-q) with q the kept fraction; pruned s/(2-s))."""
    from ..studies.subnetworks.masks import overall

    ds = _ds(source)
    personas = [str(p) for p in ds.persona.values]
    rows = []
    for i, a in enumerate(personas):
        for b in personas[i + 1:]:
            for s in ds.sparsity.values:
                q = overall(ds, "kept_fraction", a, None, s)
                pruned = 1 - q
                rows.append([f"{a} / {b}", f"{float(s):g}", q, overall(ds, "jaccard", a, b, s), q / (2 - q),
                             overall(ds, "jaccard_pruned", a, b, s), pruned / (2 - pruned) if pruned else float("nan")])
    return markdown(["personas", "sparsity", "kept fraction", "Jaccard kept", "random: kept", "Jaccard pruned",
                     "random: pruned"], rows)


def _value(ds, label, persona, measure):
    return float(ds[measure].sel(variant=label, persona=persona))


def opposites(ds) -> dict:
    """persona -> its opposite, from the dataset's persona set (or the two personas paired, for a
    set that is no longer where it was)."""
    from ..studies.subnetworks.data import load_persona_set

    personas = [str(p) for p in ds.persona.values]
    try:
        return {n: p.opposite for n, p in load_persona_set(ds.attrs.get("persona_set", "")).personas.items()}
    except Exception:  # noqa: BLE001 - a set that moved: pair the two personas
        return {a: b for a, b in zip(personas, personas[::-1])}


def comparison(ds, measure: str = "p_matching") -> list[dict]:
    """Per persona and sparsity: the measure under the unpruned model (no prompt), the persona's
    prompt, its own mask, the opposite persona's mask, and the random masks (mean, min, max)."""
    kinds = ds.kind.values.astype(str)
    labels = ds.variant.values.astype(str)
    personas = [str(p) for p in ds.persona.values]
    masked = sorted({float(s) for s, k in zip(ds.sparsity.values, kinds) if k == "mask"})
    opposite = opposites(ds)
    out = []
    for p in personas:
        for s in masked:
            rand = [_value(ds, lab, p, measure) for lab, k, sp in zip(labels, kinds, ds.sparsity.values)
                    if k == "random" and float(sp) == s]
            row = {
                "persona": p, "sparsity": s, "unpruned": _value(ds, "unpruned", p, measure),
                "prompt": _value(ds, f"prompt:{p}", p, measure) if f"prompt:{p}" in labels else float("nan"),
                "own mask": _value(ds, f"mask:{p}@{s:g}", p, measure),
                "opposite mask": _value(ds, f"mask:{opposite[p]}@{s:g}", p, measure)
                if f"mask:{opposite[p]}@{s:g}" in labels else float("nan"),
                "random mean": float(np.mean(rand)) if rand else float("nan"),
                "random max": float(np.max(rand)) if rand else float("nan"),
                "n random": len(rand),
            }
            out.append(row)
    return out


# measure -> what its per-unit values are (the mean of them is the measure of one variant and persona)
UNIT_OF_MEASURE = {
    "p_matching": "evaluation items (sigmoid of item_margin)",
    "alignment": "evaluation items (item_margin > 0)",
    "margin": "evaluation items (item_margin)",
    "marker_rate": "generations (the persona's markers in each text)",
    "mean_evidence": "generations (evidence)",
}


def persona_markers(ds) -> dict[str, list[str]] | None:
    """Each persona's markers from the file's persona set (None when the set cannot be loaded)."""
    from ..studies.subnetworks.data import load_persona_set

    try:
        pset = load_persona_set(ds.attrs.get("persona_set", ""))
        return {str(p): list(pset.persona(str(p)).markers) for p in ds.persona.values}
    except Exception:  # noqa: BLE001 - a set that moved: no per-generation marker flags
        return None


def unit_values(ds, measure: str, variant: str, persona: str, markers: dict | None = None) -> np.ndarray | None:
    """The values over units whose mean is `measure` of one variant for one persona (UNIT_OF_MEASURE):
    the persona's evaluation items (files with `item_margin`), or the variant's generations
    (`marker_rate` from the texts and the persona's markers, `mean_evidence` from `evidence`). None
    where the file does not hold them (files made before `item_margin`, no evidence, a lost set)."""
    from ..core.scoring import contains_marker

    if measure in ("p_matching", "alignment", "margin"):
        if "item_margin" not in ds:
            return None
        margins = ds["item_margin"].sel(variant=variant).values[ds["item_persona"].values.astype(str) == persona]
        if measure == "p_matching":
            return 1 / (1 + np.exp(-margins))
        return (margins > 0).astype(float) if measure == "alignment" else margins
    if measure == "marker_rate":
        if markers is None or persona not in markers or "text" not in ds:
            return None
        return np.array([float(contains_marker(str(t), markers[persona])) for t in ds["text"].sel(variant=variant).values])
    if measure == "mean_evidence":
        return ds["evidence"].sel(variant=variant, persona=persona).values.astype(float) if "evidence" in ds else None
    return None


def random_labels(ds, sparsity: float) -> list[str]:
    """The random masks' variants of one sparsity (one per seed)."""
    kinds = ds.kind.values.astype(str)
    return [str(v) for v, k, s in zip(ds.variant.values, kinds, ds.sparsity.values) if k == "random" and float(s) == sparsity]


def variant_interval(ds, measure: str, variant: str, persona: str, markers: dict | None = None,
                     seed: int = 0) -> dict:
    """One variant's `measure` for one persona with the 95% bootstrap interval of the mean over its
    units (unit_values); without them the file's value and no interval (n 0)."""
    from .statistics import bootstrap_interval

    values = unit_values(ds, measure, variant, persona, markers)
    if values is None:
        return {"estimate": float(ds[measure].sel(variant=variant, persona=persona)), "low": float("nan"),
                "high": float("nan"), "n": 0}
    iv = bootstrap_interval(values, "mean", seed=seed)
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n}


def random_interval(ds, measure: str, persona: str, sparsity: float, seed: int = 0) -> dict:
    """The random masks of one sparsity: the mean of `measure` over their seeds with the 95% bootstrap
    interval over seeds (the unit of random masks)."""
    from .statistics import bootstrap_interval

    labels = random_labels(ds, sparsity)
    if not labels:
        return {"estimate": float("nan"), "low": float("nan"), "high": float("nan"), "n": 0}
    iv = bootstrap_interval(ds[measure].sel(variant=labels, persona=persona).values.astype(float), "mean", seed=seed)
    return {"estimate": iv.estimate, "low": iv.low, "high": iv.high, "n": iv.n}


def eval_rows(source, measure: str = "p_matching") -> str:
    """Markdown: `measure` per persona and sparsity for every baseline, whether the persona's own
    mask beats every random mask of its sparsity, and how far it is from the persona prompt."""
    ds = _ds(source)
    table = comparison(ds, measure)
    rows = [[r["persona"], f"{r['sparsity']:g}", r["unpruned"], r["prompt"], r["own mask"], r["opposite mask"],
             r["random mean"], r["random max"], r["own mask"] > r["random max"], r["own mask"] - r["prompt"]]
            for r in table]
    return markdown(["persona", "sparsity", "unpruned", "prompt", "own mask", "opposite mask",
                     f"random mean ({table[0]['n random'] if table else 0})", "random max",
                     "own > every random", "own - prompt"], rows)


def perplexity_rows(source) -> str:
    """Perplexity on the neutral answers per variant kind (random masks: mean over seeds)."""
    ds = _ds(source)
    rows, seen = [], set()
    for label, kind, s in zip(ds.variant.values.astype(str), ds.kind.values.astype(str), ds.sparsity.values):
        if kind == "random":
            key = f"random@{float(s):g}"
            if key in seen:
                continue
            seen.add(key)
            picked = (ds.kind == "random") & (ds.sparsity == s)
            rows.append([f"random masks @ {float(s):g} (mean of {int(picked.sum())})",
                         float(ds.perplexity.where(picked, drop=True).mean())])
        else:
            rows.append([label, float(ds.perplexity.sel(variant=label))])
    return markdown(["variant", "perplexity"], rows)


def eval_table(path: str, measure: str = "p_matching") -> str:
    return eval_rows(path, measure)


GENERATORS = {
    "subnetwork-find": find_rows,
    "subnetwork-eval": eval_table,
    "subnetwork-perplexity": perplexity_rows,
}

__all__ = ["find_rows", "eval_rows", "perplexity_rows", "comparison", "unit_values", "variant_interval",
           "random_interval", "random_labels", "persona_markers", "GENERATORS"]
