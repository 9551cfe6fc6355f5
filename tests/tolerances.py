"""The one bound for two computations of the same vectors (tests/README.md, "Tolerances").

Two computations of one quantity (a cached prefix against the whole sequence, padded against
unpadded, nnsight against plain transformers, remote against local) sum the same float32 products
in a different order, so they differ by rounding that grows with the model's depth and with the
largest entry of the vector: a residual with a massive-activation channel in the hundreds carries
an absolute error there that an elementwise atol tuned to small channels cannot bound on every
CPU. Compared per vector, relative to its norm, the error is set by float32 and depth alone.
"""
import os

import numpy as np

# ||got - want|| / ||want|| per vector. float32 rounds each product to ~6e-8; through SmolLM2's 30
# blocks, under both of CI's roundings, the worst residual measured was 1.5e-6 and the worst logits
# 1.2e-5; planted bugs are off by 0.4 to 2 (tests/README.md, "Tolerances").
RELATIVE_BOUND = 1e-4


def _numpy(x) -> np.ndarray:
    return x.detach().cpu().double().numpy() if hasattr(x, "detach") else np.asarray(x, dtype=np.float64)


def relative_errors(got, want, axis: int = -1) -> np.ndarray:
    """||got - want|| / ||want|| of every vector along `axis` (a zero `want` counts ||got|| alone).
    A NaN in both at the same place (an entry neither computed) is equal; a NaN in one is not."""
    got, want = _numpy(got), _numpy(want)
    if got.shape != want.shape:
        raise AssertionError(f"shapes differ: got {got.shape}, want {want.shape}")
    both = np.isnan(got) & np.isnan(want)
    got, want = np.where(both, 0.0, got), np.where(both, 0.0, want)
    diff = np.linalg.norm(got - want, axis=axis)
    norm = np.linalg.norm(want, axis=axis)
    return np.where(norm > 0, diff / np.where(norm > 0, norm, 1.0), diff)


def assert_vectors_close(got, want, axis: int = -1, bound: float = RELATIVE_BOUND, msg: str = "") -> None:
    """Every vector along `axis` of `got` within `bound` of `want`, relative to the norm of `want`."""
    errors = relative_errors(got, want, axis)
    if os.environ.get("TOLERANCES_LOG"):  # to measure the margin: the worst vector of every call
        with open(os.environ["TOLERANCES_LOG"], "a") as log:
            largest = float(np.nanmax(np.abs(_numpy(got) - _numpy(want)))) if errors.size else 0.0
            log.write(f"{os.environ.get('PYTEST_CURRENT_TEST', '?').split(' ')[0]}\t{msg}\t"
                      f"relative {float(np.nanmax(errors)) if errors.size else 0.0:.3g}\tabsolute {largest:.3g}\n")
    if not np.all(errors < bound):  # NaN fails too
        worst = np.unravel_index(np.nanargmax(np.where(np.isnan(errors), np.inf, errors)), errors.shape)
        bad = int(np.sum(~(errors < bound)))
        raise AssertionError(f"{msg}: {bad} of {errors.size} vectors off by more than {bound:g} of their norm; "
                             f"worst {float(errors[worst]):.3g} at index {tuple(int(i) for i in worst)}")
