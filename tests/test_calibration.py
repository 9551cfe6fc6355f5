"""Calibration of the evidence score (analysis/calibration.py) and its figure, against counts made
here by hand."""

import itertools

import numpy as np
import pytest
import xarray as xr

from nnsight_persona.analysis import calibration


def test_auroc_is_the_fraction_of_pairs_ordered_right():
    pos, neg = [0.3, 0.1, 0.5, np.nan], [0.1, -0.2, 0.0]
    pairs = [(p, n) for p, n in itertools.product([0.3, 0.1, 0.5], neg)]
    by_hand = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
    assert calibration.auroc(pos, neg) == pytest.approx(by_hand)
    assert calibration.auroc([1, 2], [3, 4]) == 0.0 and calibration.auroc([3, 4], [1, 2]) == 1.0
    assert np.isnan(calibration.auroc([], [1.0]))


def test_threshold_leaves_at_most_five_percent_of_negatives_above_it():
    rng = np.random.default_rng(1)
    for n in (1, 3, 20, 21, 100, 1000):
        neg = rng.normal(size=n)
        t = calibration.threshold(neg)
        assert t in neg and (neg > t).mean() <= 0.05 and (neg >= t).mean() > 0.0
        if n <= 20:
            assert t == neg.max()


def _markers_like(evidence, coherence, personas):
    """A dataset shaped like a markers result (model, cell, condition)."""
    cells = [f"c{i}" for i in range(evidence.shape[0])]
    return xr.Dataset(
        {"evidence": (("model", "cell", "condition"), evidence[None]),
         "coherence": (("model", "cell", "condition"), coherence[None])},
        coords={"model": ["m"], "cell": cells, "condition": ["clean", "remove_persona", "bare"],
                "persona": ("cell", personas)},
        attrs={"experiment": "markers", "model_id": "m", "grid": "g"},
    )


def test_calibrate_stores_auroc_thresholds_and_decisions():
    rng = np.random.default_rng(0)
    personas = ["a"] * 4 + ["b"] * 4
    ev = np.stack([rng.normal(0.3, 0.1, 8), rng.normal(0.0, 0.1, 8), rng.normal(-0.1, 0.1, 8)], axis=1)
    coh = np.ones_like(ev)
    coh[0, 0] = 0.1  # one degenerate clean answer
    ds = calibration.calibrate(_markers_like(ev, coh, personas)).isel(model=0)
    for k, cond in enumerate(["clean", "remove_persona"]):
        pairs = [(p, n) for p in ev[:, k] for n in ev[:, 2]]
        assert float(ds.evidence_auroc.sel(condition=cond)) == pytest.approx(np.mean([p > n for p, n in pairs]))
    assert np.isnan(float(ds.evidence_auroc.sel(condition="bare")))
    for persona, rows in (("a", slice(0, 4)), ("b", slice(4, 8))):
        assert float(ds.evidence_threshold.sel(evidence_persona=persona)) == ev[rows, 2].max()  # 4 negatives
        expected = (ev[rows] > ev[rows, 2].max()) & (coh[rows] >= 0.5)
        assert (ds.in_persona.values[rows] == expected).all()
    assert int(ds.in_persona.values[0, 0]) == 0  # degenerate: never in persona
    assert int(ds.in_persona.sel(condition="bare").sum()) == 0


def test_a_dataset_without_bare_is_left_alone():
    ds = _markers_like(np.zeros((2, 3)), np.ones((2, 3)), ["a", "a"]).sel(condition=["clean", "remove_persona"])
    assert calibration.calibrate(ds).identical(ds)


def test_mean_interval_covers_the_mean_and_shrinks_with_more_cells():
    rng = np.random.default_rng(2)
    small, large = rng.normal(size=10), rng.normal(size=1000)
    m, lo, hi = calibration.mean_interval(small)
    assert lo < m < hi and m == pytest.approx(small.mean())
    _, lo2, hi2 = calibration.mean_interval(large)
    assert hi2 - lo2 < (hi - lo) / 3


def test_evidence_figure_draws_every_condition_and_the_aurocs():
    from nnsight_persona.plots import figures_for

    rng = np.random.default_rng(0)
    ev = np.stack([rng.normal(0.3, 0.1, 6), rng.normal(0.0, 0.1, 6), rng.normal(-0.1, 0.1, 6)], axis=1)
    ds = calibration.calibrate(_markers_like(ev, np.ones_like(ev), ["a"] * 3 + ["b"] * 3))
    ds["any_marker"] = ds.evidence.astype(int) * 0
    ds["n_distinct"] = ds.any_marker
    fig = figures_for(ds)["evidence"]
    points, roc = fig.axes[:2]
    from matplotlib.collections import PathCollection

    drawn = np.concatenate([c.get_offsets()[:, 1] for c in points.collections
                            if isinstance(c, PathCollection) and len(c.get_offsets())])
    assert sorted(drawn.tolist()) == pytest.approx(sorted(ev.ravel().tolist()))
    labels = [t.get_text() for t in roc.get_legend().get_texts()]
    for cond in ("clean", "remove_persona"):
        assert f"{cond} (AUROC {float(ds.evidence_auroc.isel(model=0).sel(condition=cond)):.2f})" in labels
    # A markers result made before evidence existed gets its markers figure only.
    assert list(figures_for(ds.drop_vars(["evidence_auroc"]))) == ["markers"]
