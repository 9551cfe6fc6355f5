"""Generated blocks in Markdown docs: numbers quoted in docs come from the files, not from typing.

A block is delimited by HTML comments that Markdown does not render:

    <!-- generated: KIND ARG ... -->
    | a | table | made by the generator KIND from ARG ... |
    <!-- /generated -->

`refresh(text, generators)` rewrites every block from its generator; `stale(text, generators)`
lists the blocks whose text differs from what the generator makes now (a test runs it on the
docs, so a doc cannot quote a number its file no longer holds).
"""

from __future__ import annotations

import re
import shlex
from typing import Callable, Mapping

BLOCK = re.compile(r"<!-- generated: (?P<spec>[^\n]*?) -->\n(?P<body>.*?)<!-- /generated -->", re.S)

Generator = Callable[..., str]


def _render(spec: str, generators: Mapping[str, Generator]) -> str:
    kind, *args = shlex.split(spec)
    if kind not in generators:
        raise KeyError(f"unknown generated block kind {kind!r}; known: {sorted(generators)}")
    return generators[kind](*args).rstrip("\n") + "\n"


def refresh(text: str, generators: Mapping[str, Generator]) -> str:
    """`text` with every generated block made anew."""
    return BLOCK.sub(lambda m: f"<!-- generated: {m['spec']} -->\n{_render(m['spec'], generators)}<!-- /generated -->", text)


def stale(text: str, generators: Mapping[str, Generator]) -> list[str]:
    """Specs of the blocks whose body is not what their generator makes now."""
    return [m["spec"] for m in BLOCK.finditer(text) if m["body"] != _render(m["spec"], generators)]


def specs(text: str) -> list[str]:
    return [m["spec"] for m in BLOCK.finditer(text)]
