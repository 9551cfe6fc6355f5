"""The evidence measure (core.evidence) for trait answers, and `--scorer evidence` of the vectors
commands.

A trait answer is scored with two prompt pairs, recorded apart along a ``reference`` dim:
- ``neg``: the positive side's prompt against the negative side's (the instruction pair's
  contrast, the one a persona vector is extracted from);
- ``none``: the positive side's prompt against no instruction (the question alone; a chat
  template's own default system turn, where it has one, stays).
Both prompts ask the answer's own question, under the instruction pair and elicitation variant
the answer belongs to (pair 0 of the instruction variant for steering, whose answers have no
pair). Scoring is teacher-forced on the unedited model, whatever edit produced the answer.

As the scorer of extraction and steering (``EvidenceScorer``):
- trait score = evidence against ``neg``, in nats/token (positive: the trait's prompt explains
  the answer better than the negative side's); the filter's default threshold is 0;
- coherence = 100 x the answer's distinct token 3-gram fraction (core.evidence.coherence), so the
  filter's coherence threshold, 50, is core.evidence.COHERENCE_MIN.
"""

from __future__ import annotations

import numpy as np

from ...core import evidence as core_evidence
from .chat import render

REFERENCES = ("neg", "none")
PAIR_VARIABLES = ("evidence", "evidence_sum", "reference_logp", "evidence_coherent")  # per answer and reference
ANSWER_VARIABLES = ("answer_length",)  # per answer


def prompt_ids(tokenizer, trait, pair: int, question: str, variant: str = "instruction") -> dict[str, list[int]]:
    """The rendered prompts one answer is scored with: 'pos', 'neg' and 'none'."""
    return {side: render(tokenizer, trait.messages(side, pair, question, variant)) for side in ("pos", "neg", "none")}


def score_trait_answers(loaded, trait, items, answers, batch_size: int = 16, progress: bool = False) -> dict:
    """Evidence of each answer (token ids, cut at end of turn) of `trait`; `items` gives each
    answer's (pair, question, variant). Returns arrays: for PAIR_VARIABLES [answers, reference],
    `answer_length` [answers], and `coherence` [answers] (fraction of distinct 3-grams, 0..1)."""
    tok = loaded.tokenizer
    prompts = [prompt_ids(tok, trait, pair, question, variant) for pair, question, variant in items]
    answers = [list(a) for a in answers]
    out = {name: np.full((len(answers), len(REFERENCES)), np.nan) for name in PAIR_VARIABLES}
    got = None
    for r, reference in enumerate(REFERENCES):
        got = core_evidence.score_answers(loaded, [p["pos"] for p in prompts], [p[reference] for p in prompts],
                                          answers, batch_size=batch_size, progress=progress,
                                          desc=f"evidence ({trait.name}, pos against {reference})")
        for name in PAIR_VARIABLES:
            out[name][:, r] = getattr(got, name)
    out["answer_length"] = np.array([len(a) for a in answers], dtype=np.int64)
    out["coherence"] = np.array([core_evidence.coherence(a) for a in answers], dtype=float)
    return out


def empty(n: int) -> dict:
    """Arrays for n answers not scored yet (NaN; answer_length -1)."""
    out = {name: np.full((n, len(REFERENCES)), np.nan) for name in PAIR_VARIABLES}
    out["answer_length"] = np.full(n, -1, dtype=np.int64)
    return out


def attrs(name: str) -> dict:
    """Long name and units of a variable, with the trait prompt pairs named."""
    base = dict(core_evidence.ATTRS[name])
    if name in PAIR_VARIABLES:
        base["prompt_pair"] = ("the trait's positive prompt against the negative side's (reference neg) and "
                               "against no instruction (reference none), unedited model")
    return base


class EvidenceScorer:
    """`--scorer evidence`: the trait score of an answer is its evidence against the negative side
    (nats/token), its coherence 100 x its distinct 3-gram fraction. Needs the answers' token ids
    and their prompts (`score_items`), not their texts."""

    name = "evidence"
    needs_ids = True
    units = "nats/token"
    default_threshold = 0.0
    coherence_threshold = 100.0 * core_evidence.COHERENCE_MIN

    def describe(self) -> str:
        return ("evidence: trait = mean over answer tokens of log p(answer | positive prompt) - log p(answer | negative "
                "prompt), nats/token, teacher-forced on the unedited model (the positive prompt against no "
                "instruction recorded beside it); coherence = 100 x distinct token 3-grams")

    def score_items(self, loaded, trait, items, answers, batch_size: int = 16):
        """(trait score [answers], coherence 0-100 [answers], all evidence arrays)."""
        got = score_trait_answers(loaded, trait, items, answers, batch_size)
        return got["evidence"][:, REFERENCES.index("neg")], 100.0 * got["coherence"], got

    def score(self, loaded, trait, questions, answers, batch_size: int = 16):
        from ...core.errors import SelectionError

        raise SelectionError("the evidence scorer scores token ids under their prompts (score_items), not texts")


def calibrated_trait(evidence, clean_mean: float, prompted_mean: float) -> np.ndarray:
    """Evidence on a 0-100 scale for the AxBench-style steering score: 0 at the unsteered clean
    answers' mean evidence, 100 at the prompting baseline's, linear between, clipped to 0..100.
    NaN when prompting does not raise the evidence (nothing to scale by)."""
    evidence = np.asarray(evidence, dtype=float)
    span = prompted_mean - clean_mean
    if not np.isfinite(span) or span <= 0:
        return np.full(evidence.shape, np.nan)
    return np.clip(100.0 * (evidence - clean_mean) / span, 0.0, 100.0)

