"""Architecture of the toy chat model: a tiny Llama."""

from __future__ import annotations

# 8 layers, hidden 128, 4 heads: about 1.8M parameters, ~7 MB in float32.
DEFAULT_ARCH = dict(
    hidden_size=128,
    intermediate_size=384,
    num_hidden_layers=8,
    num_attention_heads=4,
    num_key_value_heads=4,
    max_position_embeddings=256,
    tie_word_embeddings=True,
)

# A much smaller shape for smoke tests of the trainer.
TINY_ARCH = dict(DEFAULT_ARCH, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2)


def toy_config(tokenizer, **overrides):
    from transformers import LlamaConfig

    arch = {**DEFAULT_ARCH, **overrides}
    return LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **arch,
    )


def count_parameters(model) -> int:
    # Tied embeddings are one tensor; parameters() already deduplicates them.
    return sum(p.numel() for p in model.parameters())
