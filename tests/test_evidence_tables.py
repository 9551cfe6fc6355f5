"""The docs' evidence tables computed from small synthetic datasets, against numpy written here."""

from __future__ import annotations

import numpy as np
import xarray as xr

from nnsight_persona.analysis.evidence_tables import knockout_evidence_table, persona_contrast


def _eval_dataset():
    rng = np.random.default_rng(0)
    variants = ["unpruned", "prompt:a", "prompt:b", "mask:a@0.1", "mask:b@0.1", "random@0.1#0"]
    evidence = rng.normal(0, 0.2, size=(len(variants), 2, 8))
    evidence[1, 0] += 0.5  # prompt:a's answers: explained by a's prompt
    coherence = np.full((len(variants), 8), 0.9)
    coherence[3, :4] = 0.1  # half of mask:a's answers are loops
    return xr.Dataset(
        {"evidence": (("variant", "persona", "generation"), evidence),
         "coherence": (("variant", "generation"), coherence)},
        coords={"variant": variants, "persona": ["a", "b"],
                "kind": ("variant", ["unpruned", "prompt", "prompt", "mask", "mask", "random"]),
                "sparsity": ("variant", [0, 0, 0, 0.1, 0.1, 0.1])})


def test_persona_contrast_is_the_difference_of_the_two_personas_evidence():
    ds = _eval_dataset()
    got = persona_contrast(ds, "prompt:a", "a", "b")
    np.testing.assert_allclose(got, ds.evidence.values[1, 0] - ds.evidence.values[1, 1])
    assert got.mean() > 0.3  # the planted persona shows
    assert np.allclose(persona_contrast(ds, "prompt:a", "b", "a"), -got)  # the sign follows the persona asked


def test_persona_contrast_keeps_only_the_negative_part_of_incoherent_answers():
    ds = _eval_dataset()
    diff = ds.evidence.values[3, 0] - ds.evidence.values[3, 1]
    got = persona_contrast(ds, "mask:a@0.1", "a", "b")
    np.testing.assert_allclose(got[:4], np.minimum(diff[:4], 0))
    np.testing.assert_allclose(got[4:], diff[4:])


def test_knockout_evidence_table_gives_each_band_and_condition_its_mean(tmp_path):
    rng = np.random.default_rng(1)
    values = rng.normal(size=(1, 2, 5, 3))
    ds = xr.Dataset({"evidence": (("model", "band", "cell", "condition"), values)},
                    coords={"model": ["m"], "band": ["0:2", "1:3"], "condition": ["persona", "task_span", "none"]})
    path = tmp_path / "k.nc"
    ds.to_netcdf(path)
    table = knockout_evidence_table(str(path)).splitlines()
    assert table[0].split("|")[2:4] == [" 0:2 ", " 1:3 "]
    row = table[2 + 1].split("|")  # task_span
    assert row[1].strip() == "task_span"
    assert row[3].strip().startswith(f"{values[0, 1, :, 1].mean():+.3f}")
