"""analysis/statistics against independent computations (scipy.stats, hand enumeration)."""

import itertools

import numpy as np
import pytest
import xarray as xr

scipy_stats = pytest.importorskip("scipy.stats")

from nnsight_persona.analysis import statistics as st
from nnsight_persona.core.errors import SelectionError


def _scipy_endpoints(data, func, method, seeds=range(6), n_resamples=2000):
    """scipy's interval under several seeds: the mean endpoints and their Monte Carlo spread."""
    lows, highs = [], []
    for seed in seeds:
        res = scipy_stats.bootstrap((data,), func, n_resamples=n_resamples, method=method,
                                    vectorized=True, axis=-1, random_state=np.random.default_rng(100 + seed))
        lows.append(res.confidence_interval.low)
        highs.append(res.confidence_interval.high)
    return np.mean(lows), np.mean(highs), max(np.std(lows), np.std(highs))


@pytest.mark.parametrize("statistic,func", [("median", np.median), ("mean", np.mean)])
@pytest.mark.parametrize("method,scipy_method", [("percentile", "percentile"), ("bca", "BCa")])
def test_bootstrap_matches_scipy(statistic, func, method, scipy_method):
    data = np.random.default_rng(1).lognormal(size=40)
    iv = st.bootstrap_interval(data, statistic, method=method, seed=3)
    low, high, spread = _scipy_endpoints(data, func, scipy_method)
    width = high - low
    assert iv.estimate == pytest.approx(func(data))
    assert iv.n == 40
    # within Monte Carlo error: 5 spreads of scipy's endpoint across seeds, at least 5% of the width
    tol = max(5 * spread, 0.05 * width)
    assert abs(iv.low - low) < tol and abs(iv.high - high) < tol, (iv, low, high, spread)


def test_bootstrap_is_seeded_and_drops_nan_units():
    data = np.r_[np.random.default_rng(2).normal(size=20), np.nan]
    a = st.bootstrap_interval(data, seed=5)
    assert a == st.bootstrap_interval(data, seed=5)
    assert a != st.bootstrap_interval(data, seed=6)
    assert a.n == 20


def test_cluster_bootstrap_resamples_cells_not_rows():
    """A cell effect shared by its 20 positions: resampling cells gives the interval of the mean of cell
    means (scipy on the cell means); resampling the flattened cell x position rows would be far narrower."""
    rng = np.random.default_rng(4)
    cells = rng.normal(0, 1, size=(24, 1)) + rng.normal(0, 0.05, size=(24, 20))
    iv = st.bootstrap_interval(cells, "mean", seed=0)
    low, high, spread = _scipy_endpoints(cells.mean(axis=1), np.mean, "percentile")
    tol = max(5 * spread, 0.05 * (high - low))
    assert abs(iv.low - low) < tol and abs(iv.high - high) < tol, (iv, low, high)
    assert iv.n == 24


def test_bootstrap_dataarray_groups_by_non_unit_dims():
    rng = np.random.default_rng(7)
    da = xr.DataArray(rng.normal(size=(3, 30)) + np.arange(3)[:, None] * 10, dims=("layer", "cell"),
                      coords={"layer": [4, 8, 12]}, name="kl")
    records = st.bootstrap_dataarray(da, "cell", "median", seed=1)
    assert [r["coords"] for r in records] == [{"layer": 4}, {"layer": 8}, {"layer": 12}]
    for r, row in zip(records, da.values):
        assert r["estimate"] == pytest.approx(np.median(row))
        assert r["ci_low"] < r["estimate"] < r["ci_high"] and r["n"] == 30
    with pytest.raises(SelectionError, match="unit"):
        st.bootstrap_dataarray(da, "question")


def _hand_sign_flip(d, alternative):
    d = np.asarray(d, float)
    obs = d.mean()
    means = [np.mean(np.array(s) * d) for s in itertools.product((1, -1), repeat=len(d))]
    if alternative == "greater":
        return np.mean([m >= obs - 1e-12 for m in means])
    if alternative == "less":
        return np.mean([m <= obs + 1e-12 for m in means])
    return np.mean([abs(m) >= abs(obs) - 1e-12 for m in means])


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_sign_flip_exact_matches_hand_and_scipy(alternative):
    d = np.random.default_rng(8).normal(0.4, 1, size=10)
    p = st.sign_flip_test(d, alternative)
    assert p == pytest.approx(_hand_sign_flip(d, alternative))
    ref = scipy_stats.permutation_test((d,), np.mean, permutation_type="samples", alternative=alternative,
                                       n_resamples=np.inf, vectorized=False)
    assert p == pytest.approx(ref.pvalue)
    assert st.sign_flip_test([1.0, 2.0, 3.0], "greater") == pytest.approx(1 / 8)


def test_sign_flip_monte_carlo_matches_exact_within_error():
    d = np.random.default_rng(9).normal(0.3, 1, size=18)
    exact = st.sign_flip_test(d, "greater")
    mc = st.sign_flip_test(d, "greater", n_resamples=20000, exact_max_n=5)
    assert abs(mc - exact) < 5 * np.sqrt(exact * (1 - exact) / 20000) + 1e-4


def test_paired_comparison_is_paired():
    """Units differ a lot from each other, the treatment adds a small consistent shift: the paired test
    sees it (scipy's paired permutation test agrees); an unpaired test would not."""
    rng = np.random.default_rng(10)
    base = rng.normal(0, 5, size=16)
    treated = base + 0.3 + rng.normal(0, 0.05, size=16)
    out = st.paired_comparison(treated, base, "greater")
    ref = scipy_stats.permutation_test((treated, base), lambda x, y: np.mean(x - y), permutation_type="samples",
                                       alternative="greater", n_resamples=np.inf, vectorized=False)
    assert out["p"] == pytest.approx(ref.pvalue)
    assert out["p"] < 0.001
    assert out["effect"] == pytest.approx(np.mean(treated - base))
    assert out["ci_low"] > 0 and out["n"] == 16
    unpaired = scipy_stats.permutation_test((treated, base), lambda x, y: np.mean(x) - np.mean(y),
                                            permutation_type="independent", alternative="greater",
                                            n_resamples=5000, random_state=0).pvalue
    assert unpaired > 0.2  # the data really need pairing for the test above to mean anything


def test_holm_by_hand():
    p = [0.01, 0.04, 0.03, 0.005]
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> running max 0.06
    np.testing.assert_allclose(st.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(st.holm([0.5, np.nan, 0.4]), [0.8, np.nan, 0.8])
    assert st.holm([0.9, 0.8])[0] == 1.0


def test_validation_names_the_bad_input():
    with pytest.raises(SelectionError, match="mode"):
        st.bootstrap_interval([1, 2, 3], "mode")
    with pytest.raises(SelectionError, match="bca"):
        st.bootstrap_interval([1, 2, 3], method="studentized")
    with pytest.raises(SelectionError, match="same units"):
        st.paired_comparison([1, 2], [1, 2, 3])


def test_no_units_gives_nan_not_an_error():
    iv = st.bootstrap_interval(np.zeros((0, 4)))
    assert iv.n == 0 and np.isnan(iv.estimate) and np.isnan(iv.low)
    da = xr.DataArray(np.zeros((2, 0)), dims=("layer", "cell"), name="kl")
    assert [r["n"] for r in st.bootstrap_dataarray(da)] == [0, 0]
    assert np.isnan(st.paired_comparison(np.zeros(0), np.zeros(0))["p"])
