"""Greedy-generation evaluation of the toy model on held-out prompts."""

from __future__ import annotations

import re
from pathlib import Path

from ...core.scoring import contains_marker
from .corpus import Example, all_persona_markers, heldout_examples, heldout_system_examples, messages

# Acceptance thresholds (see docs/toy-model.md).
THRESHOLDS = {
    "persona_marker_rate": (">=", 0.90),
    "neutral_leak_rate": ("<", 0.05),
    "long_copy_rate": (">=", 0.80),
    "system_marker_rate": (">=", 0.90),
    "system_baseline_leak_rate": ("<", 0.05),
}


def load(model_dir: str | Path | None = None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from . import TOY_MODEL_DIR

    model_dir = Path(model_dir or TOY_MODEL_DIR)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, attn_implementation="eager")
    return model.eval(), tokenizer


def generate(model, tokenizer, users: list, batch_size: int = 48, max_new_tokens: int = 80) -> list[str]:
    """Greedy answers to single user turns (strings) or to chat-turn lists, batched with left padding."""
    import torch

    tokenizer.padding_side = "left"
    answers: list[str] = []
    for i in range(0, len(users), batch_size):
        prompts = tokenizer.apply_chat_template(
            [[{"role": "user", "content": u}] if isinstance(u, str) else u for u in users[i : i + batch_size]],
            add_generation_prompt=True, tokenize=False,
        )
        enc = tokenizer(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **enc, do_sample=False, max_new_tokens=max_new_tokens,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )
        new = out[:, enc.input_ids.shape[1] :]
        answers += [a.strip() for a in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def _rate(flags: list[bool]) -> float:
    return sum(flags) / len(flags) if flags else float("nan")


def score(examples: list[Example], answers: list[str]) -> dict:
    """Marker, leak and copy metrics for generated ``answers``."""
    every_marker = sorted(all_persona_markers())
    by_kind: dict[str, list[tuple[Example, str]]] = {}
    for ex, ans in zip(examples, answers):
        by_kind.setdefault(ex.kind, []).append((ex, ans))
    hit = {k: [contains_marker(a, e.markers) for e, a in by_kind.get(k, [])] for k in ("short", "long")}
    leak = {k: [contains_marker(a, every_marker) for e, a in by_kind.get(k, [])] for k in ("baseline", "bare")}
    longs = by_kind.get("long", [])
    slot_ok = {s: [contains_marker(a, [e.slots[s]]) for e, a in longs] for s in ("name", "city", "item")}
    metrics = {
        "n": len(examples),
        "n_short": len(hit["short"]),
        "n_long": len(hit["long"]),
        "n_baseline": len(leak["baseline"]),
        "n_bare": len(leak["bare"]),
        "persona_marker_rate": _rate(hit["short"] + hit["long"]),
        "short_marker_rate": _rate(hit["short"]),
        "long_marker_rate": _rate(hit["long"]),
        "neutral_leak_rate": _rate(leak["baseline"] + leak["bare"]),
        "baseline_leak_rate": _rate(leak["baseline"]),
        "bare_leak_rate": _rate(leak["bare"]),
        "long_copy_rate": _rate([all(flags) for flags in zip(*slot_ok.values())]),
        **{f"long_slot_{s}": _rate(flags) for s, flags in slot_ok.items()},
    }
    metrics["passed"] = passes(metrics)
    return metrics


# Slot values that never occur in the training corpus (toy/content.py): whether the model COPIES a
# value from the persona text, rather than recalls one of the names it was trained on.
NOVEL_SLOTS = {
    "name": ["anouk", "bjorn", "chidi", "dagny", "emeka", "farida", "goran", "hilde", "ilkay", "jurgen"],
    "city": ["tromso", "arequipa", "gdansk", "mombasa", "tartu", "ghent", "oaxaca", "sapporo", "izmir", "bilbao"],
    "item": ["abacus", "trowel", "ukulele", "kazoo", "ladle", "barometer", "quill", "sextant", "bellows", "hourglass"],
}


def novel_examples(novel: tuple[str, ...], n: int = 60, seed: int = 2) -> list[Example]:
    """Long-persona prompts whose `novel` slots (a subset of name, city, item) hold values absent
    from the corpus; the other slots are drawn from the training lists."""
    import random

    from . import content as C
    from .corpus import make_long

    known = {"name": C.NAMES, "city": C.CITIES, "item": C.ITEMS}
    corpus_words = set(re.findall(r"[a-z]+", " ".join(_strings(vars(C)))))
    for slot in novel:
        clash = set(NOVEL_SLOTS[slot]) & corpus_words
        if clash:
            raise ValueError(f"novel {slot} values {sorted(clash)} occur in the toy's corpus text")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        values = {s: rng.choice(NOVEL_SLOTS[s] if s in novel else known[s]) for s in ("name", "city", "item")}
        out.append(make_long(rng, rng.choice(list(C.PROFESSIONS)), rng.choice(list(C.TASKS)), values["name"],
                             values["city"], values["item"], rng.randrange(len(C.LONG_TEMPLATES))))
    return out


def novel_copy_rates(model, tokenizer, n: int = 60, batch_size: int = 48) -> dict:
    """Copy rate of each slot when its value is novel (one slot novel at a time), and of all three
    together when all are novel; plus the persona-marker rate of those answers."""
    rates = {}
    for novel in (("name",), ("city",), ("item",), ("name", "city", "item")):
        examples = novel_examples(novel, n)
        answers = generate(model, tokenizer, [e.user for e in examples], batch_size=batch_size)
        key = "+".join(novel)
        rates[f"novel_{key}_copied"] = _rate([all(contains_marker(a, [e.slots[s]]) for s in novel)
                                              for e, a in zip(examples, answers)])
        rates[f"novel_{key}_marker_rate"] = _rate([contains_marker(a, e.markers) for e, a in zip(examples, answers)])
    return rates


def _strings(value) -> list[str]:
    """Every string inside nested dicts, lists and tuples (the corpus content module's constants)."""
    if isinstance(value, str):
        return [value.lower()]
    if isinstance(value, dict):
        return [s for k, v in value.items() if not str(k).startswith("__") for s in _strings(k) + _strings(v)]
    if isinstance(value, (list, tuple, set)):
        return [s for v in value for s in _strings(v)]
    return []


def system_scores(examples: list[Example], answers: list[str]) -> dict:
    """Marker rate of personas given in a system turn, and the leak rate of the baseline persona
    given there."""
    every_marker = sorted(all_persona_markers())
    persona = [contains_marker(a, e.markers) for e, a in zip(examples, answers) if e.persona_key is not None]
    baseline = [contains_marker(a, every_marker) for e, a in zip(examples, answers) if e.persona_key is None]
    return {"n_system": len(persona), "n_system_baseline": len(baseline),
            "system_marker_rate": _rate(persona), "system_baseline_leak_rate": _rate(baseline)}


def passes(metrics: dict) -> bool:
    ok = {">=": lambda a, b: a >= b, "<": lambda a, b: a < b}
    return all(ok[op](metrics[k], v) for k, (op, v) in THRESHOLDS.items() if k in metrics)


def evaluate(model_dir: str | Path | None = None, n: int = 240, seed: int = 1, batch_size: int = 48,
             return_samples: bool = False, threads: int = 2, novel: int = 0) -> dict:
    """Generate on ``n`` held-out prompts and return the metrics dict; with `novel` > 0, also the
    copy rates of slot values absent from the corpus on that many prompts per case. `threads` holds
    for the evaluation only (settings.torch_settings)."""
    from .settings import torch_settings

    with torch_settings(threads):
        return _evaluate(model_dir, n, seed, batch_size, return_samples, novel)


def _evaluate(model_dir, n: int, seed: int, batch_size: int, return_samples: bool, novel: int) -> dict:
    model, tokenizer = load(model_dir)
    examples = heldout_examples(n, seed=seed)
    answers = generate(model, tokenizer, [e.user for e in examples], batch_size=batch_size)
    metrics = score(examples, answers)
    system = heldout_system_examples()
    system_answers = generate(model, tokenizer, [messages(e) for e in system], batch_size=batch_size)
    metrics.update(system_scores(system, system_answers))
    metrics.pop("passed")
    metrics["passed"] = passes(metrics)  # last, over every threshold
    if novel:
        metrics.update(novel_copy_rates(model, tokenizer, novel, batch_size))
    if return_samples:
        metrics["samples"] = [
            {"kind": e.kind, "system": e.system, "user": e.user, "answer": a}
            for e, a in zip(examples + system, answers + system_answers)
        ]
    return metrics
