"""Prompts of trait files through a model's chat template, as token ids.

A model without a chat template (a base checkpoint) gets plain text instead: the messages'
texts joined by a space (system, then each earlier exchange's question and answer, then the
question), as the pretraining paper does for base checkpoints, tokenized with the tokenizer's
own special tokens (its BOS)."""

from __future__ import annotations


def has_template(tokenizer) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def plain_text(messages: list[dict]) -> str:
    """The prompt of a model without a chat template: every message's text joined by a space."""
    return " ".join(m["content"] for m in messages if m["content"])


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` rendered with the chat template and the generation prompt (the
    rendered text is tokenized without special tokens: the template already holds them); without
    a chat template, `plain_text(messages)` with the tokenizer's special tokens."""
    if not has_template(tokenizer):
        return list(tokenizer(plain_text(messages))["input_ids"])
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def system_text(messages: list[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "system"), "")


def user_text(messages: list[dict]) -> str:
    """The last user turn: the question (after any example exchanges)."""
    return next(m["content"] for m in reversed(messages) if m["role"] == "user")
