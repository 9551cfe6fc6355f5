"""Render grid prompts through a model's own chat template and locate the named token positions.

Named positions (the prompt-to-answer transition of the paper):
- ``p_user_last``: the paper's definition: the last token of the template rendered WITHOUT the
  generation prompt, i.e. the end-of-turn token (or the newline after it) that closes the user turn;
- ``p_last``: the last prompt token (the end of the generation header);
- ``g1``, ``g2``: the first and second generated positions, i.e. where the first and second clean
  continuation tokens sit when they are teacher-forced after the prompt;
- ``p_user_text_last`` (not a default; an earlier version of this package called it p_user_last):
  the token that holds the last character of the user text itself.
Indices are into the unpadded token sequence; batching adds the left-pad offset (see ``batching``).

Scoring windows: a probe before the prompt's end (p_user_last, p_user_text_last) is scored, like
p_last, on the next-token distributions from p_last on (the clean continuation), never on
predictions of template tokens; g1 and g2 from the probe on. ``window_start`` gives that column.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import SelectionError

POSITIONS = ("p_user_last", "p_last", "g1", "g2")  # the paper's, and the default selection
ALL_POSITIONS = ("p_user_text_last",) + POSITIONS  # every name a selection accepts, in token order
GENERATED_POSITIONS = {"g1": 0, "g2": 1}


@dataclass(frozen=True)
class Prompt:
    """One rendered prompt: the text after the chat template and its token ids."""

    user_text: str
    text: str
    ids: tuple[int, ...]
    p_user_last: int  # the paper's: last token of the template without the generation prompt
    persona_span: tuple[int, int]  # token indices [start, end) of the persona text; (0, 0) if none
    p_user_text_last: int = -1  # the token holding the user text's last character

    @property
    def p_last(self) -> int:
        return len(self.ids) - 1

    def position(self, name: str) -> int:
        """Token index of a named position; generated positions count from the prompt's end."""
        if name == "p_user_last":
            return self.p_user_last
        if name == "p_user_text_last":
            return self.p_user_text_last
        if name == "p_last":
            return self.p_last
        if name in GENERATED_POSITIONS:
            return len(self.ids) + GENERATED_POSITIONS[name]
        raise SelectionError(f"unknown position {name!r}; allowed: {list(ALL_POSITIONS)}")

    def window_start(self, name: str) -> int:
        """Token index of the first next-token distribution scored for a probe at `name`: the
        probe itself for p_last, g1, g2; p_last for probes inside the prompt (the paper scores
        the same clean continuation tokens for p_user_last as for p_last)."""
        return max(self.position(name), self.p_last)


def render_prompt(tokenizer, user_text: str, persona_text: str | None = None) -> Prompt:
    """Apply the chat template (one user turn, generation prompt) and find positions and spans."""
    messages = [{"role": "user", "content": user_text}]
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    closed = tokenizer.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    if not closed or not text.startswith(closed):
        raise SelectionError(
            "the chat template rendered without the generation prompt is not a prefix of the one with "
            f"it, so p_user_last (the last token of the closed user turn) cannot be located; user text: {user_text!r}"
        )
    content = user_text.strip()  # some templates (Gemma, Llama) trim the content
    start = text.rfind(content)
    if start < 0:
        raise SelectionError(
            "the chat template does not reproduce the user text verbatim, so token positions cannot "
            f"be located; user text: {user_text!r}"
        )
    end = start + len(content)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = enc["offset_mapping"]
    ids = tuple(enc["input_ids"])
    p_user_text_last = _token_covering(offsets, end - 1)
    p_user_last = _token_covering(offsets, len(closed) - 1)
    span = (0, 0)
    if persona_text:
        rel = content.find(persona_text.strip())
        if rel < 0:
            raise SelectionError(f"persona text {persona_text!r} not found in user text {user_text!r}")
        c0 = start + rel
        span = _token_span(offsets, c0, c0 + len(persona_text.strip()))
    return Prompt(user_text=user_text, text=text, ids=ids, p_user_last=p_user_last, persona_span=span,
                  p_user_text_last=p_user_text_last)


def _token_covering(offsets, char: int) -> int:
    for i, (a, b) in enumerate(offsets):
        if a <= char < b:
            return i
    raise SelectionError(f"no token covers character {char} of the rendered prompt")


def _token_span(offsets, c0: int, c1: int) -> tuple[int, int]:
    """Tokens whose characters overlap [c0, c1), as a half-open index range."""
    hits = [i for i, (a, b) in enumerate(offsets) if a < c1 and b > c0 and b > a]
    if not hits:
        raise SelectionError(f"no tokens cover characters {c0}..{c1} of the rendered prompt")
    return hits[0], hits[-1] + 1
