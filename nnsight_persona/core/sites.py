"""Where things live inside each architecture family: one small adapter per family.

Layer convention (used everywhere in this package): layer L is transformers' ``hidden_states[L]``
for 0 <= L < n_layers, i.e. the input of decoder block L (0 = the embeddings as the model scales
them). The top index L = n_layers is the raw output of the last block, BEFORE the final norm (where
transformers' ``hidden_states[n_layers]`` would apply the norm). Every layer is thus a point of the
residual stream itself, and writing layer L means editing the input of block L.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import ModelError


@dataclass(frozen=True)
class Adapter:
    """Attribute paths, from the causal-LM module, of the pieces experiments touch."""

    family: str
    layers: str = "model.layers"
    final_norm: str = "model.norm"
    lm_head: str = "lm_head"
    attention: str = "self_attn"
    # The call of the attention kernel inside the attention module's forward, as nnsight's
    # ``.source`` names it; its inputs are (module, query, key, value, attention_mask, ...).
    attention_kernel: str = "attention_interface_1"


# Families laid out like Llama. Others with the same layout load through STRUCTURAL_FALLBACK.
ADAPTERS = {
    name: Adapter(family=name)
    for name in ("llama", "qwen2", "qwen3", "gemma", "gemma2", "mistral", "olmo2", "phi3")
}


def adapter_for(hf_model) -> Adapter:
    """The adapter of a loaded transformers model, checked against the model's real modules."""
    model_type = getattr(hf_model.config, "model_type", "?")
    adapter = ADAPTERS.get(model_type, Adapter(family=model_type))
    problems = [p for p in (adapter.layers, adapter.final_norm, adapter.lm_head) if _get(hf_model, p) is None]
    layers = _get(hf_model, adapter.layers)
    if layers is not None and (len(layers) == 0 or _get(layers[0], adapter.attention) is None):
        problems.append(f"{adapter.layers}[0].{adapter.attention}")
    if problems:
        raise ModelError(
            f"model type {model_type!r} has an unsupported layout: missing {problems}. Supported: "
            f"decoder-only models laid out like Llama ({sorted(ADAPTERS)}), with "
            "model.layers[i].self_attn, model.norm and lm_head."
        )
    return adapter


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def module_at(root, path: str):
    """Follow a dotted attribute path from `root` (works on nnsight envoys and torch modules)."""
    for part in path.split("."):
        root = getattr(root, part)
    return root
