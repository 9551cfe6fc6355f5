"""The claims a results folder supports, generated from declared rules (`RULES`).

A rule names an experiment, a variable, the dim that holds the two sides, the treatment and its
controls, the direction the claim expects (treatment - control `greater` or `less` than 0) and the
unit. Every other dim left after the rule's selection gives a separate claim (one per layer, band...).
Dims in `within` are averaged inside a unit first (e.g. the positive coefficients of a steering run).
A claim's words may name the file's scorer (`{scorer}`, from its `scorer` attr), so a steering claim
says whether its trait score is the offline lexicon, a judge or the evidence measure.

Effect size: the mean paired difference treatment - control over units, with a seeded percentile
bootstrap interval over units; p: the one-sided sign-flip test of those differences
(statistics.paired_comparison). p is Holm-adjusted within a family: the claims of ONE rule in ONE
file (every control and every site of that rule there: layers, positions, bands...). A family per
rule and file keeps the correction to the question the rule asks of that file; one family over the
whole folder (~200 claims) multiplied each p by up to ~200, so a claim with few units (2^-n is the
smallest exact sign-flip p) could never hold. A claim holds where its adjusted p is below `ALPHA`.
Adding a rule is one entry in `RULES`; rules on a variable a file lacks (e.g. `evidence` in an older
markers file) are skipped.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import xarray as xr

from ..core.errors import SelectionError
from .statistics import holm, paired_comparison

ALPHA = 0.05


@dataclass(frozen=True)
class Rule:
    name: str
    experiment: str
    claim: str  # words, with {treatment} and {control}
    variable: str
    side_dim: str
    treatment: str
    controls: tuple[str, ...]  # fnmatch patterns over the side dim's values
    direction: str  # "greater" or "less": the sign the claim expects of treatment - control
    unit: tuple[str, ...]
    within: tuple[str, ...] = ()
    where: Callable[[xr.Dataset], xr.Dataset] | None = None
    sides: Callable[[xr.Dataset, "Rule"], xr.Dataset] | None = None  # builds the side dim when a file lacks one
    control_words: tuple[tuple[str, str], ...] = ()  # (side, words) where a side's name reads badly in {control}


def _positive_coefs(ds):
    return ds.sel(coef=ds.coef.values[ds.coef.values > 0])


def _mask_sides(ds: xr.Dataset, rule: Rule) -> xr.Dataset:
    """subnetwork-eval: per persona and sparsity, the persona's own mask and the mean of the random
    masks of that sparsity, as a `side` dim (own, random) over units (persona, sparsity)."""
    labels = ds.variant.values.astype(str)
    kinds = ds.kind.values.astype(str)
    sparsities = sorted({float(s) for s, k in zip(ds.sparsity.values, kinds) if k == "mask"})
    personas = [str(p) for p in ds.persona.values]
    values = np.full((2, len(personas), len(sparsities)), np.nan)
    for j, p in enumerate(personas):
        for k, s in enumerate(sparsities):
            own = f"mask:{p}@{s:g}"
            rand = [i for i, (kind, sp) in enumerate(zip(kinds, ds.sparsity.values)) if kind == "random" and float(sp) == s]
            if own in labels and rand:
                values[0, j, k] = float(ds[rule.variable].sel(variant=own, persona=p))
                values[1, j, k] = float(ds[rule.variable].isel(variant=rand).sel(persona=p).mean())
    da = xr.DataArray(values, dims=("side", "persona", "sparsity"),
                      coords={"side": ["own_mask", "random_masks"], "persona": personas, "sparsity": sparsities})
    return xr.Dataset({rule.variable: da})


def scorer_words(ds: xr.Dataset) -> str:
    """Which scorer made a vectors result's trait score, from its `scorer` attr ("evidence: ...",
    "offline: ...", "judge: ..."), as words for a claim."""
    name = str(ds.attrs.get("scorer", "")).split(":")[0].strip()
    if not name:
        return "scorer not recorded"
    return f"{name} scorer" + (", nats/token" if name == "evidence" else "")


# knockout conditions whose keys lie in the persona's own XY prompt (studies/xu2026/knockout.PROMPT_OF),
# besides the persona span itself and `none`
KNOCKOUT_EVIDENCE_CONTROLS = ("task_span", "template_span")

_SUBSTITUTE = dict(experiment="substitute", variable="kl", side_dim="condition", treatment="additive",
                   direction="less", unit=("cell",))
RULES: tuple[Rule, ...] = (
    Rule("additive beats each control", claim="the additive reconstruction's KL to the clean run is below {control}'s",
         controls=("baseline", "persona_only", "task_only", "random"), **_SUBSTITUTE),
    Rule("remove_persona keeps the persona", "markers",
         "more answers carry a persona marker under {treatment} than under {control}",
         "any_marker", "condition", "remove_persona", ("bare",), "greater", ("cell",)),
    Rule("remove_persona keeps the persona (evidence)", "markers",
         "answers under {treatment} carry more persona evidence than under {control}",
         "evidence", "condition", "remove_persona", ("bare",), "greater", ("cell",)),
    Rule("knockout of the persona span shifts more than each control", "knockout",
         "knocking out the persona span shifts the answer more than knocking out the {control}",
         "persona_shift", "condition", "persona", ("task_span", "neutral_span", "template_span"), "greater", ("cell",)),
    # The answers' evidence (files with `evidence`): every condition scores its answer against the
    # same XY-vs-BY prompt pair. Against `none` (no knockout, the clean answer): the persona knockout
    # lowers the evidence. Against a control span knocked out in the same XY prompt
    # (knockout.PROMPT_OF): a lower evidence than under that knockout is a larger drop from `none`.
    # neutral_span's host holds no persona at all, so its answers carry none to lose: no control here.
    Rule("knockout of the persona span lowers the evidence more than each control", "knockout",
         "knocking out the persona span leaves the answer less persona evidence than {control}",
         "evidence", "condition", "persona", ("none", *KNOCKOUT_EVIDENCE_CONTROLS), "less", ("cell",),
         control_words=(("none", "no knockout"), *((c, f"knocking out the {c}") for c in KNOCKOUT_EVIDENCE_CONTROLS))),
    Rule("the persona vector steers beyond its controls", "vectors-steer",
         "adding the persona vector raises the trait score ({scorer}) more than the {control} vector",
         "trait_score", "kind", "vector", ("random*", "shuffled*"), "greater", ("trait", "question"),
         within=("coef",), where=_positive_coefs),
    Rule("the own mask beats random masks", "subnetwork-eval",
         "the persona's own mask matches the persona more often than random masks of its sparsity",
         "p_matching", "side", "own_mask", ("random_masks",), "greater", ("persona", "sparsity"), sides=_mask_sides),
    Rule("the own mask beats random masks (evidence)", "subnetwork-eval",
         "the persona's own mask's generations carry more persona evidence than random masks' of its sparsity",
         "mean_evidence", "side", "own_mask", ("random_masks",), "greater", ("persona", "sparsity"),
         sides=_mask_sides),
)


def rules_for(experiment: str) -> list[Rule]:
    return [r for r in RULES if r.experiment == experiment]


def _plain(value):
    return value.item() if hasattr(value, "item") else value


def claims_of_dataset(ds: xr.Dataset, source: str = "", rules=None, seed: int = 0) -> list[dict]:
    """Unadjusted claims (p, not yet Holm-adjusted) of every rule that applies to `ds`."""
    out = []
    for rule in rules if rules is not None else rules_for(ds.attrs.get("experiment", "")):
        if rule.variable not in ds:
            continue
        data = rule.sides(ds, rule) if rule.sides else ds
        if rule.where:
            data = rule.where(data)
        da = data[rule.variable].astype(float)
        sides = [str(v) for v in da[rule.side_dim].values]
        if rule.treatment not in sides:
            continue
        controls = [s for s in sides if s != rule.treatment and any(fnmatch.fnmatchcase(s, c) for c in rule.controls)]
        groups = [d for d in da.dims if d not in (rule.side_dim, *rule.unit, *rule.within)]
        for control in controls:
            a = da.sel({rule.side_dim: rule.treatment}).transpose(*groups, *rule.unit, *rule.within)
            b = da.sel({rule.side_dim: control}).transpose(*groups, *rule.unit, *rule.within)
            n_group = len(groups)
            shape = a.shape[:n_group]
            av = a.values.reshape(*shape, int(np.prod(a.shape[n_group:n_group + len(rule.unit)])),
                                  int(np.prod(a.shape[n_group + len(rule.unit):])))
            bv = b.values.reshape(av.shape)
            for index in np.ndindex(*shape):
                coords = {d: _plain(a[d].values[i]) for d, i in zip(groups, index)}
                result = paired_comparison(av[index], bv[index], rule.direction, seed=seed)
                out.append({
                    "rule": rule.name, "file": source, "experiment": rule.experiment,
                    "claim": rule.claim.format(treatment=rule.treatment, control=dict(rule.control_words).get(control, control),
                                               scorer=scorer_words(ds)),
                    "variable": rule.variable, "treatment": rule.treatment, "control": control,
                    "coords": coords, "direction": rule.direction, **result,
                })
    return out


def family_of(claim: dict) -> tuple[str, str]:
    """The Holm family a claim belongs to: its rule within its file."""
    return claim["file"], claim["rule"]


def adjust(claims: list[dict], alpha: float = ALPHA) -> list[dict]:
    """Holm-adjusted p within each family (one rule in one file, `family_of`), the family's size, and
    whether each claim holds."""
    families: dict[tuple[str, str], list[dict]] = {}
    for claim in claims:
        families.setdefault(family_of(claim), []).append(claim)
    for members in families.values():
        adjusted = holm([c["p"] for c in members])
        size = int(sum(np.isfinite(c["p"]) for c in members))
        for claim, p in zip(members, adjusted):
            claim["p_holm"] = float(p)
            claim["family_size"] = size
            expected = claim["effect"] > 0 if claim["direction"] == "greater" else claim["effect"] < 0
            claim["holds"] = bool(p < alpha and expected)
    return claims


def folder_findings(folder, seed: int = 0) -> list[dict]:
    """Every claim the result files of `folder` (its *.nc) support or not, Holm-adjusted within each
    rule and file (`adjust`)."""
    from ..storage.store import load_dataset

    folder = Path(folder)
    if not folder.is_dir():
        raise SelectionError(f"findings needs a folder of result files; {folder} is not a folder")
    claims = []
    for path in sorted(folder.glob("*.nc")):
        ds = load_dataset(path)
        claims.extend(claims_of_dataset(ds, path.name, seed=seed))
    return adjust(claims)


def where_text(coords: dict) -> str:
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in coords.items() if k != "model")


def findings_rows(claims: list[dict]) -> list[dict]:
    """claims flattened for a table."""
    return [{"file": c["file"], "claim": c["claim"], "where": where_text(c["coords"]),
             "effect": c["effect"], "ci_low": c["ci_low"], "ci_high": c["ci_high"], "p_holm": c["p_holm"],
             "family": c["family_size"], "n": c["n"], "holds": "yes" if c["holds"] else "no"} for c in claims]


def findings_digest(claims: list[dict]) -> list[dict]:
    """One row per file and claim wording: how many of its sites (layers, bands...) hold."""
    table: dict[tuple, dict] = {}
    for c in claims:
        row = table.setdefault((c["file"], c["claim"]), {"file": c["file"], "claim": c["claim"], "holds": 0,
                                                          "sites": 0, "n": c["n"]})
        row["sites"] += 1
        row["holds"] += int(c["holds"])
    return list(table.values())
