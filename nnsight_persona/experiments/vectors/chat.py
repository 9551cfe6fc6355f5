"""Prompts of trait files through a model's chat template, as token ids."""

from __future__ import annotations


def render(tokenizer, messages: list[dict]) -> list[int]:
    """Token ids of `messages` rendered with the chat template and the generation prompt (the
    rendered text is tokenized without special tokens: the template already holds them)."""
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def system_text(messages: list[dict]) -> str:
    return next((m["content"] for m in messages if m["role"] == "system"), "")


def user_text(messages: list[dict]) -> str:
    return next(m["content"] for m in messages if m["role"] == "user")
