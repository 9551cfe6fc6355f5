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

Elicitation variants (`spec.elicitation`, traits.VARIANTS): the prompts of each side are built
from the instruction pairs (the default), a third-person character description, 2-shot example
dialogue, or all three. Several variants in one run add an `elicitation` dim to the per-trait
variables (the samples of all variants lie along `sample`, labelled by `sample_elicitation`) and
the cosine between the variants' vectors per layer (`elicitation_cos`, elicitation.py).

Resuming: answers are generated variant by variant in a fixed batch plan; then each (variant,
trait) is scored and its residual means and vector computed. After every generated batch and
every finished trait the partial result can be checkpointed (answers' token ids, scores, and
the finished traits' vectors, with `generated` per sample and an empty `outcome` for traits not
yet done); run again on it (`previous`), only the missing batches and traits are computed, in
the same batches, so the result equals an uninterrupted run's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import numpy as np
import xarray as xr

from ...core.batching import length_ordered
from ...core.errors import SelectionError
from ...storage.provenance import provenance_attrs
from ...core.stopping import stoppable
from .chat import render, system_text, user_text
from .elicitation import variant_cosines
from .passes import TOKEN_SETS, check_layers, generate_answers, token_set_means
from . import trait_evidence
from .scorers import make_scorer, thresholds
from .traits import VARIANTS, Trait, trait_from_spec

SIDES = ("pos", "neg")
SHUFFLE_SEEDS = (0, 1, 2)
KEEP = ("filter", "all")


@dataclass(frozen=True)
class ExtractSpec:
    traits: tuple[str, ...]
    layers: tuple[int, ...]
    token_sets: tuple[str, ...] = TOKEN_SETS
    n_tokens: int = 32
    threshold: float | None = None  # None: the scorer's default (50 for 0-100 scorers, 0 nats/token for evidence)
    scorer: str = "offline"
    judge_model: str = "judge"
    n_questions: int = 0  # 0: every extraction question of the trait file
    batch_size: int = 16
    keep: str = "filter"  # "filter": the judge's filter; "all": every pair (the instruction's direction, expressed or not)
    checkpoint: str = ""  # label of the checkpoint dim (default: the model's revision)
    step: int = -1  # training step of the checkpoint (-1: unknown)
    elicitation: tuple[str, ...] = ("instruction",)  # traits.VARIANTS; several add an `elicitation` dim
    trait_definitions: tuple = field(default=(), compare=False)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["trait_definitions"] = [dict(t) for t in self.trait_definitions]
        return d


def check_spec(spec: ExtractSpec, n_layers: int, traits: list[Trait] | None = None) -> None:
    """The spec's checks that need no weights; `traits` (default: the spec's trait definitions)
    must hold the material each elicitation variant needs."""
    bad = [v for v in spec.elicitation if v not in VARIANTS]
    if bad or not spec.elicitation:
        raise SelectionError(f"unknown elicitation variant(s) {bad or list(spec.elicitation)}; allowed: {list(VARIANTS)}")
    if len(set(spec.elicitation)) != len(spec.elicitation):
        raise SelectionError(f"elicitation variants {list(spec.elicitation)} name one twice; give each once")
    for trait in traits if traits is not None else [trait_from_spec(d) for d in spec.trait_definitions]:
        for variant in spec.elicitation:
            trait.check_variant(variant)
    bad = [t for t in spec.token_sets if t not in TOKEN_SETS]
    if bad or not spec.token_sets:
        raise SelectionError(f"unknown token set(s) {bad or list(spec.token_sets)}; allowed: {list(TOKEN_SETS)}")
    check_layers(spec.layers, n_layers)
    if spec.keep not in KEEP:
        raise SelectionError(f"unknown --keep {spec.keep!r}; allowed: {list(KEEP)}")
    if spec.threshold is not None and spec.scorer != "evidence" and not 0 <= spec.threshold <= 100:
        raise SelectionError(f"threshold {spec.threshold} must lie in 0..100 (the {spec.scorer!r} scorer's scale)")
    if spec.threshold is not None and not np.isfinite(spec.threshold):
        raise SelectionError(f"threshold {spec.threshold} must be a finite number")


def samples_of(traits: list[Trait], n_questions: int, variants=("instruction",)) -> list[dict]:
    """Every (variant, trait, pair, question, side) of an extraction, in a fixed order."""
    rows = []
    for variant in variants:
        for trait in traits:
            questions = trait.extract_questions[: n_questions or None]
            for pair in range(trait.n_pairs(variant)):
                for qi, question in enumerate(questions):
                    for side in SIDES:
                        rows.append({"variant": variant, "trait": trait, "pair": pair, "question_index": qi,
                                     "side": side, "question": question,
                                     "messages": trait.messages(side, pair, question, variant)})
    return rows


class _State:
    """What an extraction has computed so far: per sample the answer, its scores and whether it
    was kept; per (variant, trait) its vector, label-shuffled controls and residual norm."""

    def __init__(self, rows):
        n = len(rows)
        self.answers: list[list[int] | None] = [None] * n
        self.generated = np.zeros(n, dtype=bool)
        self.trait_score = np.full(n, np.nan)
        self.coherence = np.full(n, np.nan)
        self.kept = np.zeros(n, dtype=bool)
        self.evidence = trait_evidence.empty(n)  # the evidence scorer's arrays (stay NaN under other scorers)
        self.units: dict[tuple[str, str], tuple] = {}  # (variant, trait) -> (vector, shuffled, resid_norm)

    def restore(self, previous: xr.Dataset, rows, variants, names) -> None:
        """Take what an unfinished result of the same computation holds."""
        one = previous.isel(model=0, checkpoint=0)
        users = [user_text(r["messages"]) for r in rows]
        if one.sizes.get("sample") != len(rows) or one.user.values.tolist() != users:
            raise SelectionError("the unfinished result to resume holds other samples than this run; "
                                 "run with --overwrite to start over")
        ids = one.answer_ids.values
        self.generated[:] = one.generated.values.astype(bool) if "generated" in one else True
        self.answers = [[int(t) for t in ids[i] if t >= 0] if self.generated[i] else None for i in range(len(rows))]
        self.trait_score[:] = one.trait_score.values
        self.coherence[:] = one.coherence.values
        self.kept[:] = one.kept.values.astype(bool)
        for name in self.evidence:
            if name in one:
                self.evidence[name][:] = one[name].values
        for variant in variants:
            at = one.sel(elicitation=variant) if "elicitation" in one.dims else one
            for name in names:
                unit = at.sel(trait=name)
                if str(unit.outcome.values):
                    self.units[(variant, name)] = (unit.vector.values, unit.shuffled.values, unit.resid_norm.values)


def run(loaded, traits: list[Trait], spec: ExtractSpec, progress: bool = True, previous=None, checkpoint=None,
        scorer=None) -> xr.Dataset:
    """Extract; on Ctrl-C returns what was done (completed=0). `previous`: an unfinished result of
    the same spec, whose generated batches and finished traits are kept; `checkpoint(make)`:
    called after every generated batch and every finished trait."""
    check_spec(spec, loaded.n_layers, traits)
    scorer = scorer or make_scorer(spec.scorer, spec.judge_model)
    rows = samples_of(traits, spec.n_questions, spec.elicitation)
    prompts = [render(loaded.tokenizer, r["messages"]) for r in rows]
    state = _State(rows)
    if previous is not None:
        state.restore(previous, rows, spec.elicitation, [t.name for t in traits])
    layers = list(spec.layers)
    sets = [TOKEN_SETS.index(t) for t in spec.token_sets]
    partial = lambda: _dataset(loaded, traits, spec, rows, state, scorer, completed=False)
    save = (lambda: checkpoint(partial)) if checkpoint is not None else (lambda: None)

    def answered(idx, answers):
        for i, a in zip(idx, answers):
            state.answers[i], state.generated[i] = a, True
        save()

    with stoppable() as stop:
        for variant in spec.elicitation:
            mine = [i for i, r in enumerate(rows) if r["variant"] == variant]
            order = length_ordered(mine, lambda i: len(prompts[i]))
            desc = "extract: answers" + (f" ({variant})" if len(spec.elicitation) > 1 else "")
            generate_answers(loaded, prompts, spec.n_tokens, spec.batch_size, progress=progress, desc=desc,
                             order=order, done=state.generated, on_batch=answered)
            for trait in traits:
                if (variant, trait.name) not in state.units:
                    _extract_trait(loaded, trait, [i for i in mine if rows[i]["trait"] is trait], rows, prompts,
                                   state, spec, scorer, layers, sets, variant, progress)
                    save()
    return stop.mark(_dataset(loaded, traits, spec, rows, state, scorer, completed=stop.finished))


def _extract_trait(loaded, trait, idx, rows, prompts, state, spec, scorer, layers, sets, variant, progress) -> None:
    """Score one (variant, trait)'s answers, filter its pairs, and take its difference of means."""
    if getattr(scorer, "needs_ids", False):  # evidence: each answer under its own pair's prompts
        items = [(rows[i]["pair"], rows[i]["question"], variant) for i in idx]
        t, c, got = scorer.score_items(loaded, trait, items, [state.answers[i] for i in idx], spec.batch_size)
        for name in state.evidence:
            state.evidence[name][idx] = got[name]
    else:
        texts = [loaded.tokenizer.decode(state.answers[i], skip_special_tokens=True) for i in idx]
        t, c = scorer.score(loaded, trait, [rows[i]["question"] for i in idx], texts, spec.batch_size)
    kept = keep_pairs([rows[i] for i in idx], np.asarray(t, dtype=float), np.asarray(c, dtype=float),
                      *thresholds(scorer, spec.threshold))
    if spec.keep == "all":
        kept[:] = True
    desc = f"extract: residuals ({trait.name}{', ' + variant if len(spec.elicitation) > 1 else ''})"
    means, norms = token_set_means(loaded, [prompts[i] for i in idx], [state.answers[i] for i in idx], layers,
                                   spec.batch_size, progress=progress, desc=desc)
    means = means[:, sets]
    side = np.array([rows[i]["side"] for i in idx], dtype=object)
    vector = difference_of_means(means, side, kept)
    shuffled = np.stack([shuffled_difference(means, side, kept, seed) if kept.any()
                         else np.full(means.shape[1:], np.nan, dtype=np.float32) for seed in SHUFFLE_SEEDS])
    answered = np.isfinite(norms).all(1)
    resid_norm = norms[answered].mean(0) if answered.any() else np.full(len(layers), np.nan, dtype=np.float32)
    state.trait_score[idx], state.coherence[idx], state.kept[idx] = t, c, kept
    state.units[(variant, trait.name)] = (vector, shuffled, resid_norm.astype(np.float32))


def keep_pairs(rows, trait_score, coherence, threshold, coherence_threshold=None) -> np.ndarray:
    """Per sample: whether its (pos, neg) row pair passes the filter (both sides get the verdict):
    pos trait score >= threshold > neg's, both coherences >= coherence_threshold (default: the
    same threshold, as the original's 0-100 judge)."""
    coherence_threshold = threshold if coherence_threshold is None else coherence_threshold
    kept = np.zeros(len(rows), dtype=bool)
    index = {(r["trait"].name, r["pair"], r["question_index"], r["side"]): i for i, r in enumerate(rows)}
    for (name, pair, q, side), i in index.items():
        if side != "pos":
            continue
        j = index[(name, pair, q, "neg")]
        ok = (trait_score[i] >= threshold and trait_score[j] < threshold
              and coherence[i] >= coherence_threshold and coherence[j] >= coherence_threshold)
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


def _dataset(loaded, traits, spec, rows, state, scorer, completed: bool) -> xr.Dataset:
    names = [t.name for t in traits]
    variants = list(spec.elicitation)
    threshold, coherence_threshold = thresholds(scorer, spec.threshold)
    side = np.array([r["side"] for r in rows], dtype=object)
    trait_of = np.array([r["trait"].name for r in rows], dtype=object)
    variant_of = np.array([r["variant"] for r in rows], dtype=object)
    n_sets, n_layers, hidden = len(spec.token_sets), len(spec.layers), loaded.hidden_size
    shape = (len(variants), len(names))
    vector = np.full(shape + (n_sets, n_layers, hidden), np.nan, dtype=np.float32)
    shuffled = np.full(shape + (len(SHUFFLE_SEEDS), n_sets, n_layers, hidden), np.nan, dtype=np.float32)
    resid_norm = np.full(shape + (n_layers,), np.nan, dtype=np.float32)
    n_kept = np.zeros(shape, dtype=np.int64)
    n_pairs = np.zeros(shape, dtype=np.int64)
    rates = np.full(shape + (3,), np.nan)
    outcome = np.full(shape, "", dtype=object)
    for e, variant in enumerate(variants):
        for k, name in enumerate(names):
            mine = (trait_of == name) & (variant_of == variant)
            n_pairs[e, k] = int((mine & (side == "pos")).sum())
            if (variant, name) not in state.units:
                continue  # not computed yet (an unfinished run): outcome ""
            vector[e, k], shuffled[e, k], resid_norm[e, k] = state.units[(variant, name)]
            s, kp = side[mine], state.kept[mine]
            n_kept[e, k] = int((kp & (s == "pos")).sum())
            ts, cs = state.trait_score[mine], state.coherence[mine]
            with np.errstate(invalid="ignore"):
                rates[e, k] = [np.mean(ts[s == "pos"] >= threshold), np.mean(ts[s == "neg"] < threshold),
                               np.mean(cs >= coherence_threshold)]
            outcome[e, k] = "extracted" if n_kept[e, k] else "nonextractable"
    answers = [a if a is not None else [] for a in state.answers]
    texts = [loaded.tokenizer.decode(a, skip_special_tokens=True) for a in answers]
    width = max([len(a) for a in answers] + [1])
    ids = np.full((len(rows), width), -1, dtype=np.int64)
    for i, a in enumerate(answers):
        ids[i, : len(a)] = a
    label = spec.checkpoint or loaded.revision
    head = ("model", "checkpoint", "elicitation", "trait")
    vdims = head + ("token_set", "layer", "hidden")
    sdims = ("model", "checkpoint", "sample")
    ds = xr.Dataset(
        {
            "vector": (vdims, vector[None, None]),
            "norm": (vdims[:-1], np.linalg.norm(vector, axis=-1)[None, None]),
            "shuffled": (head + ("seed",) + vdims[4:], shuffled[None, None]),
            "resid_norm": (head + ("layer",), resid_norm[None, None]),
            "n_kept": (head, n_kept[None, None]),
            "n_pairs": (head, n_pairs[None, None]),
            "pass_rate": (head + ("criterion",), rates[None, None]),
            "outcome": (head, outcome[None, None]),
            "answer": (sdims, np.array(texts, dtype=object)[None, None]),
            "answer_ids": (sdims + ("answer_token",), ids[None, None]),
            "trait_score": (sdims, state.trait_score[None, None]),
            "coherence": (sdims, state.coherence[None, None]),
            "kept": (sdims, state.kept.astype(np.int8)[None, None]),
            "generated": (sdims, state.generated.astype(np.int8)[None, None]),
        },
        coords={
            "model": [loaded.model_id],
            "checkpoint": [label],
            "step": ("checkpoint", [spec.step]),
            "elicitation": variants,
            "trait": names,
            "token_set": list(spec.token_sets),
            "layer": list(spec.layers),
            "seed": list(SHUFFLE_SEEDS),
            "criterion": ["pos_trait_pass", "neg_trait_pass", "coherence_pass"],
            "sample_elicitation": ("sample", variant_of),
            "sample_trait": ("sample", trait_of),
            "side": ("sample", side),
            "pair": ("sample", [r["pair"] for r in rows]),
            "question_index": ("sample", [r["question_index"] for r in rows]),
            "system": ("sample", np.array([system_text(r["messages"]) for r in rows], dtype=object)),
            "user": ("sample", np.array([user_text(r["messages"]) for r in rows], dtype=object)),
            "messages": ("sample", np.array([json.dumps(r["messages"]) for r in rows], dtype=object)),
        },
        attrs=provenance_attrs(loaded, "vectors-extract", spec.to_dict()),
    )
    if getattr(scorer, "needs_ids", False):
        _add_evidence(ds, state.evidence)
    if len(variants) > 1:
        ds = ds.merge(variant_cosines(ds))
    else:
        ds = ds.isel(elicitation=0, drop=True)
    ds.attrs.update(token_sets=", ".join(spec.token_sets), threshold=threshold, coherence_threshold=coherence_threshold,
                    scorer=scorer.describe(),
                    checkpoint_revision=loaded.revision, elicitation=", ".join(variants), completed=int(completed))
    ds["vector"].attrs.update(long_name="persona vector: mean(kept pos) - mean(kept neg)",
                              layer_convention="L = hidden_states[L]; 0 = embeddings")
    ds["norm"].attrs.update(long_name="L2 norm of the persona vector")
    ds["shuffled"].attrs.update(long_name="label-shuffled control: the kept samples' pos/neg labels permuted")
    ds["resid_norm"].attrs.update(long_name="mean L2 norm of the residual over answer tokens (all samples)")
    ds["outcome"].attrs.update(long_name="extracted, nonextractable, or '' (not computed yet: an unfinished run)")
    ds["kept"].attrs.update(long_name="1 where the sample's (pos, neg) pair passed the filter")
    ds["answer_ids"].attrs.update(long_name="greedy answer token ids, -1 padded")
    ds["generated"].attrs.update(long_name="1 where the answer was generated (0: an unfinished run stopped before)")
    ds["messages"].attrs.update(long_name="the prompt's chat messages (JSON), rendered with the model's chat template")
    return ds


def _add_evidence(ds: xr.Dataset, evidence: dict) -> None:
    """The evidence scorer's per-sample arrays (trait_evidence.py): over (sample, reference) and sample."""
    ds.coords["reference"] = list(trait_evidence.REFERENCES)
    for name, values in evidence.items():
        dims = ("model", "checkpoint", "sample") + (("reference",) if values.ndim == 2 else ())
        ds[name] = (dims, values[None, None])
        ds[name].attrs.update(trait_evidence.attrs(name))
    ds["trait_score"].attrs.update(long_name="evidence against the negative side (the filter's trait score)",
                                   units="nats/token")
    ds["coherence"].attrs.update(long_name="100 x fraction of distinct token 3-grams")


def summary_lines(ds: xr.Dataset) -> list[str]:
    """One line per (variant, trait): outcome, pairs kept, pass rates."""
    lines = []
    variants = ds.elicitation.values.tolist() if "elicitation" in ds.dims else [None]
    width = max(12, *(len(f"{t} ({v})") if v else len(t) for t in ds.trait.values.tolist() for v in variants))
    for variant in variants:
        at = ds.sel(elicitation=variant) if variant is not None else ds
        for name in ds.trait.values.tolist():
            sel = at.sel(trait=name).isel(model=0, checkpoint=0)
            rates = ", ".join(f"{c} {float(r):.2f}" for c, r in zip(ds.criterion.values, sel.pass_rate.values))
            label = f"{name} ({variant})" if variant is not None else name
            lines.append(f"{label:{width}s} {str(sel.outcome.values):15s} pairs kept {int(sel.n_kept)}/{int(sel.n_pairs)} "
                         f"({rates})")
    return lines
