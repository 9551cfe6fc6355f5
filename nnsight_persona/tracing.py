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


def greedy_config(loaded, n_tokens: int):
    """Pure greedy decoding for exactly `n_tokens` steps: the checkpoint's own sampling defaults
    (temperature, top-p, repetition penalty...) are deliberately not applied."""
    from transformers import GenerationConfig

    return GenerationConfig(
        do_sample=False, max_new_tokens=n_tokens, min_new_tokens=n_tokens,
        pad_token_id=loaded.pad_id, eos_token_id=loaded.eos_ids,
    )


def greedy_continuations(loaded, batch: Batch, n_tokens: int) -> torch.Tensor:
    """`n_tokens` greedy tokens after each row of a left-padded batch. End of turn is suppressed
    until then, so every row has the same length and positions after the prompt stay aligned."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens)) as tracer:
        out = tracer.result.save()
    return out[:, batch.input_ids.shape[1]:]


def generate_with_edit(loaded, batch: Batch, n_tokens: int, edit=None) -> torch.Tensor:
    """Greedy argmax tokens [rows, n_tokens] under an optional GenerationEdit.

    The run always makes n_tokens steps (a bounded nnsight loop needs them all); the tokens
    returned are the raw argmax of each step's logits, so a row's first end-of-turn token marks
    where plain greedy decoding would have stopped (callers cut there)."""
    inputs = {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    blocks = loaded.layers()
    lm_head = module_at(loaded.lm, loaded.adapter.lm_head)
    dtype = loaded.torch_dtype
    with loaded.lm.generate(**inputs, generation_config=greedy_config(loaded, n_tokens)) as tracer:
        tokens = list().save()
        for step in tracer.iter[0:n_tokens]:
            if edit is not None and step >= edit.step:
                site = residual_site(blocks, edit.layer)
                if step == edit.step:
                    site[edit.rows, edit.cols] = edit.values.to(dtype)
                elif edit.deltas is not None:
                    site[edit.rows, -1] += edit.deltas.to(dtype)
            tokens.append(lm_head.output[:, -1].argmax(-1))
    return torch.stack(tokens, dim=1)


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
