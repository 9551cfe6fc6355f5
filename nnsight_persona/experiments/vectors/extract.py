"""extract: persona vectors as differences of means (Chen et al. 2025).

For each trait, each instruction pair and each extraction question, a greedy answer on the
positive and on the negative side; the scorer rates both for the trait and for coherence; a
(pos, neg) row pair is kept when pos >= threshold, neg < threshold and both coherences >=
threshold. One forward pass over prompt + answer gives each sample's mean residuals
(``passes.TOKEN_SETS``) at every layer; the vector is mean(kept pos) - mean(kept neg), per
token set and layer. Layer L = hidden_states[L] (0 = embeddings; n_layers = the last block's raw
output). When no pair passes, the trait's outcome is ``nonextractable`` (vector NaN) with its
pass rates, not an error.

Differences from the original, all recorded in the dataset: one greedy answer per (pair,
question) instead of 10 samples, max `n_tokens` tokens, no repetition penalty (pure greedy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from ...errors import SelectionError
from ...provenance import provenance_attrs
from .chat import render, system_text, user_text
from .passes import TOKEN_SETS, check_layers, generate_answers, token_set_means
from .scorers import make_scorer
from .traits import Trait

SIDES = ("pos", "neg")
SHUFFLE_SEEDS = (0, 1, 2)
KEEP = ("filter", "all")


@dataclass(frozen=True)
class ExtractSpec:
    traits: tuple[str, ...]
    layers: tuple[int, ...]
    token_sets: tuple[str, ...] = TOKEN_SETS
    n_tokens: int = 32
    threshold: float = 50.0
    scorer: str = "offline"
    judge_model: str = "judge"
    n_questions: int = 0  # 0: every extraction question of the trait file
    batch_size: int = 16
    keep: str = "filter"  # "filter": the judge's filter; "all": every pair (the instruction's direction, expressed or not)
    checkpoint: str = ""  # label of the checkpoint dim (default: the model's revision)
    step: int = -1  # training step of the checkpoint (-1: unknown)
    trait_definitions: tuple = field(default=(), compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trait_definitions"] = [dict(t) for t in self.trait_definitions]
        return d


def check_spec(spec: ExtractSpec, n_layers: int) -> None:
    bad = [t for t in spec.token_sets if t not in TOKEN_SETS]
    if bad or not spec.token_sets:
        raise SelectionError(f"unknown token set(s) {bad or list(spec.token_sets)}; allowed: {list(TOKEN_SETS)}")
    check_layers(spec.layers, n_layers)
    if spec.keep not in KEEP:
        raise SelectionError(f"unknown --keep {spec.keep!r}; allowed: {list(KEEP)}")
    if not 0 <= spec.threshold <= 100:
        raise SelectionError(f"threshold {spec.threshold} must lie in 0..100")


def samples_of(traits: list[Trait], n_questions: int) -> list[dict]:
    """Every (trait, pair, side, question) of an extraction, in a fixed order."""
    rows = []
    for trait in traits:
        questions = trait.extract_questions[: n_questions or None]
        for pair in range(len(trait.pairs)):
            for qi, question in enumerate(questions):
                for side in SIDES:
                    rows.append({"trait": trait, "pair": pair, "question_index": qi, "side": side,
                                 "messages": trait.messages(side, pair, question), "question": question})
    return rows


def run(loaded, traits: list[Trait], spec: ExtractSpec, progress: bool = True, previous=None, checkpoint=None,
        scorer=None) -> xr.Dataset:
    check_spec(spec, loaded.n_layers)
    scorer = scorer or make_scorer(spec.scorer, spec.judge_model)
    rows = samples_of(traits, spec.n_questions)
    prompts = [render(loaded.tokenizer, r["messages"]) for r in rows]
    answers = generate_answers(loaded, prompts, spec.n_tokens, spec.batch_size, progress=progress, desc="extract: answers")
    texts = [loaded.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    trait_score = np.full(len(rows), np.nan)
    coherence = np.full(len(rows), np.nan)
    for trait in traits:
        idx = [i for i, r in enumerate(rows) if r["trait"] is trait]
        t, c = scorer.score(loaded, trait, [rows[i]["question"] for i in idx], [texts[i] for i in idx], spec.batch_size)
        trait_score[idx], coherence[idx] = t, c
    kept = keep_pairs(rows, trait_score, coherence, spec.threshold)
    if spec.keep == "all":
        kept[:] = True
    layers = list(spec.layers)
    means, norms = token_set_means(loaded, prompts, answers, layers, spec.batch_size, progress=progress,
                                   desc="extract: residuals")
    sets = [TOKEN_SETS.index(t) for t in spec.token_sets]
    means = means[:, sets]
    return _dataset(loaded, traits, spec, rows, texts, answers, trait_score, coherence, kept, means, norms, scorer)


def keep_pairs(rows, trait_score, coherence, threshold) -> np.ndarray:
    """Per sample: whether its (pos, neg) row pair passes the filter (both sides get the verdict)."""
    kept = np.zeros(len(rows), dtype=bool)
    index = {(r["trait"].name, r["pair"], r["question_index"], r["side"]): i for i, r in enumerate(rows)}
    for (name, pair, q, side), i in index.items():
        if side != "pos":
            continue
        j = index[(name, pair, q, "neg")]
        ok = (trait_score[i] >= threshold and trait_score[j] < threshold
              and coherence[i] >= threshold and coherence[j] >= threshold)
        kept[i] = kept[j] = bool(ok)  # NaN scores compare False: a None judgement drops the pair
    return kept


def difference_of_means(means: np.ndarray, side: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """mean over kept positive samples - mean over kept negative samples (axis 0), NaN if none."""
    pos, neg = means[kept & (side == "pos")], means[kept & (side == "neg")]
    if not len(pos) or not len(neg):
        return np.full(means.shape[1:], np.nan, dtype=np.float32)
    return (pos.astype(np.float64).mean(0) - neg.astype(np.float64).mean(0)).astype(np.float32)


def shuffled_difference(means: np.ndarray, side: np.ndarray, kept: np.ndarray, seed: int) -> np.ndarray:
    """The label-shuffled control: the kept samples' pos/neg labels permuted (numpy seed `seed`)."""
    idx = np.flatnonzero(kept)
    labels = np.random.default_rng(seed).permutation(side[idx])
    fake = np.array(side, dtype=object)
    fake[idx] = labels
    return difference_of_means(means, fake, kept)


def _dataset(loaded, traits, spec, rows, texts, answers, trait_score, coherence, kept, means, norms, scorer):
    names = [t.name for t in traits]
    side = np.array([r["side"] for r in rows], dtype=object)
    trait_of = np.array([r["trait"].name for r in rows], dtype=object)
    n_sets, n_layers, hidden = means.shape[1], means.shape[2], means.shape[3]
    vector = np.full((len(names), n_sets, n_layers, hidden), np.nan, dtype=np.float32)
    shuffled = np.full((len(names), len(SHUFFLE_SEEDS), n_sets, n_layers, hidden), np.nan, dtype=np.float32)
    resid_norm = np.full((len(names), n_layers), np.nan, dtype=np.float32)
    n_kept = np.zeros(len(names), dtype=np.int64)
    n_pairs = np.zeros(len(names), dtype=np.int64)
    rates = np.zeros((len(names), 3))
    outcome = np.empty(len(names), dtype=object)
    for k, name in enumerate(names):
        mine = trait_of == name
        m, s, kp = means[mine], side[mine], kept[mine]
        vector[k] = difference_of_means(m, s, kp)
        for j, seed in enumerate(SHUFFLE_SEEDS):
            shuffled[k, j] = shuffled_difference(m, s, kp, seed) if kp.any() else np.nan
        answered = mine & np.isfinite(norms).all(1)
        resid_norm[k] = norms[answered].mean(0) if answered.any() else np.nan
        n_pairs[k] = int((mine & (side == "pos")).sum())
        n_kept[k] = int((kp & (s == "pos")).sum())
        ts, cs = trait_score[mine], coherence[mine]
        with np.errstate(invalid="ignore"):
            rates[k] = [np.mean(ts[s == "pos"] >= spec.threshold), np.mean(ts[s == "neg"] < spec.threshold),
                        np.mean(cs >= spec.threshold)]
        outcome[k] = "extracted" if n_kept[k] else "nonextractable"
    width = max([len(a) for a in answers] + [1])
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = a
    label = spec.checkpoint or loaded.revision
    vdims = ("model", "checkpoint", "trait", "token_set", "layer", "hidden")
    sdims = ("model", "checkpoint", "sample")
    ds = xr.Dataset(
        {
            "vector": (vdims, vector[None, None]),
            "norm": (vdims[:-1], np.linalg.norm(vector, axis=-1)[None, None]),
            "shuffled": (vdims[:3] + ("seed",) + vdims[3:], shuffled[None, None]),
            "resid_norm": (("model", "checkpoint", "trait", "layer"), resid_norm[None, None]),
            "n_kept": (("model", "checkpoint", "trait"), n_kept[None, None]),
            "n_pairs": (("model", "checkpoint", "trait"), n_pairs[None, None]),
            "pass_rate": (("model", "checkpoint", "trait", "criterion"), rates[None, None]),
            "outcome": (("model", "checkpoint", "trait"), outcome[None, None]),
            "answer": (sdims, np.array(texts, dtype=object)[None, None]),
            "answer_ids": (sdims + ("answer_token",), ids[None, None]),
            "trait_score": (sdims, trait_score[None, None]),
            "coherence": (sdims, coherence[None, None]),
            "kept": (sdims, kept.astype(np.int8)[None, None]),
        },
        coords={
            "model": [loaded.model_id],
            "checkpoint": [label],
            "step": ("checkpoint", [spec.step]),
            "trait": names,
            "token_set": list(spec.token_sets),
            "layer": list(spec.layers),
            "seed": list(SHUFFLE_SEEDS),
            "criterion": ["pos_trait_pass", "neg_trait_pass", "coherence_pass"],
            "sample_trait": ("sample", trait_of),
            "side": ("sample", side),
            "pair": ("sample", [r["pair"] for r in rows]),
            "question_index": ("sample", [r["question_index"] for r in rows]),
            "system": ("sample", np.array([system_text(r["messages"]) for r in rows], dtype=object)),
            "user": ("sample", np.array([user_text(r["messages"]) for r in rows], dtype=object)),
        },
        attrs=provenance_attrs(loaded, "vectors-extract", spec.to_dict()),
    )
    ds.attrs.update(token_sets=", ".join(spec.token_sets), threshold=spec.threshold, scorer=scorer.describe(),
                    checkpoint_revision=loaded.revision, completed=1)
    ds["vector"].attrs.update(long_name="persona vector: mean(kept pos) - mean(kept neg)",
                              layer_convention="L = hidden_states[L]; 0 = embeddings")
    ds["norm"].attrs.update(long_name="L2 norm of the persona vector")
    ds["shuffled"].attrs.update(long_name="label-shuffled control: the kept samples' pos/neg labels permuted")
    ds["resid_norm"].attrs.update(long_name="mean L2 norm of the residual over answer tokens (all samples)")
    ds["kept"].attrs.update(long_name="1 where the sample's (pos, neg) pair passed the filter")
    ds["answer_ids"].attrs.update(long_name="greedy answer token ids, -1 padded")
    return ds
