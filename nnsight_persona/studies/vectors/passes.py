"""The two passes persona vectors need, batched with left padding: greedy answers (optionally
under a steering edit) and mean residuals of prompt + answer over token sets, at every layer.

Token sets (of one forward pass over prompt + answer, read at layer L = hidden_states[L]):
- ``response_avg``: mean over the answer's tokens (the original's choice);
- ``prompt_avg``: mean over the prompt's tokens;
- ``prompt_last``: the last prompt token (the end of the generation header).
"""

from __future__ import annotations

import numpy as np
import torch

from ...core.batching import chunked, left_pad, length_ordered
from ...core.errors import SelectionError
from ...core.progress import tqdm
from ...core.tracing import generate_with_edit, read_residuals

TOKEN_SETS = ("response_avg", "prompt_avg", "prompt_last")


def cut_at_eos(loaded, ids: list[int]) -> list[int]:
    """Greedy tokens up to (not including) the first end-of-turn token."""
    eos = set(loaded.eos_ids)
    for i, token in enumerate(ids):
        if token in eos:
            return ids[:i]
    return ids


def generate_answers(loaded, prompts: list[list[int]], n_tokens: int, batch_size: int, make_edit=None,
                     progress: bool = False, desc: str = "generate", order: list[int] | None = None,
                     done=None, on_batch=None) -> list[list[int]]:
    """Greedy answer token ids for each prompt (cut at end of turn). `make_edit(indices, batch)`
    returns the GenerationEdit of a batch (or None). Batches hold prompts of similar length;
    `order` (optional) gives the batching order instead (e.g. to keep one layer per batch).
    Resuming: a batch whose prompts are all `done` (a boolean per prompt) is skipped (None in the
    answers), so a resumed run keeps an uninterrupted run's batches and padding; `on_batch(indices,
    answers)` is called after each batch that ran."""
    answers: list[list[int] | None] = [None] * len(prompts)
    order = order if order is not None else length_ordered(range(len(prompts)), lambda i: len(prompts[i]))
    batches = [[order[k] for k in rng] for rng in chunked(len(order), batch_size)]
    if done is not None:
        batches = [idx for idx in batches if not all(done[i] for i in idx)]
    for idx in tqdm(batches, desc=desc, disable=not progress):
        batch = left_pad([prompts[i] for i in idx], loaded.pad_id)
        edit = make_edit(idx, batch) if make_edit is not None else None
        tokens = generate_with_edit(loaded, batch, n_tokens, edit)
        for r, i in enumerate(idx):
            answers[i] = cut_at_eos(loaded, tokens[r].tolist())
        if on_batch is not None:
            on_batch(idx, [answers[i] for i in idx])
    return answers


def token_set_means(loaded, prompts: list[list[int]], answers: list[list[int]], layers: list[int], batch_size: int,
                    progress: bool = False, desc: str = "residuals"):
    """For each sample, the mean residuals [token_set, layer, hidden] (float32; NaN for
    response_avg of an empty answer), and the mean L2 norm of its answer tokens' residuals
    [layer] (NaN for an empty answer). One forward pass over prompt + answer per batch."""
    n = len(prompts)
    means = np.full((n, len(TOKEN_SETS), len(layers), loaded.hidden_size), np.nan, dtype=np.float32)
    norms = np.full((n, len(layers)), np.nan, dtype=np.float32)
    seqs = [list(p) + list(a) for p, a in zip(prompts, answers)]
    order = length_ordered(range(n), lambda i: len(seqs[i]))
    for rng in tqdm(list(chunked(n, batch_size)), desc=desc, disable=not progress):
        idx = [order[k] for k in rng]
        batch = left_pad([seqs[i] for i in idx], loaded.pad_id)
        rows, cols, spans = [], [], []
        for r, i in enumerate(idx):
            pad, lp, la = int(batch.pad[r]), len(prompts[i]), len(answers[i])
            start = len(cols)
            cols.extend(range(pad, pad + lp + la))
            rows.extend([r] * (lp + la))
            spans.append((start, lp, la))
        resid = read_residuals(loaded, batch, torch.tensor(rows), torch.tensor(cols), list(layers)).numpy()
        for (start, lp, la), i in zip(spans, idx):
            prompt = resid[:, start : start + lp]
            means[i, 1] = prompt.mean(1)
            means[i, 2] = prompt[:, -1]
            if la:
                answer = resid[:, start + lp : start + lp + la]
                means[i, 0] = answer.mean(1)
                norms[i] = np.linalg.norm(answer, axis=-1).mean(1)
    return means, norms


def check_layers(layers, n_layers: int) -> None:
    """Every layer a residual index 0..n_layers (L = hidden_states[L]), and at least one."""
    out = [L for L in layers if not 0 <= L <= n_layers]
    if out or not layers:
        raise SelectionError(f"layer(s) {out or []} out of range; allowed: 0..{n_layers} (L = hidden_states[L])")
