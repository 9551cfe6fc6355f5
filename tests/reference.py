"""Independent computations with plain transformers, one prompt at a time, for agreement tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM


def load_plain(path, attn="eager"):
    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn, dtype=torch.float32).eval()


@torch.no_grad()
def hidden_states(model, ids: list[int]) -> list[torch.Tensor]:
    """Residual stream at every layer for one unpadded sequence, in this package's convention:
    hidden_states[0..n-1] from output_hidden_states, layer n = last block's raw output (a hook)."""
    captured = {}
    last = model.model.layers[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.__setitem__("top", o[0] if isinstance(o, tuple) else o))
    try:
        out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    return [h[0] for h in out.hidden_states[:-1]] + [captured["top"][0]]


@torch.no_grad()
def greedy(model, ids: list[int], n: int, pad_id: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()
