"""Trait files: contrastive instruction pairs, extraction and evaluation questions, and what the
offline scorer looks for. Loaded strictly: every error is one line naming the file and the key.

A trait file (YAML) holds:
- ``name``; ``description`` (optional);
- ``elicitation``: ``system`` (the instruction goes in a system turn: "You are {assistant}
  assistant. {instruction}", as the original) or ``user`` (it goes in the user turn through
  ``user_template``, "As {instruction}, {question}" by default; an empty instruction leaves the
  question alone). The toy model has no system turn in its corpus, so its traits use ``user``;
- ``assistant`` (system elicitation): ``{pos: "an evil", neg: "a helpful"}``;
- ``instruction``: a list of ``{pos, neg}`` pairs;
- ``questions``: ``{extract: [...], eval: [...]}``;
- ``markers`` (optional): the lexicon of the offline scorer; ``ab_question`` (optional): the
  yes/no question the offline scorer asks the model itself about an answer;
- ``eval_prompt`` (optional): the judge prompt of an OpenAI-compatible scorer, with
  ``{question}`` and ``{answer}``;
- ``character`` (optional; the ``character`` and ``combined`` elicitation variants): third-person
  descriptions of the character, one ``{pos, neg}`` pair or a list of them ("The assistant is an
  evil character who ..."); an empty ``neg`` leaves that side without one;
- ``dialogue`` (optional; the ``two-shot`` and ``combined`` variants): example exchanges given as
  earlier chat turns, one ``{pos, neg}`` pair or a list of them, each side a list of
  ``{question, answer}`` (two of them: 2-shot), as many on both sides.

The elicitation variants (``VARIANTS``, chosen per run with ``vectors extract --elicitation``)
build each side's prompt from this material; see ``Trait.messages``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ...core.errors import PersonaError

TRAITS_DIR = Path(__file__).resolve().parents[3] / "experiments" / "traits"
ELICITATIONS = ("system", "user")
# What a prompt is made of: the instruction pairs (today's default), a third-person character
# description, example dialogue turns, or all three.
VARIANTS = ("instruction", "character", "two-shot", "combined")
MATERIAL = {"instruction": ("instruction",), "character": ("character",), "two-shot": ("dialogue",),
            "combined": ("instruction", "character", "dialogue")}  # the trait-file keys each variant uses
DEFAULT_USER_TEMPLATE = "As {instruction}, {question}"
_REQUIRED = ("name", "elicitation", "instruction", "questions")
_ALLOWED = set(_REQUIRED) | {"description", "assistant", "user_template", "markers", "ab_question", "eval_prompt",
                             "character", "dialogue"}


class TraitError(PersonaError):
    """A trait file or trait name that cannot be used."""


@dataclass(frozen=True)
class Trait:
    name: str
    elicitation: str
    pairs: tuple[tuple[str, str], ...]  # (pos, neg) instructions
    extract_questions: tuple[str, ...]
    eval_questions: tuple[str, ...]
    assistant: tuple[str, str] = ("", "")  # (pos, neg), system elicitation
    user_template: str = DEFAULT_USER_TEMPLATE
    markers: tuple[str, ...] = ()
    ab_question: str = ""
    eval_prompt: str = ""
    description: str = ""
    source: str = ""
    characters: tuple[tuple[str, str], ...] = ()  # (pos, neg) third-person descriptions
    dialogues: tuple = ()  # (pos, neg) pairs, each side a tuple of (question, answer) exchanges

    def n_pairs(self, variant: str = "instruction") -> int:
        """How many (pos, neg) prompt pairs a variant has: the instruction pairs (`instruction`,
        `combined`, which cycles through the descriptions and dialogues), the descriptions
        (`character`), the dialogues (`two-shot`)."""
        return {"character": len(self.characters), "two-shot": len(self.dialogues)}.get(variant, len(self.pairs))

    def messages(self, side: str, pair: int, question: str, variant: str = "instruction") -> list[dict]:
        """The chat messages of one prompt: side 'pos' or 'neg' of prompt pair `pair` under an
        elicitation variant, or side 'none' (the question alone, no instruction).

        - instruction: the instruction pair, in a system turn ("You are {assistant} assistant.
          {instruction}") or, for `elicitation: user`, in the user turn through `user_template`;
        - character: the third-person description, as the system turn (or before the question in
          the user turn, for `elicitation: user`);
        - two-shot: the dialogue's exchanges as earlier user / assistant turns, then the question;
        - combined: instruction + description in the system turn (or the user turn), after the
          dialogue turns."""
        if side == "none":
            return [{"role": "user", "content": question}]
        k = 0 if side == "pos" else 1
        if variant == "instruction":
            instruction = self.pairs[pair][k]
            if self.elicitation == "system":
                system = f"You are {self.assistant[k]} assistant. {instruction}".strip()
                return [{"role": "system", "content": system}, {"role": "user", "content": question}]
            user = self.user_template.format(instruction=instruction, question=question) if instruction else question
            return [{"role": "user", "content": user}]
        if variant not in VARIANTS:
            raise TraitError(f"unknown elicitation variant {variant!r}; allowed: {list(VARIANTS)}")
        parts = MATERIAL[variant]
        instruction = self.pairs[pair % len(self.pairs)][k] if "instruction" in parts else ""
        character = self.characters[pair % len(self.characters)][k] if "character" in parts else ""
        shots = self.dialogues[pair % len(self.dialogues)][k] if "dialogue" in parts else ()
        turns = [m for q, a in shots for m in ({"role": "user", "content": q}, {"role": "assistant", "content": a})]
        if self.elicitation == "system":
            system = f"You are {self.assistant[k]} assistant. {instruction}".strip() if "instruction" in parts else ""
            system = " ".join(t for t in (system, character) if t)
            head = [{"role": "system", "content": system}] if system else []
            return head + turns + [{"role": "user", "content": question}]
        user = self.user_template.format(instruction=instruction, question=question) if instruction else question
        user = " ".join(t for t in (character, user) if t)
        return turns + [{"role": "user", "content": user}]

    def check_variant(self, variant: str) -> None:
        """A one-line error naming the trait file and the missing key when a variant needs material
        the trait does not have."""
        if variant not in VARIANTS:
            raise TraitError(f"unknown elicitation variant {variant!r}; allowed: {list(VARIANTS)}")
        have = {"instruction": self.pairs, "character": self.characters, "dialogue": self.dialogues}
        for key in MATERIAL[variant]:
            if not have[key]:
                raise TraitError(f"{self.source or self.name}: the {variant!r} elicitation needs key {key!r}, "
                                 "which this trait file does not have")

    def to_dict(self) -> dict:
        return {
            "name": self.name, "elicitation": self.elicitation, "pairs": [list(p) for p in self.pairs],
            "extract_questions": list(self.extract_questions), "eval_questions": list(self.eval_questions),
            "assistant": list(self.assistant), "user_template": self.user_template, "markers": list(self.markers),
            "ab_question": self.ab_question, "eval_prompt": self.eval_prompt,
            "character": [list(c) for c in self.characters],
            "dialogue": [[[list(x) for x in side] for side in d] for d in self.dialogues],
        }


def list_traits() -> list[str]:
    return sorted(p.stem for p in TRAITS_DIR.glob("*.yaml")) if TRAITS_DIR.is_dir() else []


def load_trait(name_or_path: str | Path) -> Trait:
    """A bundled trait by name (experiments/traits/NAME.yaml) or any trait YAML file by path."""
    path = Path(name_or_path)
    if not path.exists():
        bundled = TRAITS_DIR / f"{name_or_path}.yaml"
        if not bundled.exists():
            raise TraitError(f"no trait named {str(name_or_path)!r} and no such file; bundled traits: {list_traits()}")
        path = bundled
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise TraitError(f"{path}: cannot read the trait file ({reason})") from None
    return trait_from_dict(data, where=str(path))


def _strings(where: str, key: str, value, allow_empty_items: bool = False) -> tuple[str, ...]:
    if not isinstance(value, list) or not value:
        raise TraitError(f"{where}: key {key!r} must be a non-empty list of strings")
    for i, item in enumerate(value):
        if not isinstance(item, str) or (not allow_empty_items and not item.strip()):
            raise TraitError(f"{where}: key {key}[{i}] must be a non-empty string, got {item!r}")
    return tuple(value)


def trait_from_dict(data: object, where: str = "trait") -> Trait:
    if not isinstance(data, dict):
        raise TraitError(f"{where}: a trait file must be a mapping with keys {list(_REQUIRED)}")
    unknown = sorted(set(data) - _ALLOWED)
    if unknown:
        raise TraitError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_ALLOWED)}")
    for key in _REQUIRED:
        if key not in data:
            raise TraitError(f"{where}: missing key {key!r}; a trait needs {list(_REQUIRED)}")
    name = data["name"]
    if not isinstance(name, str) or not name.strip():
        raise TraitError(f"{where}: key 'name' must be a non-empty string")
    elicitation = data["elicitation"]
    if elicitation not in ELICITATIONS:
        raise TraitError(f"{where}: key 'elicitation' is {elicitation!r}; allowed: {list(ELICITATIONS)}")
    pairs_raw = data["instruction"]
    if not isinstance(pairs_raw, list) or not pairs_raw:
        raise TraitError(f"{where}: key 'instruction' must be a non-empty list of {{pos, neg}} pairs")
    pairs = []
    for i, pair in enumerate(pairs_raw):
        if not isinstance(pair, dict) or set(pair) != {"pos", "neg"}:
            got = sorted(pair) if isinstance(pair, dict) else type(pair).__name__
            raise TraitError(f"{where}: key instruction[{i}] must be a pair with exactly 'pos' and 'neg', got {got}")
        for side in ("pos", "neg"):
            if not isinstance(pair[side], str):
                raise TraitError(f"{where}: key instruction[{i}].{side} must be a string")
        # In a system turn the assistant's name already carries the trait ("You are an evil
        # assistant."), so the instruction may be empty there; in the user turn it is all there is.
        if not pair["pos"].strip() and data.get("elicitation") != "system":
            raise TraitError(f"{where}: key instruction[{i}].pos is empty; the positive side needs an instruction "
                             "(it may be empty only with elicitation: system)")
        pairs.append((pair["pos"], pair["neg"]))
    questions = data["questions"]
    if not isinstance(questions, dict) or set(questions) != {"extract", "eval"}:
        got = sorted(questions) if isinstance(questions, dict) else type(questions).__name__
        raise TraitError(f"{where}: key 'questions' must be a mapping with 'extract' and 'eval' lists, got {got}")
    extract = _strings(where, "questions.extract", questions["extract"])
    evaluate = _strings(where, "questions.eval", questions["eval"])
    assistant = ("", "")
    if elicitation == "system":
        a = data.get("assistant")
        if not isinstance(a, dict) or set(a) != {"pos", "neg"} or not all(isinstance(a[s], str) and a[s] for s in a):
            raise TraitError(f"{where}: key 'assistant' must be {{pos: ..., neg: ...}} (e.g. pos: an evil, neg: a helpful) "
                             "for system elicitation")
        assistant = (a["pos"], a["neg"])
    template = data.get("user_template", DEFAULT_USER_TEMPLATE)
    if not isinstance(template, str) or "{instruction}" not in template or "{question}" not in template:
        raise TraitError(f"{where}: key 'user_template' must be a string with {{instruction}} and {{question}}")
    markers = _strings(where, "markers", data["markers"]) if "markers" in data else ()
    for key in ("ab_question", "eval_prompt", "description"):
        if key in data and not isinstance(data[key], str):
            raise TraitError(f"{where}: key {key!r} must be a string")
    eval_prompt = data.get("eval_prompt", "")
    if eval_prompt and ("{question}" not in eval_prompt or "{answer}" not in eval_prompt):
        raise TraitError(f"{where}: key 'eval_prompt' must contain {{question}} and {{answer}}")
    characters = _characters(where, data["character"]) if "character" in data else ()
    dialogues = _dialogues(where, data["dialogue"]) if "dialogue" in data else ()
    if not markers and not data.get("ab_question") and not eval_prompt:
        raise TraitError(f"{where}: a trait needs 'markers', 'ab_question' or 'eval_prompt' so its answers can be scored")
    return Trait(
        name=name, elicitation=elicitation, pairs=tuple(pairs), extract_questions=extract, eval_questions=evaluate,
        assistant=assistant, user_template=template, markers=markers, ab_question=data.get("ab_question", ""),
        eval_prompt=eval_prompt, description=data.get("description", ""), source=where,
        characters=characters, dialogues=dialogues,
    )


def _pair_list(where: str, key: str, value) -> list:
    """One {pos, neg} mapping or a non-empty list of them."""
    items = [value] if isinstance(value, dict) else value
    if not isinstance(items, list) or not items:
        raise TraitError(f"{where}: key {key!r} must be a {{pos, neg}} pair or a non-empty list of them")
    for i, item in enumerate(items):
        if not isinstance(item, dict) or set(item) != {"pos", "neg"}:
            got = sorted(item) if isinstance(item, dict) else type(item).__name__
            raise TraitError(f"{where}: key {key}[{i}] must be a pair with exactly 'pos' and 'neg', got {got}")
    return items


def _characters(where: str, value) -> tuple[tuple[str, str], ...]:
    out = []
    for i, item in enumerate(_pair_list(where, "character", value)):
        for side in ("pos", "neg"):
            if not isinstance(item[side], str):
                raise TraitError(f"{where}: key character[{i}].{side} must be a string")
        if not item["pos"].strip():
            raise TraitError(f"{where}: key character[{i}].pos is empty; the positive side needs a description")
        out.append((item["pos"], item["neg"]))
    return tuple(out)


def _dialogues(where: str, value) -> tuple:
    out = []
    for i, item in enumerate(_pair_list(where, "dialogue", value)):
        sides = []
        for side in ("pos", "neg"):
            turns = item[side]
            if not isinstance(turns, list) or not turns:
                raise TraitError(f"{where}: key dialogue[{i}].{side} must be a non-empty list of {{question, answer}}")
            exchanges = []
            for j, turn in enumerate(turns):
                if not isinstance(turn, dict) or set(turn) != {"question", "answer"}:
                    got = sorted(turn) if isinstance(turn, dict) else type(turn).__name__
                    raise TraitError(f"{where}: key dialogue[{i}].{side}[{j}] must have exactly 'question' and "
                                     f"'answer', got {got}")
                for field in ("question", "answer"):
                    if not isinstance(turn[field], str) or not turn[field].strip():
                        raise TraitError(f"{where}: key dialogue[{i}].{side}[{j}].{field} must be a non-empty string")
                exchanges.append((turn["question"], turn["answer"]))
            sides.append(tuple(exchanges))
        if len(sides[0]) != len(sides[1]):
            raise TraitError(f"{where}: key dialogue[{i}] has {len(sides[0])} pos and {len(sides[1])} neg exchanges; "
                             "give both sides as many")
        out.append(tuple(sides))
    return tuple(out)


def trait_from_spec(d: dict) -> Trait:
    """A Trait from its to_dict() (as recorded in a dataset's spec)."""
    return Trait(
        name=d["name"], elicitation=d["elicitation"], pairs=tuple(tuple(p) for p in d["pairs"]),
        extract_questions=tuple(d["extract_questions"]), eval_questions=tuple(d["eval_questions"]),
        assistant=tuple(d["assistant"]), user_template=d["user_template"], markers=tuple(d["markers"]),
        ab_question=d["ab_question"], eval_prompt=d["eval_prompt"],
        characters=tuple(tuple(c) for c in d.get("character", [])),
        dialogues=tuple(tuple(tuple(tuple(x) for x in side) for side in p) for p in d.get("dialogue", [])),
    )
