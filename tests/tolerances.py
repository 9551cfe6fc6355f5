"""How two computations of one quantity are compared: per vector, relative to its norm.

Two routes to one number (a cached prefix against the whole sequence, padded against unpadded,
nnsight against plain transformers, the remote path against the local one, this CPU against the
one that made a committed file) run different kernels, or the same kernels on differently shaped
inputs, and float32 rounds them differently on another CPU (AVX-512 or AMX against AVX2 or SSE).
An elementwise atol tuned on one machine then fails on another: a residual channel of several
hundred (the "massive activations" LLMs grow in a few channels) carries absolute rounding errors
that a channel of 0.1 never sees. So a comparison takes whole vectors: ||got - want|| / ||want||
below a bound. The bounds are defined here only; tests/README.md ("Comparing two computations")
says why each is what it is and what the second rounding in CI measured.
"""

from __future__ import annotations

import json
import os

import numpy as np

# Residual-stream vectors (hidden size) after up to 30 float32 blocks, read by two routes.
RESIDUAL = 1e-4
# Arrays of reductions of a softmax (summed KLs, log-probabilities, scores, cosines), compared as
# one vector over cells, layers, positions and conditions.
SCORES = 1e-4


def _array(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().double().numpy()
    return np.asarray(getattr(x, "values", x), dtype=np.float64)


def relative_errors(got, want, axis: int | None = -1) -> np.ndarray:
    """||got - want|| / ||want|| along `axis` (None: the whole array as one vector). Entries NaN in
    both are equal (an undefined measure on both routes); NaN in one only is an error (inf). A zero
    vector is compared absolutely (its error is ||got||)."""
    g, w = _array(got), _array(want)
    if g.shape != w.shape:
        raise AssertionError(f"shapes differ: got {g.shape}, want {w.shape}")
    both = np.isnan(g) & np.isnan(w)
    one = np.isnan(g) ^ np.isnan(w)
    g, w = np.where(both | one, 0.0, g), np.where(both | one, 0.0, w)
    if axis is None:
        g, w, one, axis = g.reshape(1, -1), w.reshape(1, -1), one.reshape(1, -1), -1
    diff = np.linalg.norm(g - w, axis=axis)
    norm = np.linalg.norm(w, axis=axis)
    errors = np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)
    return np.where(one.any(axis=axis), np.inf, errors)


def assert_close_per_vector(got, want, bound: float = RESIDUAL, axis: int | None = -1, what: str = "") -> float:
    """Every vector along `axis` of `got` within `bound` of `want`, relative to its norm; returns
    the largest relative error (for tests that report it)."""
    errors = np.atleast_1d(relative_errors(got, want, axis))
    worst = np.unravel_index(int(np.argmax(errors)), errors.shape)
    _record(bound, float(errors[worst]), what)
    if errors[worst] > bound:
        raise AssertionError(
            f"{what + ': ' if what else ''}{int((errors > bound).sum())} of {errors.size} vectors off by more than "
            f"{bound:g} of their norm; worst {float(errors[worst]):.3g} at index {tuple(int(i) for i in worst)}")
    return float(errors[worst])


def _record(bound: float, worst: float, what: str) -> None:
    """With NNSIGHT_PERSONA_TOLERANCE_LOG set, one JSON line per comparison (test, bound, worst
    error): how tests/README.md's margins were measured, on each CPU setting."""
    path = os.environ.get("NNSIGHT_PERSONA_TOLERANCE_LOG")
    if path:
        test = os.environ.get("PYTEST_CURRENT_TEST", "?").rsplit(" ", 1)[0]
        with open(path, "a") as log:
            log.write(json.dumps({"test": test, "what": what, "bound": bound, "worst": worst}) + "\n")
