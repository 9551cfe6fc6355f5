"""The intervals of the persona-vector, head-map and subnetwork figures, read back from the drawn
artists and compared with a bootstrap written here from numpy alone (no package helper): the
steering bands (over questions), the elicitation strength bars (over (pair, question) units), the
top heads' bars (over cells), the subnetwork figures' bars (over evaluation items and generations)
and bands (over random seeds)."""

import json

import numpy as np
import pytest
import xarray as xr

from nnsight_persona.plots.heads import plot_head_map
from nnsight_persona.plots.persona_vectors import plot_elicitation_cos, plot_steering
from nnsight_persona.plots.subnetworks import plot_alignment_vs_sparsity, plot_persona_by_mask
from test_findings import TOY


def numpy_interval(values, statistic=np.mean, n=4000, seed=1):
    """A percentile bootstrap over units (axis 0), numpy only; another seed than the package's."""
    values = np.asarray(values, dtype=float)
    rng = np.random.default_rng(seed)
    draws = values[rng.integers(0, len(values), size=(n, len(values)))]
    stats = statistic(draws, axis=1)
    return np.quantile(stats, [0.025, 0.975])


def assert_interval(got, want, share=0.25, slack=0.0):
    width = want[1] - want[0]
    tol = share * width + slack
    assert abs(got[0] - want[0]) <= tol and abs(got[1] - want[1]) <= tol, (got, want, tol)


def band_at(ax, label, x):
    """(low, high) of the fill_between labelled '_band ' + label at abscissa x."""
    (band,) = [c for c in ax.collections if c.get_label() == "_band " + label]
    vertices = np.concatenate([p.vertices for p in band.get_paths()])
    ys = vertices[np.isclose(vertices[:, 0], x), 1]
    return ys.min(), ys.max()


def bars(ax, label):
    """(x, y, low, high) of the error bars labelled `label`."""
    (container,) = [c for c in ax.containers if c.get_label() == label]
    line, _, (segments,) = container.lines
    ends = np.array(segments.get_segments())  # [point, end, (x, y)]
    return line.get_xdata(), line.get_ydata(), ends[:, :, 1].min(axis=1), ends[:, :, 1].max(axis=1)


def make_steer(n_questions=16, seed=0):
    rng = np.random.default_rng(seed)
    coefs = [0.0, 1.0, 2.0, 4.0]
    kinds = ["vector", "random_s0", "shuffled_s0"]
    score = rng.uniform(0, 40, size=(1, 1, 3, 1, len(coefs), n_questions))
    score[0, 0, 0] += np.array(coefs)[:, None] * 12  # the vector raises the score with coef
    dims = ("model", "trait", "kind", "layer", "coef", "question")
    return xr.Dataset(
        {"trait_score": (dims, score), "coherence": (dims, rng.uniform(50, 100, size=score.shape)),
         "baseline_trait": (("model", "trait", "baseline", "question"), rng.uniform(0, 100, size=(1, 1, 2, n_questions)))},
        coords={"model": ["m"], "trait": ["pirate"], "kind": kinds, "layer": [2], "coef": coefs,
                "question": np.arange(n_questions), "baseline": ["clean", "prompted"]},
        attrs={"experiment": "vectors-steer", "positions": "response", "scale": "raw"})


def test_steering_bands_are_the_interval_of_the_mean_over_questions():
    ds = make_steer()
    ax = plot_steering(ds).axes[0]
    for kind in ds.kind.values.tolist():
        label = f"L2 {kind}"
        (line,) = [ln for ln in ax.lines if ln.get_label() == label]
        scores = ds.trait_score.sel(kind=kind).squeeze().values  # [coef, question]
        np.testing.assert_allclose(line.get_ydata(), scores.mean(axis=1))
        for k, coef in enumerate(ds.coef.values):
            assert_interval(band_at(ax, label, coef), numpy_interval(scores[k]))


def _numpy_pair_differences(ds):
    """pos - neg trait score per generated (variant, trait, pair, question), grouped here by hand."""
    rows = {}
    for i in range(ds.sizes["sample"]):
        if not int(ds.generated.values[0, 0, i]):
            continue
        key = (str(ds.sample_elicitation.values[i]), str(ds.sample_trait.values[i]), int(ds.pair.values[i]),
               int(ds.question_index.values[i]))
        rows.setdefault(key, {})[str(ds.side.values[i])] = float(ds.trait_score.values[0, 0, i])
    out = {}
    for (variant, trait, _, _), sides in rows.items():
        out.setdefault((variant, trait), []).append(sides["pos"] - sides["neg"])
    return {k: np.array(v) for k, v in out.items()}


def test_elicitation_strength_bars_are_the_interval_over_pairs():
    ds = xr.open_dataset(TOY / "vectors-elicitation.nc").load()
    fig = plot_elicitation_cos(ds)
    traits, variants = ds.trait.values.tolist(), ds.elicitation.values.tolist()
    want = _numpy_pair_differences(ds)
    checked = 0
    for i, trait in enumerate(traits):
        ax = fig.axes[2 * i + 1]  # each trait: its cosine panel, then its strength panel
        for k, variant in enumerate(variants):
            diffs = want[(variant, trait)]
            x, y, low, high = bars(ax, f"{variant} (n={diffs.size})")
            assert x[0] == k and y[0] == pytest.approx(diffs.mean())
            if np.ptp(diffs) > 0:
                assert_interval((low[0], high[0]), numpy_interval(diffs))
                checked += 1
    assert checked >= len(traits)  # some variants' answers all score alike: a zero-width interval


def make_heads(n_cells=40, seed=0):
    rng = np.random.default_rng(seed)
    blocks, heads = [3, 4], [0, 1, 2, 3]
    shift = rng.normal(0, 0.05, size=(1, 2, 4, n_cells)) + rng.uniform(0, 0.3, size=(1, 2, 4, 1))
    medians = np.median(shift[0], axis=-1)
    order = np.argsort(-medians.ravel(), kind="stable")
    dims = ("model", "block", "head", "cell")
    return xr.Dataset(
        {"persona_shift": (dims, shift), "kl": (dims, np.abs(rng.normal(0, 0.1, size=shift.shape))),
         "fraction_of_band": (("model", "group"), [[0.4, 0.7, 1.0]]),
         "ranked_block": (("model", "rank"), [[blocks[i // 4] for i in order]]),
         "ranked_head": (("model", "rank"), [[heads[i % 4] for i in order]])},
        coords={"model": ["m"], "block": blocks, "head": heads, "cell": [f"c{i}" for i in range(n_cells)],
                "group": ["top 1", "top 2", "all heads"], "rank": np.arange(8)},
        attrs={"experiment": "heads", "spec": json.dumps({"rank_by": "persona_shift", "grid": "toy"})})


def test_head_map_draws_the_top_heads_with_intervals_over_cells():
    ds = make_heads()
    (ax,) = [a for a in plot_head_map(ds).axes if any(c.get_label() == "top heads" for c in a.containers)]
    x, y, low, high = bars(ax, "top heads")
    assert [t.get_text() for t in ax.get_xticklabels()] == [
        f"{int(b)}.{int(h)}" for b, h in zip(ds.ranked_block.values[0], ds.ranked_head.values[0])]
    for k in range(len(x)):
        cells = ds.persona_shift.sel(block=int(ds.ranked_block.values[0, k]), head=int(ds.ranked_head.values[0, k])).squeeze()
        assert y[k] == pytest.approx(float(np.median(cells.values)))
        assert_interval((low[k], high[k]), numpy_interval(cells.values, np.median))
    assert np.all(np.diff(y) <= 1e-12)  # ranked: the medians fall


SEEDS = 12  # random masks per sparsity


def make_eval(seed=0, n_items=18, n_generations=24):
    """A subnetwork-eval file of the toy persona set: per-item margins (p_matching their mean sigmoid),
    generations whose persona markers are known by construction (marker_rate their share), evidence."""
    rng = np.random.default_rng(seed)
    personas, sparsities = ["pirate", "robot"], [0.3, 0.5]
    variants = ["unpruned", "prompt:pirate", "prompt:robot"] + [f"mask:{p}@{s:g}" for s in sparsities for p in personas]
    variants += [f"random@{s:g}#{i}" for s in sparsities for i in range(SEEDS)]
    kind = [v.split(":")[0].split("@")[0] for v in variants]
    sparsity = [float(v.split("@")[1].split("#")[0]) if "@" in v else np.nan for v in variants]
    margins = rng.normal(0, 2, size=(len(variants), 2 * n_items))
    words = {"pirate": "arr", "robot": "beep"}
    flags = rng.random((len(variants), 2, n_generations)) < rng.uniform(0.1, 0.6, size=(len(variants), 2, 1))
    texts = np.array([[" ".join(["well"] + [words[p] for j, p in enumerate(personas) if flags[v, j, g]] + ["then"])
                       for g in range(n_generations)] for v in range(len(variants))], dtype=object)
    owners = np.repeat(personas, n_items)
    p_item = 1 / (1 + np.exp(-margins))
    evidence = rng.normal(0, 0.4, size=(len(variants), 2, n_generations))
    ds = xr.Dataset(
        {"p_matching": (("variant", "persona"), np.stack([p_item[:, owners == p].mean(1) for p in personas], 1)),
         "marker_rate": (("variant", "persona"), flags.mean(-1)),
         "item_margin": (("variant", "item"), margins),
         "text": (("variant", "generation"), texts),
         "evidence": (("variant", "persona", "generation"), evidence),
         "mean_evidence": (("variant", "persona"), evidence.mean(-1))},
        coords={"variant": variants, "persona": personas, "generation": np.arange(n_generations),
                "kind": ("variant", kind), "sparsity": ("variant", sparsity), "item_persona": ("item", owners)},
        attrs={"experiment": "subnetwork-eval", "persona_set": "toy", "mask_variant": "weights"})
    return ds, {"flags": flags, "p_item": p_item, "owners": owners, "evidence": evidence}


def test_alignment_figure_intervals_over_items_generations_and_seeds():
    ds, truth = make_eval()
    fig = plot_alignment_vs_sparsity(ds)
    personas = ["pirate", "robot"]
    axes = np.array(fig.axes).reshape(3, 2)  # p_matching, marker_rate, mean_evidence x persona
    variants = ds.variant.values.tolist()
    for col, persona in enumerate(personas):
        j = personas.index(persona)
        for row, measure in enumerate(("p_matching", "marker_rate", "mean_evidence")):
            ax = axes[row, col]
            x, y, low, high = bars(ax, "own mask")
            for k, sparsity in enumerate(x):
                v = variants.index(f"mask:{persona}@{sparsity:g}")
                units = {"p_matching": truth["p_item"][v, truth["owners"] == persona],
                         "marker_rate": truth["flags"][v, j].astype(float),
                         "mean_evidence": truth["evidence"][v, j]}[measure]
                assert y[k] == pytest.approx(units.mean())
                assert_interval((low[k], high[k]), numpy_interval(units))
                seeds = [variants.index(f"random@{sparsity:g}#{i}") for i in range(SEEDS)]
                per_seed = ds[measure].isel(variant=seeds).sel(persona=persona).values
                assert_interval(band_at(ax, "random masks", sparsity), numpy_interval(per_seed))


def test_persona_by_mask_cells_carry_their_intervals():
    ds, truth = make_eval(seed=1)
    ax = plot_persona_by_mask(ds).axes[0]
    labels = [t.get_text() for t in ax.get_yticklabels()]
    texts = {(round(t.get_position()[1]), round(t.get_position()[0])): t.get_text() for t in ax.texts}
    variants = ds.variant.values.tolist()
    for j, persona in enumerate(["pirate", "robot"]):
        for i, label in enumerate(labels):
            estimate, interval = texts[(i, j)].split(" ", 1)
            low, high = (float(v) for v in interval.strip("[]").split(", "))
            if label.startswith("random@"):
                s = float(label.split("@")[1].split(" ")[0])
                units = ds.p_matching.isel(variant=[variants.index(f"random@{s:g}#{k}") for k in range(SEEDS)]).sel(
                    persona=persona).values
            else:
                units = truth["p_item"][variants.index(label), truth["owners"] == persona]
            assert float(estimate) == pytest.approx(units.mean(), abs=0.005)
            assert_interval((low, high), numpy_interval(units), slack=0.01)


def test_committed_eval_files_without_item_margins_keep_their_marker_intervals():
    """Files made before `item_margin`: p_matching without an interval, marker_rate with one over the
    generations (their markers found again in the texts), the random masks' band over seeds."""
    ds = xr.open_dataset(TOY / "subnetwork-eval-toy.nc").load()
    assert "item_margin" not in ds
    axes = np.array(plot_alignment_vs_sparsity(ds).axes).reshape(-1, ds.sizes["persona"])
    _, y, low, high = bars(axes[0, 0], "own mask")
    np.testing.assert_allclose(low, y)
    np.testing.assert_allclose(high, y)
    _, y, low, high = bars(axes[1, 0], "own mask")
    persona = str(ds.persona.values[0])
    np.testing.assert_allclose(y, [float(ds.marker_rate.sel(variant=f"mask:{persona}@{s:g}", persona=persona))
                                   for s in (0.1, 0.3, 0.5, 0.7)])
    assert (high - low).max() > 0


def _steer_evidence_dataset(seed=0):
    rng = np.random.default_rng(seed)
    kinds, coefs, n_q = ["vector", "random_s0", "shuffled_s0"], [0.0, 0.5, 1.0], 6
    shape = (1, 1, len(kinds), 1, len(coefs), n_q)
    evidence = rng.normal(0, 0.1, size=shape + (2,))
    evidence[:, :, 0, :, 1:] += 0.3  # the vector steers
    coherence = rng.uniform(20, 100, size=shape)
    return xr.Dataset(
        {"evidence": (("model", "trait", "kind", "layer", "coef", "question", "reference"), evidence),
         "coherence": (("model", "trait", "kind", "layer", "coef", "question"), coherence),
         "baseline_evidence": (("model", "trait", "baseline", "question", "reference"),
                               rng.normal(0, 0.1, size=(1, 1, 2, n_q, 2)))},
        coords={"model": ["m"], "trait": ["pirate"], "kind": kinds, "layer": [4], "coef": coefs,
                "question": np.arange(n_q), "reference": ["neg", "none"], "baseline": ["clean", "prompted"]},
        attrs={"experiment": "vectors-steer", "positions": "response", "scale": "norm"})


def test_steering_evidence_figure_draws_evidence_and_coherence_with_intervals_over_questions():
    from nnsight_persona.plots.steering_evidence import plot_steering_evidence

    ds = _steer_evidence_dataset()
    fig = plot_steering_evidence(ds)
    ax, coh_ax = fig.axes[0], fig.axes[1]
    evidence = ds.evidence.values[0, 0, 0, 0, :, :, 0]  # vector, every coef, questions, against neg
    vector = next(line for line in ax.get_lines() if line.get_label() == "vector")
    np.testing.assert_allclose(vector.get_ydata(), evidence.mean(axis=1))
    band = ax.collections[0].get_paths()[0].vertices[:, 1]
    coherence = ds.coherence.values[0, 0, 0, 0]
    container = coh_ax.containers[0]
    segments = container.lines[2][0].get_segments()
    for k in range(3):
        low, high = np.quantile(_numpy_bootstrap_means(evidence[k]), [0.025, 0.975])
        spread = high - low
        assert np.min(np.abs(band - low)) < 0.25 * spread and np.min(np.abs(band - high)) < 0.25 * spread
        c_low, c_high = np.quantile(_numpy_bootstrap_means(coherence[k]), [0.025, 0.975])
        (_, got_low), (_, got_high) = segments[k]
        assert abs(got_low - c_low) < 0.25 * (c_high - c_low) and abs(got_high - c_high) < 0.25 * (c_high - c_low)


def _numpy_bootstrap_means(values, n=4000, seed=1):
    rng = np.random.default_rng(seed)
    return values[rng.integers(0, len(values), size=(n, len(values)))].mean(axis=1)
