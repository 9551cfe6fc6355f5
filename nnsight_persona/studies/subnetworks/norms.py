"""Per-input-channel activation norms of a model's linear layers, recorded through nnsight.

For each sample (a chat prompt and an answer) and each chosen nn.Linear, the L2 norm of every
input channel over the sample's counted tokens: ||X_j|| = sqrt(sum_t x_tj^2), as the Wanda score
of the reference takes it, sample by sample (the contrastive z-scores need the per-sample values).
Counted tokens are the answer's (`tokens="answer"`, the default) or the whole sequence ("all").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...core.batching import chunked, left_pad
from ...core.prompts import render_prompt
from ...core.sites import module_at
from ...core.tracing import retried

TOKEN_CHOICES = ("answer", "all")


@dataclass(frozen=True)
class Sequence:
    """Token ids of a prompt followed by an answer; the answer starts at `answer_start`."""

    ids: tuple[int, ...]
    answer_start: int


def encode(tokenizer, user_text: str, answer: str) -> Sequence:
    """The chat prompt asking `user_text` (generation header included), then `answer`'s tokens."""
    prompt = render_prompt(tokenizer, user_text).ids
    answer_ids = tuple(tokenizer(answer, add_special_tokens=False)["input_ids"])
    return Sequence(prompt + answer_ids, len(prompt))


def linear_names(hf_model, adapter, mlp_only: bool = False, head: bool = False) -> list[str]:
    """The nn.Linear modules that masks cover, in the order the model runs them (Llama-like layouts
    define them in that order). The LM head only with `head`; embeddings are nn.Embedding, never
    included."""
    names = []
    for name, module in hf_model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        if name == adapter.lm_head:
            if head:
                names.append(name)
            continue
        if mlp_only and ".mlp." not in f".{name}.":
            continue
        names.append(name)
    return names


def envoy(lm, name: str):
    """The nnsight envoy of a dotted module path (list indices included)."""
    return module_at(lm, name)


def counted_weights(batch, sequences: list[Sequence], tokens: str) -> torch.Tensor:
    """[rows, width] float: 1 on the tokens whose activations count, 0 elsewhere (padding too)."""
    width = batch.input_ids.shape[1]
    cols = torch.arange(width)[None, :]
    start = batch.pad[:, None] + (torch.tensor([s.answer_start for s in sequences])[:, None] if tokens == "answer" else 0)
    return ((cols >= start) & batch.attention_mask.bool()).float()


@retried
def _norms_of_batch(loaded, batch, weights: torch.Tensor, names: list[str]) -> list[torch.Tensor]:
    envoys = [envoy(loaded.lm, n) for n in names]
    with loaded.lm.trace(**batch.inputs(), remote=loaded.remote):
        out = list().save()
        for e in envoys:
            x = e.input.float()
            w = weights.to(x.device)[:, :, None]
            out.append((x.square() * w).sum(1).sqrt())
    return [t.cpu() for t in out]


def record_norms(loaded, sequences: list[Sequence], names: list[str], tokens: str = "answer",
                 batch_size: int = 16, progress: bool = False, desc: str = "channel norms") -> dict[str, torch.Tensor]:
    """{module name: float32 [n_samples, in_features]}: each sample's per-input-channel L2 norm."""
    from ...core.progress import tqdm

    if tokens not in TOKEN_CHOICES:
        raise ValueError(f"tokens must be one of {TOKEN_CHOICES}, got {tokens!r}")
    parts: dict[str, list[torch.Tensor]] = {n: [] for n in names}
    for rng in tqdm(list(chunked(len(sequences), batch_size)), desc=desc, disable=not progress):
        chunk = [sequences[i] for i in rng]
        batch = left_pad([s.ids for s in chunk], loaded.pad_id)
        got = _norms_of_batch(loaded, batch, counted_weights(batch, chunk, tokens), names)
        for n, t in zip(names, got):
            parts[n].append(t)
    return {n: torch.cat(v) for n, v in parts.items()}
