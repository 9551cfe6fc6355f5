"""vectors calibrate: does a model express a trait in its prompt? The evidence measure
(trait_evidence.py) on the trait's own prompted answers against its unprompted ones.

For each trait, instruction pair p and evaluation question q: the greedy answer under the
positive side's prompt of pair p (``prompted``) and the greedy answer to q alone (``unprompted``,
one per question, scored once per pair). Each answer is scored with pair p's prompt pairs:
positive against negative (reference ``neg``) and positive against no instruction (``none``).

Per trait and reference:
- ``auroc``: the probability that a prompted answer's evidence exceeds an unprompted one's,
  pooled over pairs and questions, with a percentile bootstrap interval over questions
  (``auroc_low``, ``auroc_high``; BOOTSTRAP resamples of the questions, numpy seed 0);
- ``threshold``: the per-trait null, the NULL_QUANTILE quantile of the unprompted answers'
  evidence (analysis.calibration.threshold: an observed value rounded up);
  ``prompted_above`` the fraction of prompted answers above it.
A trait is "expressed" (``expressed``) when its AUROC reaches EXPRESSED_AUROC against both
references. Against no instruction the AUROC is easy to reach: the prompted answers are the
positive prompt's own greedy answers and the unprompted ones the bare prompt's, so any prompt
that changes the answers separates them (a placebo instruction that only rewords the negative
side does too, docs/persona-vectors.md); against the negative side, which generated neither, it
is the demanding one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import xarray as xr

from ...storage.provenance import provenance_attrs
from .chat import render, system_text
from .passes import generate_answers
from ...analysis.calibration import auroc, threshold
from .trait_evidence import REFERENCES, score_trait_answers

CONDITIONS = ("prompted", "unprompted")
NULL_QUANTILE = 0.95
BOOTSTRAP = 1000
EXPRESSED_AUROC = 0.9


@dataclass(frozen=True)
class CalibrateSpec:
    traits: tuple[str, ...]
    n_questions: int = 0  # 0: every evaluation question
    n_tokens: int = 40
    batch_size: int = 16
    trait_definitions: tuple = ()

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trait_definitions"] = [dict(t) for t in self.trait_definitions]
        return d


def samples_of(traits, n_questions: int) -> list[dict]:
    """Every (trait, condition, pair, question) scored, in a fixed order."""
    rows = []
    for trait in traits:
        for condition in CONDITIONS:
            for pair in range(trait.n_pairs()):
                for qi, question in enumerate(trait.eval_questions[: n_questions or None]):
                    side = "pos" if condition == "prompted" else "none"
                    rows.append({"trait": trait, "condition": condition, "pair": pair, "question_index": qi,
                                 "question": question, "messages": trait.messages(side, pair, question)})
    return rows


def bootstrap_auroc(score, positive, question, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """2.5 and 97.5 percentiles of the AUROC over resamples of the questions (with replacement)."""
    questions = np.unique(question)
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(n):
        chosen = rng.choice(questions, size=len(questions), replace=True)
        idx = np.concatenate([np.flatnonzero(question == q) for q in chosen])
        values.append(auroc(score[idx][positive[idx]], score[idx][~positive[idx]]))
    values = np.array(values)
    values = values[np.isfinite(values)]
    if not len(values):
        return float("nan"), float("nan")
    return float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))


def run(loaded, traits, spec: CalibrateSpec, progress: bool = True) -> xr.Dataset:
    rows = samples_of(traits, spec.n_questions)
    tok = loaded.tokenizer
    prompts = [render(tok, r["messages"]) for r in rows]
    # The unprompted prompt does not depend on the pair: generate each once.
    unique: dict[tuple, int] = {}
    for i, p in enumerate(prompts):
        unique.setdefault(tuple(p), i)
    firsts = list(unique.values())
    got = generate_answers(loaded, [prompts[i] for i in firsts], spec.n_tokens, spec.batch_size, progress=progress,
                           desc="calibrate: answers")
    by_prompt = {tuple(prompts[i]): a for i, a in zip(firsts, got)}
    answers = [by_prompt[tuple(p)] for p in prompts]
    n = len(rows)
    scores = {"evidence": np.full((n, len(REFERENCES)), np.nan), "evidence_sum": np.full((n, len(REFERENCES)), np.nan),
              "reference_logp": np.full((n, len(REFERENCES)), np.nan),
              "evidence_coherent": np.full((n, len(REFERENCES)), np.nan),
              "answer_length": np.zeros(n, dtype=np.int64), "coherence": np.full(n, np.nan)}
    for trait in traits:
        idx = [i for i, r in enumerate(rows) if r["trait"] is trait]
        out = score_trait_answers(loaded, trait, [(rows[i]["pair"], rows[i]["question"], "instruction") for i in idx],
                                  [answers[i] for i in idx], spec.batch_size, progress=progress)
        for name, values in out.items():
            scores[name][idx] = values
    return _dataset(loaded, traits, spec, rows, answers, scores)


def _dataset(loaded, traits, spec, rows, answers, scores) -> xr.Dataset:
    names = [t.name for t in traits]
    trait_of = np.array([r["trait"].name for r in rows], dtype=object)
    condition = np.array([r["condition"] for r in rows], dtype=object)
    question = np.array([r["question_index"] for r in rows])
    texts = [loaded.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    width = max([len(a) for a in answers] + [1])
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = a
    sdims = ("sample", "reference")
    data = {name: (sdims, scores[name]) for name in ("evidence", "evidence_sum", "reference_logp", "evidence_coherent")}
    data.update(answer_length=(("sample",), scores["answer_length"]), coherence=(("sample",), scores["coherence"]),
                answer=(("sample",), np.array(texts, dtype=object)),
                answer_ids=(("sample", "answer_token"), ids))
    ds = xr.Dataset(data, coords={
        "trait": names, "reference": list(REFERENCES),
        "sample_trait": ("sample", trait_of), "condition": ("sample", condition),
        "pair": ("sample", [r["pair"] for r in rows]), "question_index": ("sample", question),
        "question": ("sample", np.array([r["question"] for r in rows], dtype=object)),
        "system": ("sample", np.array([system_text(r["messages"]) for r in rows], dtype=object)),
    }, attrs=provenance_attrs(loaded, "vectors-calibrate", spec.to_dict()))
    from .trait_evidence import attrs

    for name in ("evidence", "evidence_sum", "reference_logp", "evidence_coherent", "answer_length"):
        ds[name].attrs.update(attrs(name))
    ds["coherence"].attrs.update(long_name="fraction of distinct token 3-grams in the answer", units="1")
    ds.attrs.update(completed=1)
    return with_statistics(ds)


def with_statistics(ds: xr.Dataset) -> xr.Dataset:
    """`ds` (its per-sample evidence) with the per-trait statistics: AUROC and its bootstrap
    interval over questions, the null threshold, the share of prompted answers above it, the
    AUROC of evidence_coherent, and `expressed`."""
    names = ds.trait.values.tolist()
    trait_of, condition = ds.sample_trait.values, ds.condition.values
    question = ds.question_index.values
    shape = (len(names), len(REFERENCES))
    per_trait = {k: np.full(shape, np.nan) for k in ("auroc", "auroc_low", "auroc_high", "threshold", "prompted_above",
                                                    "auroc_coherent")}
    for k, name in enumerate(names):
        mine = trait_of == name
        positive = condition[mine] == "prompted"
        for r in range(len(REFERENCES)):
            e = ds.evidence.values[mine, r]
            per_trait["auroc"][k, r] = auroc(e[positive], e[~positive])
            per_trait["auroc_low"][k, r], per_trait["auroc_high"][k, r] = bootstrap_auroc(e, positive, question[mine])
            per_trait["threshold"][k, r] = threshold(e[~positive], NULL_QUANTILE)
            if np.isfinite(per_trait["threshold"][k, r]):
                per_trait["prompted_above"][k, r] = float(np.mean(e[positive] > per_trait["threshold"][k, r]))
            ec = ds.evidence_coherent.values[mine, r]
            per_trait["auroc_coherent"][k, r] = auroc(ec[positive], ec[~positive])
    ds = ds.copy()
    for name, values in per_trait.items():
        ds[name] = (("trait", "reference"), values)
    ds["expressed"] = (("trait",), (per_trait["auroc"].min(axis=1) >= EXPRESSED_AUROC).astype(np.int8))
    ds["auroc"].attrs.update(long_name="AUROC of evidence, prompted against unprompted answers (pooled over pairs "
                                       "and questions)")
    ds["auroc_low"].attrs.update(long_name=f"2.5th percentile of the AUROC over {BOOTSTRAP} bootstrap resamples of "
                                           "the questions")
    ds["auroc_high"].attrs.update(long_name="97.5th percentile of the same")
    ds["threshold"].attrs.update(long_name=f"per-trait null: the {NULL_QUANTILE:g} quantile of the unprompted "
                                           "answers' evidence (an observed value, rounded up)", units="nats/token")
    ds["prompted_above"].attrs.update(long_name="fraction of prompted answers above the threshold")
    ds["auroc_coherent"].attrs.update(long_name="AUROC of evidence_coherent (evidence with no positive part where "
                                                "coherence < 0.5)")
    ds["expressed"].attrs.update(long_name=f"1 where the AUROC is >= {EXPRESSED_AUROC} against both references")
    ds.attrs.update(null_quantile=NULL_QUANTILE, bootstrap=BOOTSTRAP)
    return ds


def summary_lines(ds: xr.Dataset) -> list[str]:
    lines = []
    for name in ds.trait.values.tolist():
        sel = ds.sel(trait=name)
        n = int(((ds.sample_trait == name) & (ds.condition == "prompted")).sum())
        parts = [f"{ref}: AUROC {float(sel.auroc.sel(reference=ref)):.3f} "
                 f"[{float(sel.auroc_low.sel(reference=ref)):.3f}, {float(sel.auroc_high.sel(reference=ref)):.3f}], "
                 f"threshold {float(sel.threshold.sel(reference=ref)):+.3f}, prompted above "
                 f"{float(sel.prompted_above.sel(reference=ref)):.2f}" for ref in ds.reference.values.tolist()]
        lines.append(f"{name:14s} {n} prompted answers; " + "; ".join(parts)
                     + ("  (expressed)" if int(sel.expressed) else ""))
    return lines


def markdown_table(ds: xr.Dataset) -> str:
    """The AUROCs as a markdown table (a generated docs block)."""
    head = ("| trait | prompted answers | AUROC vs no instruction [95% CI] | AUROC vs negative side [95% CI] | "
            "null threshold vs none (nats/token) | expressed |")
    lines = [head, "|---|---|---|---|---|---|"]
    for name in ds.trait.values.tolist():
        sel = ds.sel(trait=name)
        n = int(((ds.sample_trait == name) & (ds.condition == "prompted")).sum())
        cell = lambda ref: (f"{float(sel.auroc.sel(reference=ref)):.3f} [{float(sel.auroc_low.sel(reference=ref)):.3f}, "
                            f"{float(sel.auroc_high.sel(reference=ref)):.3f}]")
        lines.append(f"| {name} | {n} | {cell('none')} | {cell('neg')} | "
                     f"{float(sel.threshold.sel(reference='none')):+.3f} | {'yes' if int(sel.expressed) else 'no'} |")
    return "\n".join(lines)
