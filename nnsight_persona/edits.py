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
    """All writes at one layer, stacked for a single indexed assignment."""

    layer: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor  # [k, hidden]


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
    """

    layer: int
    step: int
    rows: torch.Tensor
    cols: torch.Tensor
    values: torch.Tensor
    deltas: torch.Tensor | None = None
