"""Persona sets: two (or more) opposing personas, each with calibration and evaluation items.

A persona set is a YAML file:

    description: ...
    prompt_template: "As {persona}, {question}"   # for the with-prompt baseline only
    personas:
      pirate: {text: a pirate, opposite: robot, calibration: toy/pirate-train.csv,
               evaluation: toy/pirate-test_mc.csv, markers: [arr, matey]}
    neutral: [{question: ..., answer: ...}]           # perplexity text (or a CSV/YAML file name)

Item files keep the reference repository's column layout, as CSV or as a YAML list of mappings:
- calibration (train.csv): question, matching, not_matching
- evaluation (test_mc.csv): question, A, B, matching (A or B; the reference's " (A)" is accepted)
- neutral: question, answer
File names are relative to the persona set's folder. A bad file raises DataFileError naming the
file and the row (row 1 = the first item; for CSV also its line).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import yaml

from ...core.errors import DataFileError

CALIBRATION_COLUMNS = ("question", "matching", "not_matching")
EVALUATION_COLUMNS = ("question", "A", "B", "matching")
NEUTRAL_COLUMNS = ("question", "answer")
BUNDLED_DIR = Path(__file__).resolve().parents[3] / "experiments" / "subnetworks"
_PERSONA_FIELDS = {"text", "opposite", "calibration", "evaluation", "markers"}
_SET_FIELDS = {"description", "prompt_template", "personas", "neutral", "model"}


@dataclass(frozen=True)
class CalibrationItem:
    question: str
    matching: str
    not_matching: str


@dataclass(frozen=True)
class EvalItem:
    question: str
    matching: str  # the persona-matching answer's text
    other: str


@dataclass(frozen=True)
class Persona:
    name: str
    text: str
    opposite: str
    markers: tuple[str, ...]
    calibration: tuple[CalibrationItem, ...]
    evaluation: tuple[EvalItem, ...]


@dataclass(frozen=True)
class PersonaSet:
    name: str
    personas: dict  # name -> Persona, in file order
    neutral: tuple[tuple[str, str], ...]  # (question, answer)
    prompt_template: str = "As {persona}, {question}"
    description: str = ""

    def persona(self, name: str) -> Persona:
        if name not in self.personas:
            raise DataFileError(f"persona set {self.name!r} has no persona {name!r}; it has {list(self.personas)}")
        return self.personas[name]

    def prompted(self, persona: str, question: str) -> str:
        """The user turn asking `question` as `persona` (the with-prompt baseline)."""
        return self.prompt_template.format(persona=self.persona(persona).text, question=question)


def read_rows(path: Path, columns: tuple[str, ...]) -> list[dict]:
    """Rows of a CSV or YAML item file with exactly `columns` (extra columns are ignored), every
    cell a non-empty string. Raises DataFileError naming the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise DataFileError(f"no item file {path} (expected columns {', '.join(columns)})")
    if path.suffix.lower() in (".yaml", ".yml"):
        rows, where = _yaml_rows(path), lambda i: f"row {i}"
    elif path.suffix.lower() == ".csv":
        rows, lines = _csv_rows(path, columns)
        where = lambda i: f"row {i} (line {lines[i - 1]})"
    else:
        raise DataFileError(f"{path}: item files are .csv or .yaml, not {path.suffix or 'no suffix'!r}")
    if not rows:
        raise DataFileError(f"{path}: no items; expected rows with columns {', '.join(columns)}")
    out = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict):
            raise DataFileError(f"{path}: {where(i)} is not a mapping of {', '.join(columns)}")
        missing = [c for c in columns if c not in row or row[c] is None or not str(row[c]).strip()]
        if missing:
            raise DataFileError(f"{path}: {where(i)} has no value for {', '.join(missing)} "
                                f"(columns: {', '.join(columns)})")
        out.append({c: str(row[c]).strip() for c in columns})
    return out


def _yaml_rows(path: Path) -> list:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise DataFileError(f"{path} is not valid YAML{at}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, list):
        raise DataFileError(f"{path}: a YAML item file is a list of mappings")
    return data


def _csv_rows(path: Path, columns: tuple[str, ...]) -> tuple[list[dict], list[int]]:
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            return [], []
        header = [h.strip() for h in header]
        missing = [c for c in columns if c not in header]
        if missing:
            raise DataFileError(f"{path}: the header lacks {', '.join(missing)}; it has {header} "
                                f"(expected {', '.join(columns)})")
        rows, lines = [], []
        for values in reader:
            if not any(v.strip() for v in values):
                continue  # blank line
            lines.append(reader.line_num)
            if len(values) != len(header):
                raise DataFileError(f"{path}: row {len(lines)} (line {reader.line_num}) has {len(values)} "
                                    f"fields, the header {len(header)}")
            rows.append(dict(zip(header, values)))
    return rows, lines


def load_calibration(path: Path) -> tuple[CalibrationItem, ...]:
    return tuple(CalibrationItem(**r) for r in read_rows(path, CALIBRATION_COLUMNS))


def load_evaluation(path: Path) -> tuple[EvalItem, ...]:
    items = []
    for i, r in enumerate(read_rows(path, EVALUATION_COLUMNS), start=1):
        choice = r["matching"].strip().strip("()").strip()
        if choice not in ("A", "B"):
            raise DataFileError(f"{path}: row {i} has matching {r['matching']!r}; allowed: A, B (or (A), (B))")
        other = "B" if choice == "A" else "A"
        items.append(EvalItem(r["question"], r[choice], r[other]))
    return tuple(items)


def resolve_set_path(spec: str | Path) -> Path:
    """A persona-set file, or the name of one bundled in experiments/subnetworks/ ('toy', 'smollm2')."""
    path = Path(spec)
    if path.is_file():
        return path
    bundled = BUNDLED_DIR / f"{spec}.yaml"
    if bundled.is_file():
        return bundled
    names = sorted(p.stem for p in BUNDLED_DIR.glob("*.yaml")) if BUNDLED_DIR.is_dir() else []
    raise DataFileError(f"no persona set {str(spec)!r}: give a YAML file or one of {names}")


def load_persona_set(spec: str | Path) -> PersonaSet:
    path = resolve_set_path(spec)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise DataFileError(f"{path} is not valid YAML: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(raw, dict) or not isinstance(raw.get("personas"), dict) or len(raw["personas"]) < 2:
        raise DataFileError(f"{path}: a persona set needs a 'personas' mapping of at least two personas")
    unknown = set(raw) - _SET_FIELDS
    if unknown:
        raise DataFileError(f"{path}: unknown keys {sorted(unknown)}; allowed: {sorted(_SET_FIELDS)}")
    folder = path.parent
    personas = {}
    for name, entry in raw["personas"].items():
        if not isinstance(entry, dict) or not {"text", "opposite", "calibration", "evaluation"} <= set(entry):
            raise DataFileError(f"{path}: persona {name!r} needs text, opposite, calibration and evaluation")
        if set(entry) - _PERSONA_FIELDS:
            raise DataFileError(f"{path}: persona {name!r} has unknown keys {sorted(set(entry) - _PERSONA_FIELDS)}; "
                                f"allowed: {sorted(_PERSONA_FIELDS)}")
        personas[str(name)] = Persona(
            name=str(name), text=str(entry["text"]), opposite=str(entry["opposite"]),
            markers=tuple(str(m) for m in entry.get("markers") or ()),
            calibration=load_calibration(folder / entry["calibration"]),
            evaluation=load_evaluation(folder / entry["evaluation"]),
        )
    for p in personas.values():
        if p.opposite not in personas or p.opposite == p.name:
            raise DataFileError(f"{path}: persona {p.name!r} has opposite {p.opposite!r}; allowed: "
                                f"{[n for n in personas if n != p.name]}")
    neutral = raw.get("neutral") or []
    if isinstance(neutral, str):
        rows = read_rows(folder / neutral, NEUTRAL_COLUMNS)
    else:
        rows = read_rows_inline(path, neutral)
    return PersonaSet(
        name=path.stem, personas=personas, neutral=tuple((r["question"], r["answer"]) for r in rows),
        prompt_template=str(raw.get("prompt_template", "As {persona}, {question}")),
        description=str(raw.get("description", "")),
    )


def read_rows_inline(path: Path, rows) -> list[dict]:
    """The neutral items written inside the persona set itself."""
    if not isinstance(rows, list) or not rows:
        raise DataFileError(f"{path}: 'neutral' is a list of {{question, answer}} items or an item file name")
    out = []
    for i, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not all(str(row.get(c) or "").strip() for c in NEUTRAL_COLUMNS):
            raise DataFileError(f"{path}: neutral row {i} needs a question and an answer")
        out.append({c: str(row[c]).strip() for c in NEUTRAL_COLUMNS})
    return out
