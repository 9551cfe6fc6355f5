"""summary (intervals per statistic) and findings (claims from declared rules), against independent
computations: scipy's bootstrap and paired permutation test, Holm by hand, the subnetwork table."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

scipy_stats = pytest.importorskip("scipy.stats")

from nnsight_persona.analysis import findings as fd
from nnsight_persona.analysis.intervals import interval_summary
from nnsight_persona.cli import main

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2 = ROOT / "artifacts" / "smollm2"
TOY = ROOT / "artifacts" / "toy"


def test_summary_median_kl_matches_independent_bootstrap(tmp_path):
    path = SMOLLM2 / "substitute-xu2026-long.nc"
    out = tmp_path / "s.json"
    result = CliRunner().invoke(main, ["summary", str(path), "--json", str(out)])
    assert result.exit_code == 0, result.output
    records = json.loads(out.read_text())
    assert set(records[0]) == {"variable", "coords", "estimate", "ci_low", "ci_high", "n"}
    (mine,) = [r for r in records if r["variable"] == "kl" and r["coords"]["position"] == "p_last"
               and r["coords"]["layer"] == 16 and r["coords"]["condition"] == "additive"]
    with xr.open_dataset(path) as ds:
        cells = ds["kl"].sel(position="p_last", layer=16, condition="additive").squeeze().values
    assert cells.shape == (48,) and mine["n"] == 48
    assert mine["estimate"] == pytest.approx(np.median(cells))
    lows, highs = [], []
    for seed in range(8):
        ci = scipy_stats.bootstrap((cells,), np.median, n_resamples=2000, method="percentile",
                                   random_state=np.random.default_rng(seed)).confidence_interval
        lows.append(ci.low)
        highs.append(ci.high)
    tol = max(5 * max(np.std(lows), np.std(highs)), 0.05 * (np.mean(highs) - np.mean(lows)))
    assert abs(mine["ci_low"] - np.mean(lows)) < tol and abs(mine["ci_high"] - np.mean(highs)) < tol, (
        mine, np.mean(lows), np.mean(highs), tol)
    assert "p_last" in result.output and "ci_low" in result.output


def test_summary_mean_and_units():
    ds = xr.open_dataset(TOY / "vectors-steer.nc").load()
    records = interval_summary(ds, "mean")
    one = [r for r in records if r["variable"] == "trait_score"][0]
    values = ds["trait_score"].sel(**{k: v for k, v in one["coords"].items()}).values
    assert one["n"] == ds.sizes["question"] and one["estimate"] == pytest.approx(values.mean())
    assert "text" not in {r["variable"] for r in records}


def _substitute_like(rng, n=12, shift=0.02):
    """Cells spread widely; additive sits a small consistent step below every control."""
    base = rng.lognormal(0, 1, size=n)
    kl = np.stack([base, base + shift + rng.normal(0, 0.002, n), base + shift * 2], axis=-1)
    return xr.Dataset({"kl": (("layer", "cell", "condition"), kl[None])},
                      coords={"layer": [4], "condition": ["additive", "baseline", "random"]},
                      attrs={"experiment": "substitute"})


def test_claims_are_paired_and_match_scipy():
    ds = _substitute_like(np.random.default_rng(0))
    claims = fd.claims_of_dataset(ds, "x.nc")
    assert [c["control"] for c in claims] == ["baseline", "random"]
    a = ds["kl"].sel(layer=4, condition="additive").values
    for claim in claims:
        b = ds["kl"].sel(layer=4, condition=claim["control"]).values
        ref = scipy_stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                           alternative="less", n_resamples=np.inf, vectorized=False)
        assert claim["p"] == pytest.approx(ref.pvalue)
        assert claim["effect"] == pytest.approx(np.mean(a - b))
        assert claim["ci_high"] < 0 and claim["n"] == 12
    assert all(c["holds"] for c in fd.adjust(claims))


def _hand_holm(p):
    order = sorted(range(len(p)), key=lambda i: p[i])
    out, running = [0.0] * len(p), 0.0
    for k, i in enumerate(order):
        running = max(running, min(1.0, (len(p) - k) * p[i]))
        out[i] = running
    return out


def test_folder_findings_are_holm_adjusted_per_rule_and_file():
    claims = fd.folder_findings(TOY)
    assert {c["rule"] for c in claims} >= {r.name for r in fd.RULES if "evidence" not in r.variable}
    families = {}
    for c in claims:
        families.setdefault((c["file"], c["rule"]), []).append(c)
    assert len(families) > 1
    for members in families.values():  # Holm by hand within each family, on its p alone
        np.testing.assert_allclose([c["p_holm"] for c in members], _hand_holm([c["p"] for c in members]))
        assert all(c["family_size"] == len(members) for c in members)
    assert any(c["p_holm"] > c["p"] for c in claims)
    for c in claims:
        assert c["holds"] == (c["p_holm"] < fd.ALPHA and (c["effect"] > 0) == (c["direction"] == "greater"))


def _knockout_like(rng, n_cells=10, bands=("0:2", "1:3", "2:4"), shift=0.3):
    """A knockout file with persona_shift and evidence: the persona knockout shifts the answer more and
    leaves it less evidence than every control span, consistently across cells."""
    conditions = ["persona", "task_span", "neutral_span", "template_span", "none"]
    shape = (1, len(bands), n_cells, len(conditions))
    base = rng.normal(0, 1, size=shape[:3] + (1,))
    noise = rng.normal(0, 0.05, size=shape)
    persona = np.zeros(shape)
    persona[..., 0] = 1.0
    return xr.Dataset(
        {"persona_shift": (("model", "band", "cell", "condition"), base + noise + shift * persona),
         "evidence": (("model", "band", "cell", "condition"), base + noise - shift * persona)},
        coords={"model": ["m"], "band": list(bands), "cell": [f"c{i}" for i in range(n_cells)],
                "condition": conditions}, attrs={"experiment": "knockout"})


def test_holm_family_is_one_rule_in_one_file(tmp_path):
    """A claim's adjusted p depends on the claims of its own rule in its own file only: adding a file,
    or another rule's claims in the same file, leaves it unchanged; it equals Holm over its family."""
    rng = np.random.default_rng(5)
    one = _knockout_like(rng, shift=0.05)
    alone = fd.adjust(fd.claims_of_dataset(one, "a.nc"))
    assert {c["rule"] for c in alone} == {r.name for r in fd.rules_for("knockout")}
    other = fd.claims_of_dataset(_knockout_like(rng, bands=("0:2", "1:3", "2:4", "3:5", "0:5")), "b.nc")
    together = fd.adjust(fd.claims_of_dataset(one, "a.nc") + other)
    mine = [c for c in together if c["file"] == "a.nc"]
    np.testing.assert_allclose([c["p_holm"] for c in mine], [c["p_holm"] for c in alone])
    for rule in fd.rules_for("knockout"):
        family = [c for c in mine if c["rule"] == rule.name]
        assert len(family) == 3 * len(rule.controls)  # three bands x the rule's controls
        np.testing.assert_allclose([c["p_holm"] for c in family], _hand_holm([c["p"] for c in family]))
    # one family over the whole list would multiply by every claim: the adjusted p differ
    assert not np.allclose([c["p_holm"] for c in mine], _hand_holm([c["p"] for c in together])[:len(mine)])


def test_mask_rule_against_the_subnetwork_table():
    from nnsight_persona.analysis.subnetworks import comparison

    ds = xr.open_dataset(TOY / "subnetwork-eval-toy.nc").load()
    (claim,) = [c for c in fd.claims_of_dataset(ds) if c["variable"] == "p_matching"]
    rows = comparison(ds, "p_matching")
    assert claim["n"] == len(rows)
    diffs = np.array([r["own mask"] - r["random mean"] for r in rows])
    assert claim["effect"] == pytest.approx(np.mean(diffs))
    # p_matching of two personas sums to 1, so the mean difference is blind to which random masks are
    # averaged; the per-unit differences (and so the p) are not
    ref = scipy_stats.permutation_test((diffs,), np.mean, permutation_type="samples", alternative="greater",
                                       n_resamples=np.inf)
    assert claim["p"] == pytest.approx(ref.pvalue)


def test_steer_rule_averages_positive_coefs_within_trait_question_units():
    ds = xr.open_dataset(TOY / "vectors-steer.nc").load()
    claims = fd.claims_of_dataset(ds)
    claim = [c for c in claims if c["control"].startswith("random") and c["coords"]["layer"] == 2][0]
    score = ds["trait_score"].sel(layer=2).squeeze("model")
    score = score.sel(coef=score.coef > 0)
    diff = (score.sel(kind="vector") - score.sel(kind=claim["control"])).mean("coef")
    assert claim["n"] == ds.sizes["trait"] * ds.sizes["question"]
    assert claim["effect"] == pytest.approx(float(diff.mean()))


def test_evidence_rule_applies_when_markers_have_evidence():
    rng = np.random.default_rng(3)
    shape = (1, 12, 2)
    ds = xr.Dataset({"any_marker": (("model", "cell", "condition"), rng.integers(0, 2, shape)),
                     "evidence": (("model", "cell", "condition"), rng.normal(size=shape))},
                    coords={"model": ["m"], "condition": ["remove_persona", "bare"]}, attrs={"experiment": "markers"})
    assert {c["variable"] for c in fd.claims_of_dataset(ds)} == {"any_marker", "evidence"}
    assert {c["variable"] for c in fd.claims_of_dataset(ds.drop_vars("evidence"))} == {"any_marker"}


def test_knockout_evidence_rule_is_paired_per_band_against_the_spans_of_the_same_prompt():
    from nnsight_persona.studies.xu2026.knockout import PROMPT_OF

    ds = _knockout_like(np.random.default_rng(7))
    claims = [c for c in fd.claims_of_dataset(ds, "k.nc") if c["variable"] == "evidence"]
    same_prompt = {c for c, p in PROMPT_OF.items() if p == PROMPT_OF["persona"]} - {"persona"}
    assert "none" in same_prompt  # no knockout: the clean answer of the same prompt
    assert {c["control"] for c in claims} == same_prompt  # neutral_span's host holds no persona to lose
    assert {c["coords"]["band"] for c in claims} == set(ds.band.values.tolist())
    for claim in claims:
        site = ds["evidence"].sel(model="m", band=claim["coords"]["band"])
        a, b = site.sel(condition="persona").values, site.sel(condition=claim["control"]).values
        ref = scipy_stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                           alternative="less", n_resamples=np.inf, vectorized=False)
        assert claim["p"] == pytest.approx(ref.pvalue) and claim["direction"] == "less"
        assert claim["effect"] == pytest.approx(np.mean(a - b)) and claim["effect"] < 0
        assert "less persona evidence" in claim["claim"] and claim["n"] == ds.sizes["cell"]
        assert claim["claim"].endswith("no knockout" if claim["control"] == "none" else f"knocking out the {claim['control']}")
    assert all(c["holds"] for c in fd.adjust(claims))
    assert not [c for c in fd.claims_of_dataset(ds.drop_vars("evidence")) if c["variable"] == "evidence"]


def test_steer_claims_name_the_scorer_of_the_file():
    toy = xr.open_dataset(TOY / "vectors-steer.nc").load()
    smol = xr.open_dataset(SMOLLM2 / "vectors-steer.nc").load()
    assert toy.attrs["scorer"].startswith("offline:") and smol.attrs["scorer"].startswith("evidence:")
    assert all("(offline scorer)" in c["claim"] for c in fd.claims_of_dataset(toy))
    evidence_claims = fd.claims_of_dataset(smol)
    assert evidence_claims and all("(evidence scorer, nats/token)" in c["claim"] for c in evidence_claims)
    # the evidence scorer's trait score is the evidence against the negative side: the rule tests it
    np.testing.assert_array_equal(smol["trait_score"].values, smol["evidence"].sel(reference="neg").values)
    unrecorded = toy.copy()
    unrecorded.attrs.pop("scorer")
    assert all("(scorer not recorded)" in c["claim"] for c in fd.claims_of_dataset(unrecorded))


def test_mask_evidence_rule_against_the_generations():
    """own mask vs the mean of the random masks of its sparsity on the generations' mean evidence,
    recomputed here from the per-generation `evidence` (not the file's mean_evidence)."""
    ds = xr.open_dataset(TOY / "subnetwork-eval-toy.nc").load()
    claims = [c for c in fd.claims_of_dataset(ds) if c["variable"] == "mean_evidence"]
    (claim,) = claims
    labels, kinds = ds.variant.values.astype(str), ds.kind.values.astype(str)
    sparsities = sorted({float(s) for s, k in zip(ds.sparsity.values, kinds) if k == "mask"})
    diffs = []
    for p in ds.persona.values.astype(str):
        for s in sparsities:
            own = np.nanmean(ds.evidence.sel(variant=f"mask:{p}@{s:g}", persona=p).values)
            rand = [np.nanmean(ds.evidence.sel(variant=v, persona=p).values)
                    for v, k, sp in zip(labels, kinds, ds.sparsity.values) if k == "random" and float(sp) == s]
            diffs.append(own - np.mean(rand))
    assert claim["n"] == len(diffs) and claim["effect"] == pytest.approx(np.mean(diffs))
    ref = scipy_stats.permutation_test((np.array(diffs),), np.mean, permutation_type="samples",
                                       alternative="greater", n_resamples=np.inf)
    assert claim["p"] == pytest.approx(ref.pvalue)
    assert not [c for c in fd.claims_of_dataset(ds.drop_vars("mean_evidence")) if c["variable"] == "mean_evidence"]


def test_findings_command_writes_claims(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copy(TOY / "markers-toy-long.nc", folder)
    shutil.copy(TOY / "knockout-toy-long.nc", folder)
    out = tmp_path / "c.json"
    result = CliRunner().invoke(main, ["findings", str(folder), "--json", str(out), "--all"])
    assert result.exit_code == 0, result.output
    claims = json.loads(out.read_text())
    assert {"claim", "treatment", "control", "effect", "ci_low", "ci_high", "p_holm", "n", "holds"} <= set(claims[0])
    from nnsight_persona.storage.store import load_dataset

    markers_claims = 1 + ("evidence" in load_dataset(TOY / "markers-toy-long.nc"))  # any_marker, and evidence if scored
    knockout = load_dataset(TOY / "knockout-toy-long.nc")
    knockout_claims = 3 + 3 * ("evidence" in knockout)  # persona_shift: three controls; evidence: none and two spans
    assert len(claims) == markers_claims + knockout_claims * knockout.sizes["band"]
    assert "remove_persona" in result.output


def test_compare_flags_paper_medians_outside_our_interval():
    from nnsight_persona.analysis.compare import compare
    from nnsight_persona.storage.store import load_dataset

    ds = load_dataset(SMOLLM2 / "substitute-xu2026-long.nc")
    rows = compare(ds, paper="gemma2b")
    flags = []
    for row in rows:
        cells = ds["kl"].sel(condition="additive", position=row["position"], layer=row["layer"]).values.ravel()
        ci = scipy_stats.bootstrap((cells,), np.median, n_resamples=2000, method="percentile",
                                   random_state=np.random.default_rng(1)).confidence_interval
        width = ci.high - ci.low
        assert abs(row["ours_ci_low"] - ci.low) < 0.25 * width and abs(row["ours_ci_high"] - ci.high) < 0.25 * width
        outside = not row["ours_ci_low"] <= row["paper_median"] <= row["ours_ci_high"]
        assert (row["paper_outside"] == "yes") == outside
        flags.append(outside)
    assert any(flags) and not all(flags)  # the file has both cases, so the flag is really tested


def test_figures_draw_the_bootstrap_interval_of_the_median():
    """kl_by_layer's bands are the 95% bootstrap interval of the median over cells (scipy agrees within
    Monte Carlo error), not the quartiles."""
    from nnsight_persona.analysis.intervals import median_with_interval
    from nnsight_persona.plots import FIGURES

    ds = xr.open_dataset(TOY / "substitute-toy.nc").load()
    fig = FIGURES["substitute"]["kl_by_layer"](ds)
    kl = ds["kl"].sel(condition="additive").squeeze("model", drop=True)
    summary = median_with_interval(kl)
    position = str(kl.position.values[0])
    bands = [c for c in fig.axes[0].collections if len(c.get_paths())]
    ys = bands[0].get_paths()[0].vertices[:, 1]
    want = summary.sel(position=position)
    assert np.isin(want["ci_low"].values, ys).all() and np.isin(want["ci_high"].values, ys).all()
    assert not np.isin(want["q25"].values, ys).all()
    cells = kl.sel(position=position).isel(layer=2).values
    ci = scipy_stats.bootstrap((cells,), np.median, n_resamples=4000, method="percentile",
                               random_state=np.random.default_rng(0)).confidence_interval
    width = ci.high - ci.low
    mine = want.isel(layer=2)
    assert abs(float(mine["ci_low"]) - ci.low) < 0.3 * width and abs(float(mine["ci_high"]) - ci.high) < 0.3 * width


@pytest.mark.parametrize("name", sorted(p.name for p in TOY.glob("*.nc")))
def test_summary_covers_every_toy_file(name):
    ds = xr.open_dataset(TOY / name).load()
    records = interval_summary(ds, "median", n_resamples=200)
    assert records, f"no statistic of {name} summarised"
    for r in records[:50]:
        if r["n"] > 1 and np.isfinite(r["estimate"]) and np.isfinite(r["ci_low"]):
            assert r["ci_low"] <= r["estimate"] <= r["ci_high"]
