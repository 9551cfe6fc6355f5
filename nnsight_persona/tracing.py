"""The few operations experiments run through nnsight traces: greedy continuations and reading
residuals at chosen (row, column) sites of a left-padded batch."""

from __future__ import annotations

import torch

from .batching import Batch
from .sites import module_at


def residual_site(blocks, layer: int):
    """The residual stream at `layer` inside a trace: hidden_states[layer] (input of block `layer`),
    or the last block's raw output for layer == n_layers (see sites.py for the convention)."""
    return blocks[0].input if layer == 0 else blocks[layer - 1].output


def read_residuals(loaded, batch: Batch, rows: torch.Tensor, cols: torch.Tensor, layers: list[int]) -> torch.Tensor:
    """Residuals at sites (rows[k], cols[k]) for each layer, as float32 [len(layers), k, hidden].

    One forward pass over the batch; only the selected sites are saved."""
    if list(layers) != sorted(set(layers)):
        raise ValueError(f"layers must be ascending and unique (modules are reached in forward order): {layers}")
    blocks = loaded.layers()
    with loaded.lm.trace(**batch.inputs()):
        picked = []
        for layer in layers:
            picked.append(residual_site(blocks, layer)[rows, cols].float())
        out = torch.stack(picked).save()
    return out


def greedy_continuations(loaded, batch: Batch, n_tokens: int) -> torch.Tensor:
    """`n_tokens` greedy tokens after each row of a left-padded batch (end-of-turn suppressed,
    so every row has the same length and the positions after the prompt stay aligned)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with loaded.lm.generate(
        **inputs, max_new_tokens=n_tokens, min_new_tokens=n_tokens, do_sample=False, pad_token_id=loaded.pad_id
    ) as tracer:
        out = tracer.result.save()
    return out[:, batch.input_ids.shape[1]:]


def window_kl(loaded, batch: Batch, writes, window_cols: torch.Tensor, reference_rows: torch.Tensor) -> torch.Tensor:
    """KL(reference || row) of next-token distributions, summed over each row's window.

    writes: LayerWrites (ascending layers) applied in the same forward pass. window_cols [rows, W]:
    batch columns whose next-token distributions are compared. reference_rows [rows]: for each
    row, the (unedited) row of the same batch it is compared against. Only the per-row sums leave
    the trace; the logits never do.
    """
    blocks = loaded.layers()
    lm_head = module_at(loaded.lm, loaded.adapter.lm_head)
    dtype = loaded.torch_dtype
    rows = torch.arange(batch.input_ids.shape[0])[:, None]
    with loaded.lm.trace(**batch.inputs()):
        for w in writes:
            residual_site(blocks, w.layer)[w.rows, w.cols] = w.values.to(dtype)
        logits = lm_head.output
        logp = logits[rows, window_cols].float().log_softmax(-1)
        # The reference row is read at the same columns: rows of one batch share its padding.
        ref = logits[reference_rows[:, None], window_cols].float().log_softmax(-1)
        kl = (ref.exp() * (ref - logp)).sum(-1).sum(-1).save()
    return kl
