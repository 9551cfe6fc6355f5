"""Left-padded batches of token sequences, with the offsets that keep named positions fixed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Sequence, TypeVar

import torch

T = TypeVar("T")


@dataclass
class Batch:
    input_ids: torch.Tensor  # [rows, width]
    attention_mask: torch.Tensor
    position_ids: torch.Tensor  # counted from each row's first real token, as if unpadded
    pad: torch.Tensor  # [rows] left-pad length; unpadded index i sits at column pad + i

    def inputs(self) -> dict:
        return {
            "input_ids": self.input_ids,
            "attention_mask": self.attention_mask,
            "position_ids": self.position_ids,
        }


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int) -> Batch:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    pad = torch.tensor([width - len(s) for s in seqs], dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, pad[r]:] = torch.as_tensor(list(s), dtype=torch.long)
        mask[r, pad[r]:] = 1
    # Explicit position ids: padded rows then see exactly the positions of their unpadded run.
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    return Batch(ids, mask, position_ids, pad)


def chunked(n: int, size: int) -> Iterator[range]:
    """Consecutive index ranges of at most `size` covering range(n)."""
    if size < 1:
        raise ValueError(f"batch size must be >= 1, got {size}")
    for start in range(0, n, size):
        yield range(start, min(start + size, n))


def length_ordered(items: Sequence[T], length: Callable[[T], int]) -> list[T]:
    """`items` from shortest to longest (ties keep their order). Consecutive chunks of the result
    hold sequences of similar length, so a left-padded batch runs few pad tokens: a persona
    prompt can be 8x the length of its bare (BB) prompt, and mixing them in one batch pads
    every short row to the longest."""
    return sorted(items, key=length)
