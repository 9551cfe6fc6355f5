"""Scoring answers 0-100 for a trait and for coherence: the filter of extraction and the measure
of steering. Pluggable: `make_scorer("offline")` (the default, nothing leaves the machine) or
`make_scorer("http://host:port/v1", model=...)`, any OpenAI-compatible chat-completions endpoint,
or `make_scorer("evidence")`, the likelihood measure of core.evidence (trait_evidence.py: the
trait score in nats/token, not 0-100).

Offline: the trait score is the mean of what the trait file offers, a marker lexicon (50 per
distinct marker word found, at most 100) and an A/B question the model itself answers about its
answer (100 x p(A) / (p(A) + p(B))). Coherence is 100 x the share of distinct word bigrams
(0 for an empty answer): it catches the repetition loops that strong steering produces, not
subtler nonsense.

Endpoint: the original's judge. The score is the mean of the integers 0-100 among the judge's
top next-token log-probabilities, weighted by their probabilities; None (NaN here) when less than
0.25 of the probability mass is on numbers (a refusal, or text instead of a number).
"""

from __future__ import annotations

import json
import math
import os
import re
import urllib.error
import urllib.request

import numpy as np

from ...core.batching import chunked, left_pad
from ...core.errors import PersonaError
from ...core.scoring import markers_found
from .chat import render

MIN_NUMBER_MASS = 0.25
COHERENCE_PROMPT = (
    "Rate from 0 to 100 how coherent the following answer is: whether it is fluent, makes sense and "
    "addresses the question, regardless of its tone.\nQuestion: {question}\nAnswer: {answer}\n"
    "Reply with a single number from 0 to 100 and nothing else, or REFUSAL if you cannot rate it."
)
AB_TEMPLATE = "Question: {question}\nAnswer: {answer}\n{ab_question} Reply A for yes or B for no."


class ScorerError(PersonaError):
    """A scorer that cannot be built or reached."""


def lexicon_score(text: str, markers) -> float:
    return float(min(100.0, 50.0 * len(markers_found(text, markers))))


def coherence_score(text: str) -> float:
    words = re.findall(r"\w+", text.lower())
    if not words:
        return 0.0
    if len(words) < 3:
        return 100.0
    bigrams = list(zip(words, words[1:]))
    return 100.0 * len(set(bigrams)) / len(bigrams)


def weighted_number_score(top_logprobs) -> float | None:
    """The judge's score from its top next-token log-probabilities [{token, logprob}, ...]: the
    probability-weighted mean of the tokens that are integers 0-100, or None when they hold less
    than MIN_NUMBER_MASS of the probability."""
    mass, total = 0.0, 0.0
    for entry in top_logprobs:
        token = str(entry["token"]).strip()
        if token.isdigit() and 0 <= int(token) <= 100:
            p = math.exp(float(entry["logprob"]))
            mass += p
            total += p * int(token)
    if mass < MIN_NUMBER_MASS:
        return None
    return total / mass


class OfflineScorer:
    """Marker lexicon and the model's own A/B answer; repetition-based coherence."""

    name = "offline"

    def describe(self) -> str:
        return ("offline: trait = mean of marker lexicon (50 per distinct marker, max 100) and the model's own "
                "A/B answer (100 p(A)/(p(A)+p(B))) where the trait has them; coherence = 100 x distinct word bigrams")

    def score(self, loaded, trait, questions, answers, batch_size: int = 16):
        trait_parts = []
        if trait.markers:
            trait_parts.append(np.array([lexicon_score(a, trait.markers) for a in answers]))
        if trait.ab_question:
            trait_parts.append(self._ab(loaded, trait, questions, answers, batch_size))
        trait_scores = np.mean(trait_parts, axis=0) if trait_parts else np.full(len(answers), np.nan)
        coherence = np.array([coherence_score(a) for a in answers])
        return trait_scores, coherence

    def _ab(self, loaded, trait, questions, answers, batch_size):
        from ...core.tracing import last_logprobs

        tok = loaded.tokenizer
        choices = [_single_token(tok, " A", "A"), _single_token(tok, " B", "B")]
        ids = [render(tok, [{"role": "user", "content": AB_TEMPLATE.format(
            question=q, answer=a, ab_question=trait.ab_question)}]) for q, a in zip(questions, answers)]
        out = np.zeros(len(ids))
        for rng in chunked(len(ids), batch_size):
            batch = left_pad([ids[k] for k in rng], loaded.pad_id)
            logp = last_logprobs(loaded, batch, choices).numpy()
            p = np.exp(logp - logp.max(-1, keepdims=True))
            out[list(rng)] = 100.0 * p[:, 0] / p.sum(-1)
        return out


def _single_token(tok, *candidates) -> int:
    for text in candidates:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if len(ids) == 1:
            return ids[0]
    raise ScorerError(f"the tokenizer has no single token for any of {list(candidates)}; the A/B scorer needs one")


class EndpointScorer:
    """An OpenAI-compatible chat-completions endpoint as judge (one request per answer)."""

    def __init__(self, url: str, model: str = "judge", timeout_s: float = 60.0):
        self.url = url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self.name = f"endpoint {self.url} model {model}"

    def describe(self) -> str:
        return (f"{self.name}: logprob-weighted mean of integer tokens 0-100 in the top 20, None below "
                f"{MIN_NUMBER_MASS} of the mass")

    def judge(self, prompt: str) -> float | None:
        body = {"model": self.model, "messages": [{"role": "user", "content": prompt}], "max_tokens": 1,
                "temperature": 0, "logprobs": True, "top_logprobs": 20, "seed": 0}
        headers = {"Content-Type": "application/json"}
        if os.environ.get("OPENAI_API_KEY"):
            headers["Authorization"] = f"Bearer {os.environ['OPENAI_API_KEY']}"
        request = urllib.request.Request(f"{self.url}/chat/completions", data=json.dumps(body).encode(),
                                         headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                reply = json.loads(response.read())
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ScorerError(f"judge endpoint {self.url} failed: {getattr(exc, 'reason', exc)}") from None
        try:
            content = reply["choices"][0]["logprobs"]["content"]
        except (KeyError, IndexError, TypeError):
            raise ScorerError(f"judge endpoint {self.url} returned no logprobs (choices[0].logprobs.content)") from None
        if not content:
            return None
        return weighted_number_score(content[0].get("top_logprobs") or [])

    def score(self, loaded, trait, questions, answers, batch_size: int = 16):
        if not trait.eval_prompt:
            raise ScorerError(f"trait {trait.name!r} has no 'eval_prompt'; an endpoint scorer needs one")
        nan = lambda v: np.nan if v is None else v
        trait_scores = np.array([nan(self.judge(trait.eval_prompt.format(question=q, answer=a)))
                                 for q, a in zip(questions, answers)], dtype=float)
        coherence = np.array([nan(self.judge(COHERENCE_PROMPT.format(question=q, answer=a)))
                              for q, a in zip(questions, answers)], dtype=float)
        return trait_scores, coherence


def make_scorer(spec: str = "offline", model: str = "judge"):
    if spec == "offline":
        return OfflineScorer()
    if spec == "evidence":
        from .trait_evidence import EvidenceScorer

        return EvidenceScorer()
    if spec.startswith(("http://", "https://")):
        return EndpointScorer(spec, model=model)
    raise ScorerError(f"unknown scorer {spec!r}; allowed: 'offline', 'evidence' or an http(s):// URL of an "
                      "OpenAI-compatible endpoint")


def thresholds(scorer, threshold: float | None) -> tuple[float, float]:
    """(trait threshold, coherence threshold) of extraction's filter: a 0-100 scorer uses
    `threshold` (default 50) for both, as the original; the evidence scorer its own units' default
    (0 nats/token) for the trait and its coherence threshold (50)."""
    default = getattr(scorer, "default_threshold", 50.0)
    trait = default if threshold is None else float(threshold)
    return trait, getattr(scorer, "coherence_threshold", trait)
