"""The comparison every cross-computation test uses (tolerances.py) can fail, and fails for the
right reasons."""

import numpy as np
import pytest

from tolerances import RESIDUAL, assert_close_per_vector, relative_errors


def test_relative_errors_are_per_vector_and_relative_to_the_norm():
    want = np.array([[300.0, 0.1, -2.0], [1.0, 2.0, 2.0]])
    got = want + np.array([[3e-3, 0.0, 0.0], [0.0, 0.0, 0.0]])  # an error of 1e-5 of a massive channel's vector
    np.testing.assert_allclose(relative_errors(got, want), [3e-3 / np.linalg.norm(want[0]), 0.0])
    assert_close_per_vector(got, want)  # elementwise atol 1e-4 would have failed on channel 0


@pytest.mark.parametrize("planted", ["sign", "swap", "nan_in_one", "shape"])
def test_planted_differences_fail(planted):
    want = np.random.default_rng(0).normal(size=(4, 8))
    got = {"sign": -want, "swap": want[::-1].copy(), "nan_in_one": np.where(np.eye(4, 8) > 0, np.nan, want),
           "shape": want[:, :7]}[planted]
    with pytest.raises(AssertionError):
        assert_close_per_vector(got, want, RESIDUAL)


def test_nan_in_both_is_equal_and_whole_arrays_compare_as_one_vector():
    want = np.array([np.nan, 1.0, 2.0])
    assert_close_per_vector(want.copy(), want, axis=None)
    assert relative_errors(np.zeros(3), np.zeros(3), axis=None)[0] == 0.0
