"""Replacement vectors described by where they are read, not by their values: what a
remote-native sweep sends, so that neither residuals nor vectors cross the network.

In one nnsight session on the server, capture passes (`SiteReads`) first read the residuals of
the rows an experiment needs (the four conditions' prompts BB, XB, BY, XY with their forced
continuation tokens, and any other prompt) at chosen sites, layer by layer; those values stay on
the server, concatenated per layer in the order the passes ran. A `LayerRecipe` then says, for the
writes at one layer of a later trace of the same session, from which read sites each vector is
built and how (`KINDS`): a raw residual, a replacement vector of core/replacements.py, the
additive vector rescaled to h_XY's norm; the random control's direction travels as its four-integer
seed (`replacements.direction_key`) and is drawn on the server by the same generator as a local
run. `resolve` and `as_writes` run on the server; `SiteTable` builds a session's capture passes
here and numbers their sites. Recipes and reads are packed in one integer tensor each (a tensor
costs some hundred bytes of pickling on top of its data).

Everything here is integers: what travels does not grow with the model's width.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

import torch

from .batching import Batch, chunked, left_pad, length_ordered
from .edits import LayerWrites
from .replacements import ORDER, direction_of_key, rescaled, vector

# How a write's vector is built from its four sources (h_BB, h_XB, h_BY, h_XY at one site).
KINDS = ("BB", "XB", "BY", "XY", "additive", "oracle", "baseline", "persona_only", "task_only", "remove_persona",
         "random", "additive_rescaled")


@dataclass(frozen=True)
class SiteReads:
    """One capture pass of a session: `batch` run unedited and its residuals read at the sites
    `sites` [n, 3] (layer, batch row, column; ascending by layer). Only the server holds what it
    reads."""

    batch: Batch
    sites: torch.Tensor  # [n, 3] long

    @property
    def layers(self) -> list[int]:
        return sorted(set(self.sites[:, 0].tolist()))

    def at(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows, cols) of the sites read at `layer`."""
        picked = self.sites[self.sites[:, 0] == layer]
        return picked[:, 1], picked[:, 2]


# The columns of a recipe's table, one row per write.
ROW, COL, SOURCES, KIND, MINUS, KEY = 0, 1, slice(2, 6), 6, 7, slice(8, 12)
WIDTH = 12


@dataclass(frozen=True)
class LayerRecipe:
    """Writes at one layer whose vectors the server builds from sites read earlier in the session,
    one row of `table` [k, 12] (long) per write: the batch row and column it goes to (-1: a recipe
    only resolved, for norms); its four sources (h_BB, h_XB, h_BY, h_XY: indices into the values
    read at `layer`); its kind (index into KINDS); a read site subtracted from its vector (inject's
    every-step difference; -1: none); the four integers seeding its random direction (unused for
    other kinds). The write replaces the residual, or is added to it with `add`."""

    layer: int
    table: torch.Tensor
    add: bool = False


def resolve(recipe: LayerRecipe, carried: dict) -> torch.Tensor:
    """The vectors [k, hidden] (float32) of a recipe, from `carried` ({layer: the values read at
    that layer, [sites, hidden]}). Runs on the server, inside the session."""
    read, table = carried[recipe.layer], recipe.table
    h = read[table[:, SOURCES].to(read.device)]  # [k, 4, hidden]
    values = torch.empty(h.shape[0], h.shape[-1], dtype=h.dtype, device=h.device)
    for code in sorted(set(table[:, KIND].tolist())):
        picked = (table[:, KIND] == code).nonzero().flatten()
        values[picked.to(h.device)] = _built(h[picked.to(h.device)], KINDS[code], table[picked, KEY])
    minus = (table[:, MINUS] >= 0).nonzero().flatten()
    if len(minus):
        values[minus.to(h.device)] -= read[table[minus, MINUS].to(read.device)]
    return values


def _built(h: torch.Tensor, kind: str, keys: torch.Tensor) -> torch.Tensor:
    if kind in ORDER:
        return h[:, ORDER.index(kind)]
    if kind == "additive_rescaled":
        return rescaled(vector(h, "additive"), h[:, ORDER.index("XY")])
    direction = None
    if kind == "random":
        direction = torch.stack([torch.from_numpy(direction_of_key(key, h.shape[-1])) for key in keys.tolist()])
        direction = direction.to(h.device, h.dtype)
    return vector(h, kind, direction)


def as_writes(recipe: LayerRecipe, carried: dict) -> LayerWrites:
    """The LayerWrites a recipe stands for (on the server, inside the session)."""
    table = recipe.table
    return LayerWrites(recipe.layer, table[:, ROW], table[:, COL], resolve(recipe, carried), add=recipe.add)


class SiteTable:
    """A session's capture passes, built here: rows (token sequences, each added once under a key)
    and the sites read from them per layer (each once under a key). `finish` batches the rows,
    shortest first, and numbers every layer's sites as the server concatenates them."""

    def __init__(self):
        self.seqs: dict = {}  # row key -> token ids
        self.sites: dict = defaultdict(dict)  # layer -> {site key: (row key, token index)}

    def need(self, layer: int, site, row, seq, index: int) -> None:
        """Read `layer` at token `index` of the row `row` (token ids `seq`) as site `site`."""
        self.seqs.setdefault(row, seq)
        self.sites[layer].setdefault(site, (row, index))

    def finish(self, pad_id: int, batch_size: int) -> tuple[list[SiteReads], dict]:
        """(the capture passes, {(layer, site key): index into the values read at that layer})."""
        keys = length_ordered(list(self.seqs), lambda key: len(self.seqs[key]))
        reads, number, count = [], {}, defaultdict(int)
        for rng in chunked(len(keys), batch_size):
            chunk = [keys[i] for i in rng]
            batch = left_pad([self.seqs[key] for key in chunk], pad_id)
            slot = {key: r for r, key in enumerate(chunk)}
            sites = []
            for layer in sorted(self.sites):
                for site, (row, index) in self.sites[layer].items():
                    if row in slot:
                        sites.append((layer, slot[row], int(batch.pad[slot[row]]) + index))
                        number[(layer, site)] = count[layer]
                        count[layer] += 1
            reads.append(SiteReads(batch, torch.tensor(sites, dtype=torch.long).reshape(-1, 3)))
        return reads, number


def recipe(layer: int, writes, add: bool = False) -> LayerRecipe:
    """A LayerRecipe from writes (row, col, sources [4], kind name, key [4] or None, minus site or
    None); row and col -1 for a recipe that is only resolved."""
    table = torch.tensor([[row, col, *sources, KINDS.index(kind), -1 if minus is None else minus,
                           *(key if key is not None else (0, 0, 0, 0))]
                          for row, col, sources, kind, key, minus in writes], dtype=torch.long)
    return LayerRecipe(layer, table.reshape(-1, WIDTH), add)


def recipes_by_layer(writes, add: bool = False) -> list[LayerRecipe]:
    """LayerRecipes, ascending by layer, from writes (row, layer, col, sources [4], kind name, key
    [4] or None, minus site or None)."""
    by_layer = defaultdict(list)
    for row, layer, col, sources, kind, key, minus in writes:
        by_layer[layer].append((row, col, sources, kind, key, minus))
    return [recipe(layer, ws, add) for layer, ws in sorted(by_layer.items())]
