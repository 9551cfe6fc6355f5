"""Independent computations with plain transformers, one prompt at a time, for agreement tests."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM

from tolerances import SCORES


def load_plain(path, attn="eager"):
    return AutoModelForCausalLM.from_pretrained(str(path), attn_implementation=attn, dtype=torch.float32).eval()


@torch.no_grad()
def hidden_states(model, ids: list[int]) -> list[torch.Tensor]:
    """Residual stream at every layer for one unpadded sequence, in this package's convention:
    hidden_states[0..n-1] from output_hidden_states, layer n = last block's raw output (a hook)."""
    captured = {}
    last = model.model.layers[-1]
    handle = last.register_forward_hook(lambda m, i, o: captured.__setitem__("top", o[0] if isinstance(o, tuple) else o))
    try:
        out = model(torch.tensor([ids]), output_hidden_states=True)
    finally:
        handle.remove()
    return [h[0] for h in out.hidden_states[:-1]] + [captured["top"][0]]


@torch.no_grad()
def greedy(model, ids: list[int], n: int, pad_id: int) -> list[int]:
    out = model.generate(torch.tensor([ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=pad_id)
    return out[0, len(ids):].tolist()


@torch.no_grad()
def patched_logits(model, ids: list[int], layer: int, pos: int, vector: torch.Tensor, extra=(), adds=()) -> torch.Tensor:
    """Logits [T, V] of one unpadded sequence with the residual at (layer, pos) replaced, using
    the reference's mechanism: a forward pre-hook on block `layer` (a forward hook on the last
    block for the top layer, which has no block after it). `extra`: more (layer, pos, vector)
    replacements; `adds`: (layer, from_pos, delta) added at every position >= from_pos."""
    blocks = model.model.layers
    n = len(blocks)
    by_layer = {}
    for L, p, v in [(layer, pos, vector), *extra]:
        by_layer.setdefault(L, []).append(("set", p, v))
    for L, p, d in adds:
        by_layer.setdefault(L, []).append(("add", p, d))

    def edit(L):
        def apply(h):
            h = h.clone()
            for kind, p, v in by_layer[L]:
                if kind == "set":
                    h[0, p] = v.to(h.dtype)
                else:
                    h[0, p:] += v.to(h.dtype)
            return h
        return apply

    handles = []
    for L in by_layer:
        apply = edit(L)
        if L < n:
            def pre_hook(module, args, kwargs, apply=apply):
                if args:
                    return (apply(args[0]),) + tuple(args[1:]), kwargs
                kwargs["hidden_states"] = apply(kwargs["hidden_states"])
                return args, kwargs

            handles.append(blocks[L].register_forward_pre_hook(pre_hook, with_kwargs=True))
        else:
            handles.append(blocks[-1].register_forward_hook(
                lambda m, a, out, apply=apply: (apply(out[0]),) + tuple(out[1:]) if isinstance(out, tuple) else apply(out)
            ))
    try:
        return model(torch.tensor([ids])).logits[0].float()
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def summed_kl(clean_logits: torch.Tensor, patched: torch.Tensor, start: int, n: int, patched_start: int | None = None) -> float:
    """KL(clean || patched) summed over n positions (starting at `start` in the clean run and at
    `patched_start`, default the same, in the patched run)."""
    s2 = start if patched_start is None else patched_start
    p = clean_logits[start : start + n].log_softmax(-1)
    q = patched[s2 : s2 + n].log_softmax(-1)
    return float((p.exp() * (p - q)).sum())


@torch.no_grad()
def greedy_with_patch(model, ids, n, eos_ids, layer, pos, value=None, delta=None):
    """Plain greedy decoding (KV cache) with the reference's kind of hook on block `layer`: the
    prefill's residual at `pos` is replaced by `value`; with `delta`, every later single-token
    step adds `delta` at its new position. Stops at the first end-of-turn token."""

    def pre_hook(module, args, kwargs):
        h = args[0] if args else kwargs["hidden_states"]
        h = h.clone()
        if h.shape[1] > 1 and value is not None:
            h[0, pos] = value.to(h.dtype)
        elif h.shape[1] == 1 and delta is not None:
            h[0, -1] += delta.to(h.dtype)
        if args:
            return (h,) + tuple(args[1:]), kwargs
        kwargs["hidden_states"] = h
        return args, kwargs

    handle = model.model.layers[layer].register_forward_pre_hook(pre_hook, with_kwargs=True)
    try:
        out = []
        seq = torch.tensor([ids])
        past = None
        for _ in range(n):
            res = model(seq if past is None else seq[:, -1:], past_key_values=past, use_cache=True)
            past = res.past_key_values
            nxt = int(res.logits[0, -1].argmax())
            if nxt in eos_ids:
                break
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], dim=1)
        return out
    finally:
        handle.remove()


@torch.no_grad()
def logits_with_mask_knockout(model, ids: list[int], blocks: list[int], query_from: int, keys: list[int],
                              heads: dict | None = None) -> torch.Tensor:
    """Logits of one unpadded sequence when queries at positions >= query_from cannot read `keys`
    in the given blocks: an independent route, a forward pre-hook on each attention module that
    swaps in a rebuilt eager (additive float) mask (with the sliding window of sliding layers).
    `heads` {block: [head, ...]}: only those heads of a block are knocked out (default: all)."""
    n = len(ids)
    low = torch.finfo(torch.float32).min
    layer_types = getattr(model.config, "layer_types", None) or ["full_attention"] * len(model.model.layers)
    window = getattr(model.config, "sliding_window", None)

    def mask_for(block):
        mask = torch.full((n, n), low).triu(1)
        if layer_types[block] == "sliding_attention" and window:
            mask = mask.masked_fill(torch.ones(n, n, dtype=torch.bool).tril(-window), low)
        if heads is not None and block in heads:
            mask = mask.repeat(model.config.num_attention_heads, 1, 1)
            for h in heads[block]:
                for q in range(query_from, n):
                    for k in keys:
                        mask[h, q, k] = low
            return mask[None]
        for q in range(query_from, n):
            for k in keys:
                mask[q, k] = low
        return mask[None, None]

    def pre_hook_for(block):
        mask = mask_for(block)

        def pre_hook(module, args, kwargs):
            kwargs["attention_mask"] = mask
            return args, kwargs

        return pre_hook

    handles = [model.model.layers[b].self_attn.register_forward_pre_hook(pre_hook_for(b), with_kwargs=True) for b in blocks]
    try:
        return model(torch.tensor([ids])).logits[0].float()
    finally:
        for h in handles:
            h.remove()


# --- prompts, positions and vectors, written out without the package ---------------------------
CONDITIONS = ("BB", "XB", "BY", "XY")


def user_texts(grid: dict, persona: str, task: str) -> dict[str, str]:
    """The four user turns of cell (persona, task) from a grid's raw mapping (the YAML as loaded):
    B is the baseline persona or task, X the cell's persona, Y the cell's task."""
    template = grid.get("prompt_template", "As {persona}, {task}")
    who = {"B": grid["baseline"]["persona"], "X": grid["personas"][persona]}
    what = {"B": grid["baseline"]["task"], "Y": grid["tasks"][task]}
    return {c: template.format(persona=who[c[0]], task=what[c[1]]) for c in CONDITIONS}


def chat_prompt(tok, user_text: str) -> dict:
    """Token ids of one user turn through the chat template (generation prompt included), and the
    positions by their definitions: p_last = the last prompt token; p_user_last = the last token of
    the same template rendered without the generation prompt (found by tokenizing that prefix)."""
    messages = [{"role": "user", "content": user_text}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    closed = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
    ids = tok(text, add_special_tokens=False).input_ids
    closed_ids = tok(closed, add_special_tokens=False).input_ids
    assert ids[: len(closed_ids)] == closed_ids, "the closed turn does not tokenize as a prefix"
    n = len(ids)
    return {"ids": ids, "p_user_last": len(closed_ids) - 1, "p_last": n - 1, "g1": n, "g2": n + 1}


def replacement(h: dict, name: str) -> torch.Tensor:
    """A replacement vector from residuals h[condition] at one site (the paper's definitions)."""
    dx, dy = h["XB"] - h["BB"], h["BY"] - h["BB"]
    return {
        "additive": h["BB"] + dx + dy,
        "oracle": h["XY"],
        "baseline": h["BB"],
        "persona_only": h["BB"] + dx,
        "task_only": h["BB"] + dy,
        "remove_persona": h["XY"] - dx,
    }[name]


class Mismatches:
    """Collects (what, expected, got) where got is not within rel/abs of expected, so a failing
    check reports how many values were off and the worst of them, not just the first. Summed KLs
    one at a time: relative to the KL (tolerances.SCORES), with the same floor in nats for KLs near
    0, whose rounding is absolute (a difference of nearly equal log-probabilities)."""

    def __init__(self, rel=SCORES, abs_=SCORES):
        self.rel, self.abs, self.bad, self.n = rel, abs_, [], 0

    def check(self, what, expected: float, got: float) -> None:
        self.n += 1
        if not abs(got - expected) <= max(self.abs, self.rel * abs(expected)):
            self.bad.append((abs(got - expected), what, expected, got))

    def assert_none(self) -> None:
        if self.bad:
            _, what, expected, got = max(self.bad, key=lambda b: b[0])
            raise AssertionError(f"{len(self.bad)} of {self.n} values differ from the reference; "
                                 f"worst: {what}: expected {expected:.6g}, got {got:.6g}")


@torch.no_grad()
def answer_evidence(model, persona_ids: list[int], reference_ids: list[int], answer: list[int]) -> dict:
    """The evidence of one answer, written out: two unpadded forward passes of plain transformers
    (prompt + answer), the whole log-softmax, and the log-prob of answer token t read at the
    column before it (prompt length - 1 + t). Returns the mean and summed difference (persona -
    reference) and the reference's mean log-likelihood, in nats."""
    def summed(prompt):
        logits = model(torch.tensor([list(prompt) + list(answer)])).logits[0].float()
        logp = logits.log_softmax(-1)
        start = len(prompt)
        return sum(float(logp[start - 1 + t, answer[t]]) for t in range(len(answer)))

    with_persona, reference = summed(persona_ids), summed(reference_ids)
    n = len(answer)
    return {"evidence": (with_persona - reference) / n, "evidence_sum": with_persona - reference,
            "reference_logp": reference / n}
