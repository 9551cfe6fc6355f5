"""Persona x task grids: the stimuli of every experiment.

A grid crosses personas X with tasks Y. Each cell (X, Y), labelled ``X__Y``, yields four prompts,
the 2x2 conditions BB, XB, BY, XY, where B stands for the grid's baseline persona or baseline task.
Grids are YAML or JSON files; the bundled ones are addressed by name (see ``list_grids``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from .errors import GridError

CONDITIONS = ("BB", "XB", "BY", "XY")
DEFAULT_TEMPLATE = "As {persona}, {task}"
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "grids"  # package data, beside core/
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")
_ALLOWED_FIELDS = {"description", "source", "baseline", "personas", "tasks", "markers", "prompt_template"}


@dataclass(frozen=True)
class Cell:
    persona: str
    task: str

    @property
    def label(self) -> str:
        return f"{self.persona}__{self.task}"


@dataclass(frozen=True)
class Grid:
    name: str
    baseline_persona: str
    baseline_task: str
    personas: Mapping[str, str]
    tasks: Mapping[str, str]
    markers: Mapping[str, tuple[str, ...]] | None = None
    prompt_template: str = DEFAULT_TEMPLATE
    description: str = ""
    source: str = ""
    cells: tuple[Cell, ...] = field(init=False)

    def __post_init__(self):
        cells = tuple(Cell(x, y) for x in self.personas for y in self.tasks)
        object.__setattr__(self, "cells", cells)

    @property
    def cell_labels(self) -> list[str]:
        return [c.label for c in self.cells]

    def persona_text(self, cell: Cell, condition: str) -> str:
        _check_condition(condition)
        return self.personas[cell.persona] if condition[0] == "X" else self.baseline_persona

    def task_text(self, cell: Cell, condition: str) -> str:
        _check_condition(condition)
        return self.tasks[cell.task] if condition[1] == "Y" else self.baseline_task

    def user_text(self, cell: Cell, condition: str) -> str:
        """The user turn of `cell` under `condition`, before the chat template."""
        return self.prompt_template.format(
            persona=self.persona_text(cell, condition), task=self.task_text(cell, condition)
        )

    def cell(self, label: str) -> Cell:
        for c in self.cells:
            if c.label == label:
                return c
        raise GridError(f"grid {self.name!r} has no cell {label!r}; cells are {self.cell_labels}")

    def select_cells(self, labels: list[str] | None) -> list[Cell]:
        """The cells named by `labels` in that order (every cell when none); each may appear once."""
        if not labels:
            return list(self.cells)
        twice = sorted({lbl for lbl in labels if labels.count(lbl) > 1})
        if twice:
            raise GridError(f"cell(s) {twice} given twice; give each cell once")
        return [self.cell(lbl) for lbl in labels]

    def to_dict(self) -> dict:
        out = {
            "description": self.description,
            "baseline": {"persona": self.baseline_persona, "task": self.baseline_task},
            "personas": dict(self.personas),
            "tasks": dict(self.tasks),
            "prompt_template": self.prompt_template,
        }
        if self.markers is not None:
            out["markers"] = {k: list(v) for k, v in self.markers.items()}
        if self.source:
            out["source"] = self.source
        return out


def _check_condition(condition: str) -> None:
    if condition not in CONDITIONS:
        raise GridError(f"unknown condition {condition!r}; allowed: {list(CONDITIONS)}")


_SUFFIXES = {".yaml", ".yml", ".json"}


def list_grids() -> list[str]:
    """Names of the grids bundled with the package."""
    return sorted(p.stem for p in BUNDLED_DIR.iterdir() if p.suffix in _SUFFIXES)


def load_grid(name_or_path: str | Path) -> Grid:
    """Load a bundled grid by name, or any YAML/JSON grid file by path."""
    path = Path(name_or_path)
    if not path.exists():
        name = str(name_or_path)
        # A bundled grid is addressed by its exact name: no patterns, no paths.
        matches = sorted(p for p in BUNDLED_DIR.iterdir() if p.stem == name and p.suffix in _SUFFIXES)
        if not matches:
            if path.suffix in _SUFFIXES or "/" in name or "\\" in name:
                raise GridError(f"no grid file {name!r}: no such file (bundled grids: {list_grids()})")
            raise GridError(f"no grid named {name!r} and no such file; bundled grids: {list_grids()}")
        path = matches[0]
    try:
        text = path.read_text()
        data = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (OSError, ValueError, yaml.YAMLError) as exc:
        raise GridError(f"cannot read grid file {path}: {exc}") from None
    return grid_from_dict(data, name=path.stem, where=str(path))


def grid_from_dict(data: object, name: str = "grid", where: str = "grid") -> Grid:
    """Validate a grid mapping and build a Grid; every error names the file and key."""
    if not isinstance(data, dict):
        raise GridError(f"{where}: a grid must be a mapping with keys baseline, personas, tasks")
    unknown = set(data) - _ALLOWED_FIELDS
    if unknown:
        raise GridError(f"{where}: unknown key(s) {sorted(unknown)}; allowed: {sorted(_ALLOWED_FIELDS)}")
    for key in ("baseline", "personas", "tasks"):
        if key not in data:
            raise GridError(f"{where}: missing key {key!r}; a grid needs baseline, personas and tasks")
    baseline = data["baseline"]
    if not isinstance(baseline, dict) or set(baseline) != {"persona", "task"}:
        raise GridError(f"{where}: 'baseline' must be a mapping with exactly the keys 'persona' and 'task'")
    personas = _text_mapping(data["personas"], "personas", where)
    tasks = _text_mapping(data["tasks"], "tasks", where)
    template = data.get("prompt_template", DEFAULT_TEMPLATE)
    if not isinstance(template, str) or "{persona}" not in template or "{task}" not in template:
        raise GridError(f"{where}: 'prompt_template' must be a string containing {{persona}} and {{task}}")
    if template.index("{persona}") > template.index("{task}"):
        # Persona spans are found by position in the user turn; the persona must come first.
        raise GridError(f"{where}: 'prompt_template' must place {{persona}} before {{task}}")
    markers = data.get("markers")
    if markers is not None:
        if not isinstance(markers, dict):
            raise GridError(f"{where}: 'markers' must map persona keys to lists of marker strings")
        extra = set(markers) - set(personas)
        if extra:
            raise GridError(f"{where}: markers given for unknown persona(s) {sorted(extra)}; personas: {list(personas)}")
        for k, v in markers.items():
            if not isinstance(v, list) or not v or not all(isinstance(s, str) and s.strip() for s in v):
                raise GridError(f"{where}: markers[{k!r}] must be a non-empty list of strings")
        markers = {k: tuple(v) for k, v in markers.items()}
    for key in ("persona", "task"):
        if not isinstance(baseline[key], str) or not baseline[key].strip():
            raise GridError(f"{where}: baseline {key} must be a non-empty string")
    return Grid(
        name=name,
        baseline_persona=baseline["persona"],
        baseline_task=baseline["task"],
        personas=personas,
        tasks=tasks,
        markers=markers,
        prompt_template=template,
        description=str(data.get("description", "")),
        source=str(data.get("source", "")),
    )


def _text_mapping(value: object, key: str, where: str) -> dict[str, str]:
    if not isinstance(value, dict) or not value:
        raise GridError(f"{where}: {key!r} must be a non-empty mapping of key -> text")
    for k, v in value.items():
        if not isinstance(k, str) or not _KEY.match(k) or "__" in k:
            raise GridError(
                f"{where}: {key} key {k!r} is not allowed; use letters, digits, '-' and single '_' "
                "(cells are labelled persona__task)"
            )
        if not isinstance(v, str) or not v.strip():
            raise GridError(f"{where}: {key}[{k!r}] must be a non-empty string")
    return dict(value)
