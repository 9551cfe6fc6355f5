"""Persona-marker scoring, as the paper's behavioural test describes it.

A marker matches case-insensitively. A single word matches on word boundaries only ("lean" does not
match "clean"); a marker with a space or a hyphen matches as a substring. ``*`` is a wildcard over
word characters ("indemnif*" matches "indemnify" and "indemnification"); the reference escaped it
and so never matched it, a defect we do not reproduce.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable


@lru_cache(maxsize=8192)
def marker_pattern(marker: str) -> re.Pattern[str]:
    text = marker.strip()
    body = r"\w*".join(re.escape(part) for part in text.split("*"))
    single_word = not re.search(r"[\s-]", text)
    return re.compile(rf"\b{body}\b" if single_word else body, re.IGNORECASE)


def marker_counts(text: str, markers: Iterable[str]) -> dict[str, int]:
    """Occurrences of each marker in `text`."""
    return {m: len(marker_pattern(m).findall(text)) for m in markers}


def markers_found(text: str, markers: Iterable[str]) -> list[str]:
    """The distinct markers that occur in `text`, in the order given."""
    return [m for m in dict.fromkeys(markers) if marker_pattern(m).search(text)]


def contains_marker(text: str, markers: Iterable[str]) -> bool:
    """True when any of `markers` occurs in `text`."""
    return any(marker_pattern(m).search(text) for m in markers)
