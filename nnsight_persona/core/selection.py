"""Parse and check user selections of layers and positions."""

from __future__ import annotations

from typing import Sequence

from .errors import SelectionError
from .prompts import ALL_POSITIONS, POSITIONS

PAPER_LAYER_FRACTIONS = (0.25, 0.40, 0.55, 0.70, 0.85)


def paper_layers(n_layers: int) -> list[int]:
    """The paper's fractional layer grid round(f x n_layers) clipped to [1, n_layers - 1]
    (Gemma-2-2B, 26 layers: 6, 10, 14, 18, 22). Python's round, as the reference used."""
    return sorted({min(max(round(f * n_layers), 1), n_layers - 1) for f in PAPER_LAYER_FRACTIONS})


def parse_layers(value: str | Sequence[int] | None, n_layers: int, default: Sequence[int]) -> list[int]:
    """'all' (0..n_layers), 'paper' (the fractional grid), None or 'default', or a comma list of
    layers and inclusive ranges ('2,4,6-8'). Layer L is hidden_states[L]; valid: 0..n_layers."""
    if value is None or value == "default":
        layers = list(default)
    elif isinstance(value, str):
        text = value.strip()
        if text == "all":
            layers = list(range(n_layers + 1))
        elif text == "paper":
            layers = paper_layers(n_layers)
        else:
            layers = []
            for part in text.split(","):
                layers.extend(_parse_layer_part(part.strip(), value, n_layers))
    else:
        layers = [int(v) for v in value]
    bad = [L for L in layers if not 0 <= L <= n_layers]
    if bad:
        raise SelectionError(f"layer(s) {bad} out of range for a model with {n_layers} layers; allowed: 0..{n_layers}")
    if not layers:
        raise SelectionError(f"no layers selected by {value!r}")
    return sorted(set(layers))


def _parse_layer_part(part: str, whole: str, n_layers: int) -> list[int]:
    try:
        if "-" in part:
            lo, hi = part.split("-", 1)
            return list(range(int(lo), int(hi) + 1))
        return [int(part)]
    except ValueError:
        raise SelectionError(
            f"cannot read layers {whole!r}: {part!r} is not a layer; use 'all', 'paper', or integers "
            f"and ranges like '2,4,6-8' within 0..{n_layers}"
        ) from None


def parse_positions(value: str | Sequence[str] | None, allowed: Sequence[str] = ALL_POSITIONS,
                    default: Sequence[str] = POSITIONS) -> list[str]:
    """A comma list (or sequence) of named positions, kept in the canonical (token) order. 'all'
    or None: the paper's four (p_user_last, p_last, g1, g2); p_user_text_last only when named."""
    if value is None or value == "all":
        return [p for p in allowed if p in default]
    names = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
    bad = [n for n in names if n not in allowed]
    if bad or not names:
        raise SelectionError(f"unknown position(s) {bad or names}; allowed: {list(allowed)}")
    return [p for p in allowed if p in names]
