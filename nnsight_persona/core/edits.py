"""Declarative residual edits: which rows of a batch get which vector written at which site.

Experiments describe edits as plain records; ``tracing`` applies them inside one nnsight trace,
layer by layer in forward order, so many different edits share one forward pass.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Write:
    """Replace the residual of batch row `row` at token column `col` of `layer` by `value`."""

    row: int
    layer: int
    col: int
    value: torch.Tensor  # [hidden]


@dataclass(frozen=True)
class LayerWrites:
    """All writes at one layer, stacked for a single indexed assignment (or addition)."""

    layer: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor  # [k, hidden]
    add: bool = False  # add `values` to the residual instead of replacing it


def group_by_layer(writes: list[Write]) -> list[LayerWrites]:
    """Stack writes per layer, in ascending layer order (the order modules run in)."""
    by_layer: dict[int, list[Write]] = defaultdict(list)
    for w in writes:
        by_layer[w.layer].append(w)
    return [
        LayerWrites(
            layer=layer,
            rows=torch.tensor([w.row for w in ws], dtype=torch.long),
            cols=torch.tensor([w.col for w in ws], dtype=torch.long),
            values=torch.stack([w.value for w in ws]),
        )
        for layer, ws in sorted(by_layer.items())
    ]


@dataclass(frozen=True)
class GenerationEdit:
    """A residual replacement during greedy generation.

    At generation step `step` (0 = the prefill over the prompt; step k > 0 computes the k-th
    generated token's position) the residual of `rows` at batch columns `cols` of `layer` is
    replaced by `values`. With `deltas` (patching every step), each later step also adds
    `deltas` (the replacement minus the clean residual it replaced) at its new position.
    With `add`, step `step` adds `values` instead of replacing (a steering vector: persona
    vectors are such edits, `values` at the prompt columns and `deltas` at every later step).
    `delta_rows`: the rows `deltas` go to (default `rows`), when step `step` writes several
    columns of a row.
    """

    layer: int
    step: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    deltas: torch.Tensor | None = None
    add: bool = False
    delta_rows: torch.Tensor | None = None


@dataclass(frozen=True)
class Knockout:
    """Block attention from query positions to key positions, per row and decoder block.

    `keys` [rows, width]: prompt columns (of the left-padded batch) no blocked query may read.
    `queries` [rows, width]: prompt columns whose queries are blocked in the prefill; with
    `generated`, every position after the prompt (teacher-forced or generated) is blocked too.
    `active` [rows, n_blocks]: in which decoder blocks (0..n_layers-1) each row's knockout holds.
    `heads` limits the knockout to some attention heads, the same for every row (None: all heads).
    `head_mask` [rows, n_blocks, n_heads] instead says per row and block which heads are knocked
    out, so one batch can sweep heads (a row whose mask is all False in a block is left alone there).
    """

    keys: torch.Tensor
    queries: torch.Tensor
    active: torch.Tensor
    generated: bool = True
    heads: tuple[int, ...] | None = None
    head_mask: torch.Tensor | None = None

    def __post_init__(self):
        if self.heads is not None and self.head_mask is not None:
            raise ValueError("a Knockout takes heads (every row) or head_mask (per row and block), not both")

    @property
    def blocks(self) -> tuple[int, ...]:
        return tuple(int(b) for b in self.active.any(0).nonzero().flatten())

    def heads_at(self, block: int):
        """The heads knocked out in `block`: None (all), a tuple (every row), or bool [rows, n_heads]."""
        return self.heads if self.head_mask is None else self.head_mask[:, block]

    def blocked(self, q_len: int, k_len: int, block: int, total_len: int | None = None) -> torch.Tensor:
        """Bool [rows, q_len, k_len]: True where attention is removed in `block`, for a forward
        pass whose queries are the last q_len of `total_len` positions (default k_len). A
        sliding-window cache hands the kernel only the last k_len keys; columns map accordingly."""
        rows, width = self.keys.shape
        total_len = k_len if total_len is None else total_len
        keys = torch.zeros(rows, max(total_len, width), dtype=torch.bool)
        keys[:, :width] = self.keys & self.active[:, block : block + 1]
        keys = keys[:, total_len - k_len : total_len]
        # The queries are the last q_len positions: a whole sequence, a generation step (a
        # generated position), or the columns after a cached prefix (a suffix pass).
        queries = torch.full((rows, max(total_len, width)), self.generated, dtype=torch.bool)
        queries[:, :width] = self.queries
        queries = queries[:, total_len - q_len : total_len]
        return queries[:, :, None] & keys[:, None, :]
