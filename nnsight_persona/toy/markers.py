"""Whole-word, case-insensitive marker matching (``*`` is a wildcard)."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Iterable


@lru_cache(maxsize=4096)
def _pattern(marker: str) -> re.Pattern[str]:
    body = ".*?".join(re.escape(part) for part in marker.lower().split("*"))
    # Word boundaries on both sides; a wildcard may extend over word characters only.
    body = body.replace(".*?", r"\w*")
    return re.compile(rf"(?<!\w){body}(?!\w)")


def contains_marker(text: str, markers: Iterable[str]) -> bool:
    """True when any marker occurs in ``text`` as a whole word."""
    low = text.lower()
    return any(_pattern(m).search(low) for m in markers)


def found_markers(text: str, markers: Iterable[str]) -> list[str]:
    low = text.lower()
    return [m for m in markers if _pattern(m).search(low)]
