"""Tiny random-weight chat models, built offline from transformers configs, for the test suite.

Each family gets a byte-level BPE tokenizer trained on a few sentences and a chat template shaped like
the real family's (Qwen2.5's ChatML with its default system turn, Gemma-2's turns, Llama-3's headers),
so prompt positions and persona spans are exercised the way real checkpoints exercise them.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    Gemma2Config,
    Gemma2ForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

# The largest model any test may build: a tiny model that silently grew to full size would make the
# suite slow and its checks meaningless.
MAX_TEST_PARAMS = 200_000
# The wide variant (hidden size 1024, everything else as tiny: what travels must not grow with the
# width, tests/test_native.py) holds about 1.6M parameters.
MAX_WIDE_PARAMS = 2_000_000

TRAINING_TEXT = [
    "As a thoughtful person, Give advice to someone facing a difficult decision.",
    "As Warren Buffett, Comment on whether universal basic income is a good policy.",
    "As Yoda, Write a haiku about Monday mornings.",
    "As a pirate, describe the weather today. Arr matey, the sky be grey.",
    "As a senior software engineer with 10 years of experience, Review this design.",
    "Recommend a book worth reading and explain why. The quick brown fox jumps over the lazy dog.",
    "0123456789 !?.,;:'\"()[]{}-_/\\ abcdefghijklmnopqrstuvwxyz ABCDEFGHIJKLMNOPQRSTUVWXYZ",
]

FAMILIES = {
    "qwen2": {
        "special": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        "bos": None,
        "eos": "<|im_end|>",
        "pad": "<|endoftext|>",
        "template": (
            "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
            "<|im_end|>\n{% endif %}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
            "{{ message['content'] }}<|im_end|>\n{% endfor %}"
            "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
        ),
    },
    "gemma2": {
        "special": ["<pad>", "<eos>", "<bos>", "<start_of_turn>", "<end_of_turn>"],
        "bos": "<bos>",
        "eos": "<eos>",
        "pad": "<pad>",
        "template": (
            "{{ bos_token }}{% for message in messages %}<start_of_turn>"
            "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
            "{{ message['content'] | trim }}<end_of_turn>\n{% endfor %}"
            "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}"
        ),
    },
    "llama": {
        "special": ["<|begin_of_text|>", "<|eot_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|pad|>"],
        "bos": "<|begin_of_text|>",
        "eos": "<|eot_id|>",
        "pad": "<|pad|>",
        "template": (
            "{{ bos_token }}{% for message in messages %}<|start_header_id|>{{ message['role'] }}"
            "<|end_header_id|>\n\n{{ message['content'] | trim }}<|eot_id|>{% endfor %}"
            "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
        ),
    },
}


def build_tokenizer(family: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    spec = FAMILIES[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=spec["special"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(TRAINING_TEXT, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=spec["bos"],
        eos_token=spec["eos"],
        pad_token=spec["pad"],
    )
    fast.chat_template = spec["template"]
    return fast


def build_config(family: str, vocab_size: int, **overrides):
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    common.update(overrides)
    if family == "qwen2":
        return Qwen2Config(**common), Qwen2ForCausalLM
    if family == "gemma2":
        return Gemma2Config(head_dim=8, sliding_window=16, query_pre_attn_scalar=8, **common), Gemma2ForCausalLM
    if family == "llama":
        return LlamaConfig(**common), LlamaForCausalLM
    raise ValueError(f"unknown test family {family!r}; allowed: {sorted(FAMILIES)}")


# Sharp variant: weights initialised 10x larger than transformers' default (so the context, not just
# the current token, shapes each residual) and the final norm's gain raised, so next-token
# distributions are peaked and patches move them by nats, as in trained chat models. With the
# default tiny models every KL stays below ~2e-3, where KL(p || q) and KL(q || p) agree within
# 1e-5 and a test cannot tell a right computation from a wrong one.
SHARP = {"initializer_range": 0.2, "final_norm_gain": 3.0}


def build_tiny_model(family: str, directory: Path, seed: int = 0, final_norm_gain: float = 1.0,
                     max_params: int = MAX_TEST_PARAMS, **overrides) -> Path:
    """Write a tiny random `family` model with tokenizer and chat template to `directory`.
    `final_norm_gain` multiplies the final norm's output (the logits' scale); `overrides` go to the
    config (hidden_size=1024 with max_params=MAX_WIDE_PARAMS: the wide variant)."""
    tok = build_tokenizer(family)
    config, cls = build_config(family, vocab_size=len(tok), **overrides)
    spec = FAMILIES[family]
    config.bos_token_id = tok.convert_tokens_to_ids(spec["bos"]) if spec["bos"] else None
    config.eos_token_id = tok.convert_tokens_to_ids(spec["eos"])
    config.pad_token_id = tok.convert_tokens_to_ids(spec["pad"])
    with torch.random.fork_rng(devices=[]):  # seeded weights without changing the session's RNG
        torch.manual_seed(seed)
        model = cls(config).eval()
    if final_norm_gain != 1.0:
        with torch.no_grad():
            if family == "gemma2":  # Gemma's RMSNorm scales by (1 + weight), weight starting at 0
                model.model.norm.weight.add_(final_norm_gain - 1.0)
            else:
                model.model.norm.weight.mul_(final_norm_gain)
    n_params = sum(p.numel() for p in model.parameters())
    if n_params > max_params:
        raise RuntimeError(f"test model {family} has {n_params} parameters, over {max_params}")
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory


def build_sharp_model(family: str, directory: Path, seed: int = 0) -> Path:
    """A tiny random `family` model with sharp logits (see SHARP)."""
    return build_tiny_model(family, directory, seed=seed, **SHARP)
