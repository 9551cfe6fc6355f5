"""`evidence`: how much a persona prompt explains an answer, by likelihood, with no judge.

For an answer a (token ids, generated under any edit or none) and a prompt pair (the prompt with
the persona, a reference prompt without it), teacher-forced on the UNEDITED model:

    evidence(a) = 1/|a| * sum_t [ log p(a_t | persona prompt, a_<t) - log p(a_t | reference prompt, a_<t) ]

in nats per answer token: the pointwise mutual information between the persona text and the
answer given the rest of the prompt, per token. Positive: the persona prompt explains the answer
better than the reference does. The answer is the generated tokens up to (not including) the
first end-of-turn token, as `decode_answer` cuts the text (`answer_ids`).

Beside it, recorded per answer:
- `evidence_sum`: the sum over answer tokens (nats), and `answer_length` (tokens);
- `reference_logp`: the answer's mean log-likelihood under the reference prompt (nats/token);
- `coherence`: the fraction of the answer's token 3-grams that are distinct (1: no 3-gram
  repeats; "aye, aye, aye, ..." ~0.03). A repetition loop is highly likely once it has started,
  so its evidence and its likelihood can both be high: likelihood does not flag degenerate text,
  repetition does. Answers of fewer than 3 tokens have coherence 1 (nothing can repeat) and
  empty answers NaN.
Where one number is needed, `evidence_coherent` = evidence, except that an answer with coherence
below COHERENCE_MIN (0.5: more than half of its 3-grams repeat) keeps no positive evidence:
min(evidence, 0). Degeneracy can take evidence away, never add it.

Batching: each answer makes two rows (persona prompt + answer, reference prompt + answer) of one
batch, prompts left-padded so that every prompt's last token sits in one column and answers
right-padded after it (`split_batch`). Only the columns from there on are unembedded. Locally,
each distinct prompt (a cell's XY prompt serves all four markers conditions) runs once and the
rows run only their answers on its KV cache (`tracing.prefix_cache`); remote runs send whole
sequences (`logits_to_keep`). The reduction runs inside the trace: only [2, answers] sums leave
it, never logits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from .batching import Batch
from .errors import SelectionError
from .tracing import retried

COHERENCE_N = 3
COHERENCE_MIN = 0.5
# Logit floats one forward pass may hold (rows x kept columns x vocab); 2**26 floats = 256 MiB.
LOGIT_BUDGET = 2 ** 26

VARIABLES = ("evidence", "evidence_sum", "answer_length", "reference_logp", "coherence", "evidence_coherent")
ATTRS = {
    "evidence": dict(long_name="evidence: mean over answer tokens of log p(persona prompt) - log p(reference prompt), "
                               "teacher-forced on the unedited model", units="nats/token"),
    "evidence_sum": dict(long_name="evidence summed over the answer tokens", units="nats"),
    "answer_length": dict(long_name="answer tokens scored (up to the first end of turn)", units="tokens"),
    "reference_logp": dict(long_name="mean log-likelihood of the answer under the reference prompt", units="nats/token"),
    "coherence": dict(long_name=f"fraction of distinct token {COHERENCE_N}-grams in the answer", units="1"),
    "evidence_coherent": dict(long_name=f"evidence, positive part dropped where coherence < {COHERENCE_MIN}",
                              units="nats/token"),
}


@dataclass(frozen=True)
class Evidence:
    """Per-answer scores, each [answers] (see the module doc)."""

    evidence: np.ndarray
    evidence_sum: np.ndarray
    answer_length: np.ndarray
    reference_logp: np.ndarray
    coherence: np.ndarray
    evidence_coherent: np.ndarray

    def as_dict(self) -> dict[str, np.ndarray]:
        return {name: getattr(self, name) for name in VARIABLES}


def answer_ids(tokens: Sequence[int], eos_ids) -> list[int]:
    """The answer of raw greedy tokens: everything before the first end-of-turn token."""
    out = []
    for token in tokens:
        if int(token) in eos_ids:
            break
        out.append(int(token))
    return out


def coherence(ids: Sequence[int], n: int = COHERENCE_N) -> float:
    """Distinct n-grams / n-grams of one answer's token ids; 1 under n tokens, NaN if empty."""
    if len(ids) == 0:
        return float("nan")
    if len(ids) < n:
        return 1.0
    grams = [tuple(ids[i : i + n]) for i in range(len(ids) - n + 1)]
    return len(set(grams)) / len(grams)


def combined(evidence: np.ndarray, coherence_: np.ndarray) -> np.ndarray:
    """evidence_coherent: evidence, with no positive part where coherence < COHERENCE_MIN."""
    evidence = np.asarray(evidence, dtype=float)
    return np.where(np.asarray(coherence_) < COHERENCE_MIN, np.minimum(evidence, 0.0), evidence)


def score_answers(
    loaded, persona_prompts: Sequence[Sequence[int]], reference_prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]], batch_size: int = 16, progress: bool = False, desc: str = "evidence",
) -> Evidence:
    """Evidence of each answer (token ids, no end-of-turn) for its prompt pair (token ids of the
    rendered prompts, ending where the answer starts), on `loaded` as it is: pass the unedited
    model. `batch_size` answers per forward pass at most (two rows each), fewer where their
    logits would pass LOGIT_BUDGET floats."""
    from .progress import tqdm

    n = len(answers)
    if not len(persona_prompts) == len(reference_prompts) == n:
        raise SelectionError(
            f"evidence needs one persona prompt and one reference prompt per answer; got {len(persona_prompts)} "
            f"persona prompts, {len(reference_prompts)} reference prompts, {n} answers"
        )
    empty = [i for i in range(n) if not len(persona_prompts[i]) or not len(reference_prompts[i])]
    if empty:
        raise SelectionError(f"evidence needs non-empty prompts (the answer is scored from the prompt's last token); "
                             f"answer(s) {empty[:5]} have an empty prompt")
    lengths = np.array([len(a) for a in answers], dtype=np.int64)
    sums = np.full(n, np.nan)
    ref_sums = np.full(n, np.nan)
    # Answers to one prompt pair together (they share its prompt runs), similar prompt lengths together.
    todo = sorted((i for i in range(n) if lengths[i] > 0),
                  key=lambda i: (len(persona_prompts[i]), tuple(persona_prompts[i]), tuple(reference_prompts[i]), i))
    vocab = _vocab_size(loaded)
    groups = list(_groups(todo, lengths, vocab, batch_size))
    for group in tqdm(groups, desc=desc, disable=not progress):
        diff, ref = _score_group(loaded, [persona_prompts[i] for i in group], [reference_prompts[i] for i in group],
                                 [answers[i] for i in group])
        sums[group], ref_sums[group] = diff, ref
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(lengths > 0, sums / np.maximum(lengths, 1), np.nan)
        ref_mean = np.where(lengths > 0, ref_sums / np.maximum(lengths, 1), np.nan)
    coh = np.array([coherence(list(a)) for a in answers], dtype=float)
    return Evidence(evidence=mean, evidence_sum=np.where(lengths > 0, sums, np.nan), answer_length=lengths,
                    reference_logp=ref_mean, coherence=coh, evidence_coherent=combined(mean, coh))


def _vocab_size(loaded) -> int:
    config = loaded.lm._module.config
    return int(getattr(config, "vocab_size", None) or len(loaded.tokenizer))


def _groups(order: list[int], lengths: np.ndarray, vocab: int, batch_size: int):
    """Consecutive answers of `order`, at most batch_size a pass and 2 x answers x (longest + 1)
    x vocab logit floats within LOGIT_BUDGET (one answer always fits alone)."""
    if batch_size < 1:
        raise SelectionError(f"batch size must be >= 1, got {batch_size}")
    group, longest = [], 0
    for i in order:
        wider = max(longest, int(lengths[i]))
        if group and (len(group) == batch_size or 2 * (len(group) + 1) * (wider + 1) * vocab > LOGIT_BUDGET):
            yield group
            group, wider = [], int(lengths[i])
        group.append(i)
        longest = wider
    if group:
        yield group


def _score_group(loaded, persona_prompts, reference_prompts, answers) -> tuple[np.ndarray, np.ndarray]:
    """(evidence sums, reference log-likelihood sums) of a few answers: one batch of 2 x answers
    rows (persona prompts, then reference prompts, each followed by its answer)."""
    k = len(answers)
    prompts = [list(p) for p in persona_prompts] + [list(p) for p in reference_prompts]
    batch, tail = split_batch(prompts, [list(a) for a in answers] * 2, loaded.pad_id)
    # Suffix column t (the prompt's last token, then the answer) predicts answer token t.
    longest = max(len(a) for a in answers)
    cols = torch.zeros(2 * k, longest, dtype=torch.long)
    targets = torch.zeros(2 * k, longest, dtype=torch.long)
    weights = torch.zeros(2 * k, longest)
    for r in range(2 * k):
        answer = list(answers[r % k])
        m = len(answer)
        cols[r, :m] = torch.arange(m)
        targets[r, :m] = torch.tensor(answer, dtype=torch.long)
        weights[r, :m] = 1.0
    prefix = batch.input_ids.shape[1] - tail
    if loaded.remote or prefix < 1:
        out = _answer_sums(loaded, batch, tail, cols, targets, weights)
    else:
        out = _answer_sums_on_prefix(loaded, batch, prefix, cols, targets, weights)
    return out[0].double().numpy(), out[1].double().numpy()


def split_batch(prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int) -> tuple[Batch, int]:
    """Rows [left pad][prompt minus its last token][the prompt's last token][answer][right pad]:
    every prompt's last token sits in one column (the first of the last `tail` columns, returned),
    so the columns before it hold prompts only and the rest the answers, whatever their lengths.
    Right pads come after every real token (masked out, never attended to by a real one)."""
    head = max(len(p) for p in prompts) - 1
    tail = 1 + max(len(a) for a in answers)
    ids = torch.full((len(prompts), head + tail), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    pad = torch.tensor([head - (len(p) - 1) for p in prompts], dtype=torch.long)
    for r, (p, a) in enumerate(zip(prompts, answers)):
        seq = list(p) + list(a)
        ids[r, pad[r] : pad[r] + len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[r, pad[r] : pad[r] + len(seq)] = 1
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, position_ids, pad), tail


def _reduce(logits, cols, targets, weights):
    """Inside a trace: per row the summed log-prob of its answer tokens (read at `cols` of the
    kept logits), then per answer [persona - reference, reference], [2, answers]."""
    k = logits.shape[0] // 2
    rows = torch.arange(logits.shape[0])[:, None]
    picked = logits[rows, cols].float()
    logp = picked.gather(-1, targets.to(picked.device)[..., None]).squeeze(-1) - picked.logsumexp(-1)
    per_row = (logp * weights.to(logp.device)).sum(-1)
    return torch.stack([per_row[:k] - per_row[k:], per_row[k:]])


@retried
def _answer_sums(loaded, batch, tail: int, cols, targets, weights) -> torch.Tensor:
    """Whole sequences in one trace (remote-safe): only the last `tail` columns are unembedded and
    only the [2, answers] sums leave the trace."""
    with loaded.lm.trace(**batch.inputs(), logits_to_keep=tail, remote=loaded.remote):
        # The model's own logits (after any final soft-capping).
        out = _reduce(loaded.lm.output.logits, cols, targets, weights).save()
    return out.cpu()


def _answer_sums_on_prefix(loaded, batch, prefix: int, cols, targets, weights) -> torch.Tensor:
    """_answer_sums with each distinct prompt head (the first `prefix` columns: a cell's persona
    prompt is shared by every condition's answer) run once, and every row only its last columns
    on that KV cache. Local runs only: the cache stays next to the model."""
    from .tracing import prefix_cache, suffix_batch

    cache, _ = prefix_cache(loaded, batch, prefix)
    suffix = suffix_batch(batch, list(range(batch.input_ids.shape[0])), prefix)
    with loaded.lm.trace(**suffix.inputs(), past_key_values=cache):
        out = _reduce(loaded.lm.output.logits, cols, targets, weights).save()
    return out.cpu()


# --- the scores of a study's answers, kept in arrays shaped like its dataset -----------------------

def empty_scores(shape: tuple[int, ...]) -> dict[str, np.ndarray]:
    """One array per variable, NaN (answer_length -1) where an answer is not scored yet."""
    out = {name: np.full(shape, np.nan) for name in VARIABLES if name != "answer_length"}
    out["answer_length"] = np.full(shape, -1, dtype=np.int64)
    return out


def store_scores(scores: dict[str, np.ndarray], got: Evidence, where: Sequence[tuple]) -> None:
    """Write answer i of `got` at index where[i] of every array."""
    for name, values in got.as_dict().items():
        for i, index in enumerate(where):
            scores[name][index] = values[i]


def restore_scores(scores: dict[str, np.ndarray], previous) -> None:
    """Take the scores of an unfinished result's rows (its model already selected)."""
    for name in VARIABLES:
        if name in previous:
            scores[name][:] = previous[name].values


def add_scores(ds, scores: dict[str, np.ndarray], dims: tuple[str, ...], prompt_pair: str) -> None:
    """The variables into `ds` over `dims` (a leading "model" dim of size 1 gets the arrays as
    they are, with an axis added), with their long names and units; `prompt_pair` names the pair
    the answers were scored with (an attr of each)."""
    lead = (None,) if dims[0] == "model" else ()
    for name in VARIABLES:
        ds[name] = (dims, scores[name][lead])
        ds[name].attrs.update(ATTRS[name], prompt_pair=prompt_pair)


def grid_prompt_pairs(tokenizer, grid, cells) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """(XY prompt ids, BY prompt ids) of each cell: the xu2026 grids' prompt pair."""
    from .prompts import render_prompt

    return [(render_prompt(tokenizer, grid.user_text(c, "XY"), grid.persona_text(c, "XY")).ids,
             render_prompt(tokenizer, grid.user_text(c, "BY"), grid.persona_text(c, "BY")).ids) for c in cells]


def default_scorer(model_id: str) -> str:
    """The behavioural measure a summary leads with: "markers" for the toy model (trained to
    speak its personas' marker words, so the word lists see what it does), "evidence" for every
    real chat model (word lists miss most in-persona answers of SmolLM2; docs/evidence.md)."""
    return "markers" if model_id == "toy" else "evidence"
