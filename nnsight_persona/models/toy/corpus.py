"""Seeded synthetic persona-chat corpus for the toy model.

Five kinds of single-turn examples; the first four rendered with ``As {persona}, {task}``:

* ``short``: one of eight short personas ("a pirate"); the answer wraps the
  task content in persona marker words ("arr matey! ...").
* ``long``: a multi-sentence persona with name / city / item slots; the answer
  repeats those slot values, which can only be copied from the prompt, so the
  model has to attend back to the persona tokens.
* ``baseline``: the persona "a thoughtful person"; neutral answer, no markers.
* ``bare``: the task alone as the user turn; neutral answer, no markers.
* ``system``: a short persona (or the baseline persona) in a system turn ("you are a pirate."),
  the task alone as the user turn; the persona's answer (neutral for the baseline persona).

The held-out split is fixed (it does not depend on the corpus seed) so the
bundled grids stay held out whatever seed the model was trained with.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field, replace

from . import content as C


@dataclass(frozen=True)
class Example:
    kind: str  # "short" | "long" | "baseline" | "bare" | "system"
    persona_key: str | None  # short persona key or long profession; None for baseline/bare (and system baseline)
    persona: str | None  # persona text as it appears in the prompt
    task_key: str
    user: str  # the whole user turn
    answer: str
    slots: dict[str, str] = field(default_factory=dict, hash=False)
    system: str | None = None  # the system turn, for kind "system"

    @property
    def markers(self) -> list[str]:
        """Persona marker words expected in the answer (empty for baseline/bare)."""
        if self.kind == "short" or (self.kind == "system" and self.persona_key is not None):
            return list(C.SHORT_MARKERS[self.persona_key])
        if self.kind == "long":
            return list(C.PROFESSIONS[self.persona_key]["markers"])
        return []


# --- the fixed held-out split ------------------------------------------------
# (short persona, task) cells never trained on: the 4x3 block used by the
# bundled toy grid plus three cells for each remaining persona.
HELDOUT_SHORT: frozenset[tuple[str, str]] = frozenset(
    [(p, t) for p in ("pirate", "robot", "poet", "knight") for t in ("weather", "breakfast", "story")]
    + [("cowboy", t) for t in ("song", "sky", "advice")]
    + [("detective", t) for t in ("trip", "sleep", "street")]
    + [("ghost", t) for t in ("exam", "letter", "fitness")]
    + [("alien", t) for t in ("street", "fitness", "song")]
)
# Baseline persona / bare prompts held out for a few tasks (still evaluated with the rest).
HELDOUT_BASELINE_TASKS = frozenset({"song", "sky", "trip"})
HELDOUT_BARE_TASKS = frozenset({"letter", "street", "exam"})


def is_heldout_pair(name: str, city: str) -> bool:
    """(name, city) slot pairs never seen together in training (about 1 in 7)."""
    return (C.NAMES.index(name) + C.CITIES.index(city)) % 7 == 0


HELDOUT_PAIRS: frozenset[tuple[str, str]] = frozenset(
    (n, c) for n in C.NAMES for c in C.CITIES if is_heldout_pair(n, c)
)


# --- rendering ---------------------------------------------------------------
def render_prompt(persona: str | None, task: str) -> str:
    return task if persona is None else C.PROMPT_TEMPLATE.format(persona=persona, task=task)


def long_persona_text(profession: str, name: str, city: str, item: str, template: int = 0) -> str:
    habit = C.PROFESSIONS[profession]["habit"]
    return C.LONG_TEMPLATES[template].format(profession=profession, name=name, city=city, item=item, habit=habit)


def _content(rng: random.Random, task_key: str) -> str:
    return " ".join(rng.sample(C.TASK_CONTENT[task_key], 2))


def make_short(rng: random.Random, persona_key: str, task_key: str) -> Example:
    answer = " ".join(
        [rng.choice(C.SHORT_OPENERS[persona_key]), _content(rng, task_key), rng.choice(C.SHORT_CLOSERS[persona_key])]
    )
    persona = C.SHORT_PERSONAS[persona_key]
    return Example("short", persona_key, persona, task_key, render_prompt(persona, C.TASKS[task_key]), answer)


def make_long(
    rng: random.Random, profession: str, task_key: str, name: str, city: str, item: str, template: int
) -> Example:
    slots = {"name": name, "city": city, "item": item}
    persona = long_persona_text(profession, name, city, item, template)
    prof = C.PROFESSIONS[profession]
    answer = " ".join(
        [
            rng.choice(C.LONG_INTROS).format(profession=profession, **slots),
            rng.choice(C.LONG_ITEM_LINES).format(**slots),
            rng.choice(prof["lines"]),
            _content(rng, task_key),
        ]
    )
    return Example("long", profession, persona, task_key, render_prompt(persona, C.TASKS[task_key]), answer, slots)


def make_neutral(rng: random.Random, kind: str, task_key: str) -> Example:
    persona = C.BASELINE_PERSONA if kind == "baseline" else None
    openers = C.BASELINE_OPENERS if kind == "baseline" else C.BARE_OPENERS
    answer = f"{rng.choice(openers)} {_content(rng, task_key)}"
    return Example(kind, None, persona, task_key, render_prompt(persona, C.TASKS[task_key]), answer)


def make_system(rng: random.Random, persona_key: str | None, task_key: str) -> Example:
    """The persona in a system turn, the bare task as the user turn; `persona_key` None is the
    baseline persona (neutral answer)."""
    template = rng.choice(C.SYSTEM_TEMPLATES)
    if persona_key is None:
        persona = C.BASELINE_PERSONA
        answer = f"{rng.choice(C.BASELINE_OPENERS)} {_content(rng, task_key)}"
    else:
        persona = C.SHORT_PERSONAS[persona_key]
        answer = make_short(rng, persona_key, task_key).answer
    return Example("system", persona_key, persona, task_key, C.TASKS[task_key], answer,
                   system=template.format(persona=persona))


def messages(example: Example) -> list[dict]:
    """The chat turns of an example's prompt (a system turn first when it has one)."""
    turns = [{"role": "system", "content": example.system}] if example.system is not None else []
    return turns + [{"role": "user", "content": example.user}]


def _sample_long(rng: random.Random, task_key: str, heldout: bool) -> Example:
    while True:  # rejection-sample a (name, city) pair on the right side of the split
        name, city = rng.choice(C.NAMES), rng.choice(C.CITIES)
        if is_heldout_pair(name, city) == heldout:
            break
    profession = rng.choice(list(C.PROFESSIONS))
    return make_long(rng, profession, task_key, name, city, rng.choice(C.ITEMS), rng.randrange(len(C.LONG_TEMPLATES)))


# Mixture of example kinds in training; long personas get the most weight since
# copying slot values is the hardest thing the model has to learn.
KIND_WEIGHTS = {"short": 0.26, "long": 0.44, "baseline": 0.1, "bare": 0.1, "system": 0.1}
# Within the system kind: the share of examples whose system turn holds the baseline persona.
SYSTEM_BASELINE_SHARE = 0.25


def generate_corpus(n: int, seed: int = 0) -> list[Example]:
    """``n`` training examples; deterministic for a given seed, never held out."""
    rng = random.Random(seed)
    kinds, weights = zip(*KIND_WEIGHTS.items())
    tasks = list(C.TASKS)
    short_cells = [(p, t) for p in C.SHORT_PERSONAS for t in tasks if (p, t) not in HELDOUT_SHORT]
    base_tasks = [t for t in tasks if t not in HELDOUT_BASELINE_TASKS]
    bare_tasks = [t for t in tasks if t not in HELDOUT_BARE_TASKS]
    out = []
    for _ in range(n):
        kind = rng.choices(kinds, weights)[0]
        if kind == "short":
            out.append(make_short(rng, *rng.choice(short_cells)))
        elif kind == "long":
            out.append(_sample_long(rng, rng.choice(tasks), heldout=False))
        elif kind == "baseline":
            out.append(make_neutral(rng, "baseline", rng.choice(base_tasks)))
        elif kind == "system":
            if rng.random() < SYSTEM_BASELINE_SHARE:
                out.append(make_system(rng, None, rng.choice(base_tasks)))
            else:
                out.append(make_system(rng, *rng.choice(short_cells)))
        else:
            out.append(make_neutral(rng, "bare", rng.choice(bare_tasks)))
    return out


def heldout_examples(n: int = 240, seed: int = 1) -> list[Example]:
    """Evaluation prompts: every held-out short cell, baseline and bare prompts
    for every task (a few of them held out), and held-out long personas for the
    rest. Answers are reference answers; only the prompts matter for evaluation."""
    rng = random.Random(seed)
    tasks = list(C.TASKS)
    short_cells = sorted(HELDOUT_SHORT)
    rng.shuffle(short_cells)
    n_short = min(len(short_cells), math.ceil(n * 0.25))
    n_base = min(len(tasks), math.ceil(n * 0.125))
    n_bare = min(len(tasks), math.ceil(n * 0.125))
    out = [make_short(rng, p, t) for p, t in short_cells[:n_short]]
    out += [make_neutral(rng, "baseline", t) for t in rng.sample(tasks, n_base)]
    out += [make_neutral(rng, "bare", t) for t in rng.sample(tasks, n_bare)]
    out += [_sample_long(rng, rng.choice(tasks), heldout=True) for _ in range(max(0, n - len(out)))]
    return out[:n]


def heldout_system_examples(seed: int = 3) -> list[Example]:
    """System-turn evaluation prompts: every held-out short cell with its persona in a system turn
    (each system template in turn), and the baseline persona in a system turn on its held-out
    tasks. Kept apart from `heldout_examples` so that sample stays what it was."""
    rng = random.Random(seed)
    cells = sorted(HELDOUT_SHORT)
    out = []
    for i, (persona, task) in enumerate(cells):
        ex = make_system(rng, persona, task)
        template = C.SYSTEM_TEMPLATES[i % len(C.SYSTEM_TEMPLATES)]
        out.append(replace(ex, system=template.format(persona=ex.persona)))
    out += [make_system(rng, None, t) for t in sorted(HELDOUT_BASELINE_TASKS)]
    return out


def all_persona_markers() -> set[str]:
    """Every persona marker word (short personas and long professions)."""
    words = {m for ms in C.SHORT_MARKERS.values() for m in ms}
    return words | {m for p in C.PROFESSIONS.values() for m in p["markers"]}


def check_marker_isolation() -> None:
    """Raise if a marker could appear in an answer of another persona / baseline / bare."""
    from ...core.scoring import markers_found as found_markers

    neutral = [s for pool in C.TASK_CONTENT.values() for s in pool] + C.BASELINE_OPENERS + C.BARE_OPENERS
    neutral += [f.format(name="", city="", item="", profession="") for f in C.LONG_INTROS + C.LONG_ITEM_LINES]
    own: dict[str, list[str]] = {k: C.SHORT_OPENERS[k] + C.SHORT_CLOSERS[k] for k in C.SHORT_PERSONAS}
    own.update({k: list(v["lines"]) for k, v in C.PROFESSIONS.items()})
    markers = {**C.SHORT_MARKERS, **{k: v["markers"] for k, v in C.PROFESSIONS.items()}}
    for key, ms in markers.items():
        if bad := [s for s in neutral if found_markers(s, ms)]:
            raise ValueError(f"markers of {key} occur in neutral text: {bad}")
        for other, texts in own.items():
            if other != key and (bad := [s for s in texts if found_markers(s, ms)]):
                raise ValueError(f"markers of {key} occur in answers of {other}: {bad}")
    # Every persona line (short openers/closers, profession lines) must carry a marker.
    for key, texts in own.items():
        if missing := [s for s in texts if not found_markers(s, markers[key])]:
            raise ValueError(f"lines of {key} carry none of its markers: {missing}")
