"""Two ways to run a model under a mask, neither touching the caller's model.

- `MaskedCopy`: a weight mask multiplies a COPY of the weights (a deep copy of the module, made
  once; each mask is written into it from the caller's untouched weights). Runs here only: the
  masked weights do not exist on a remote server.
- `mask_channels`: inside any trace, a channel mask (the structured variant) multiplies the input
  of each masked nn.Linear by 0/1 per input channel, which equals zeroing those columns of W. It is
  an activation edit, so it travels with the trace to NDIF or nnsight's local simulation of it.
"""

from __future__ import annotations

import copy
import dataclasses

import torch

from ...core.sites import module_at


def mask_channels(lm, channel_masks: dict | None) -> None:
    """Inside a trace: zero the masked input channels of each module ({name: float 0/1 [in]}, in
    forward order). A new tensor replaces each input (q, k and v share theirs)."""
    if not channel_masks:
        return
    for name, keep in channel_masks.items():
        site = module_at(lm, name)
        x = site.input
        site.input = x * keep.to(x.device, x.dtype)


def channel_factors(masks: dict) -> dict:
    """Bool channel masks as the float 0/1 factors mask_channels multiplies by."""
    return {name: m.float() for name, m in masks.items()}


class MaskedCopy:
    """A deep copy of `loaded`'s model whose weights are set from the caller's weights times a mask.
    `with_masks(masks)` returns a LoadedModel running the copy with exactly those masks applied
    (modules not in `masks` hold the caller's weights)."""

    def __init__(self, loaded):
        from nnsight.modeling.transformers import TransformersModel

        if loaded.remote:
            from ...core.errors import SelectionError

            raise SelectionError("a weight mask cannot travel to a remote server: its masked weights exist only "
                                 "here; use a structured (channel) mask from `subnetwork find --structured`")
        self.source = loaded.lm._module
        self.copy = copy.deepcopy(self.source)
        self.copy.requires_grad_(False)
        self.copy.eval()
        self._untie_head(loaded.adapter.lm_head)
        self.loaded = dataclasses.replace(loaded, lm=TransformersModel(self.copy, tokenizer=loaded.tokenizer))
        self._dirty: set[str] = set()

    def _untie_head(self, head: str) -> None:
        """With tied embeddings a masked head would mask the embeddings too: the copy gets its own head."""
        module = self.copy.get_submodule(head)
        module.weight = torch.nn.Parameter(module.weight.detach().clone(), requires_grad=False)

    @torch.no_grad()
    def with_masks(self, masks: dict | None):
        for name in self._dirty - set(masks or {}):
            self.copy.get_submodule(name).weight.copy_(self.source.get_submodule(name).weight)
        for name, mask in (masks or {}).items():
            original = self.source.get_submodule(name).weight
            self.copy.get_submodule(name).weight.copy_(original * mask.to(original.device, original.dtype))
        self._dirty = set(masks or {})
        return self.loaded
