"""compare: our medians next to the paper's, for the models and grids the paper reports."""

import json
from importlib import resources

import numpy as np
import pytest
from click.testing import CliRunner

from nnsight_persona.analysis import decompose
from nnsight_persona.analysis.compare import compare, reported_combinations
from nnsight_persona.commands.analysis import compare_command
from nnsight_persona.core.errors import PersonaError
from nnsight_persona.storage.store import save_dataset
from test_decompose import make_capture
from test_plots import make_markers, make_substitute

GEMMA = "google/gemma-2-2b-it"


def paper(name):
    return json.loads(resources.files("nnsight_persona.reference").joinpath("xu2026", name).read_text())


def gemma_decompose():
    return decompose(make_capture(layers=(10, 14, 18), model_id=GEMMA, grid="xu2026-short"))


def test_compare_decompose_prints_ours_and_the_papers(tmp_path):
    ds = gemma_decompose()
    expected = paper("v15_gemma2b_localized_positions.json")["decomposition"]["p_last"]["14"]["cos_xy_sum"]["median"]
    ours = float(np.median(ds.cos_xy_sum.sel(layer=14, position="p_last").values))
    result = CliRunner().invoke(compare_command, [str(save_dataset(ds, tmp_path / "decompose.nc"))])
    assert result.exit_code == 0, result.output
    assert f"{expected:.4f}" in result.output and f"{ours:.4f}" in result.output
    assert "v15_gemma2b_localized_positions.json" in result.output
    row = next(r for r in compare(ds) if (r["statistic"], r["position"], r["layer"]) == ("cos_xy_sum", "p_last", 14))
    assert row["paper_median"] == expected and row["ours_median"] == pytest.approx(ours)
    assert {r["layer"] for r in compare(ds)} == {10, 14, 18}


def test_compare_substitute_uses_the_causal_table():
    ds = make_substitute(model_id="Qwen/Qwen2.5-1.5B-Instruct", grid="xu2026-long", layers=(7, 15, 20, 21))
    rows = compare(ds)
    ref = paper("v16_qwen15_diverse_grid.json")["causal"]
    # The long grid reports p_last, g1, g2 at 7, 15, 20: layer 21 and p_user_last have no partner.
    assert {(r["position"], r["layer"]) for r in rows} == {(p, L) for p in ("p_last", "g1", "g2") for L in (7, 15, 20)}
    row = next(r for r in rows if (r["position"], r["layer"]) == ("g1", 15))
    assert row["paper_median"] == ref["g1"]["15"]["summary"]["median"]
    additive = ds.kl.sel(condition="additive", position="g1", layer=15).values[0]
    assert row["ours_median"] == pytest.approx(np.median(additive))


def test_compare_markers_against_the_behavioural_summary():
    ref = paper("v17_behavioral_markers.json")
    ds = make_markers(model_id=GEMMA, grid="xu2026-long", personas=ref["personas"], tasks=ref["tasks"] + ["haiku"])
    rows = compare(ds)
    assert [r["condition"] for r in rows] == ["clean", "additive", "remove_persona", "bare"]
    removed = rows[2]
    summary = ref["summary"]["remove_X"]
    assert removed["paper_any"] == f"{summary['any_present_count']}/{summary['total_cells']}"
    assert removed["ours_any"].endswith("/24")  # the paper's 24 cells, not all 32


def test_unknown_model_gives_a_clear_error(tmp_path):
    ds = decompose(make_capture(model_id="toy", grid="toy"))
    with pytest.raises(PersonaError, match="'toy'") as err:
        compare(ds)
    for model, grid in reported_combinations():
        assert f"{model} on {grid}" in str(err.value)
    result = CliRunner().invoke(compare_command, [str(save_dataset(ds, tmp_path / "d.nc"))])
    assert result.exit_code != 0 and "google/gemma-2-2b-it on xu2026-short" in result.output


def test_unreported_grid_and_experiment_are_refused():
    with pytest.raises(PersonaError, match="Qwen/Qwen2.5-3B-Instruct"):
        compare(decompose(make_capture(model_id="Qwen/Qwen2.5-3B-Instruct", grid="xu2026-long")))
    with pytest.raises(PersonaError, match="xu2026-long"):
        compare(make_markers(model_id=GEMMA, grid="xu2026-short"))
    with pytest.raises(PersonaError, match="capture"):
        compare(make_capture(model_id=GEMMA, grid="xu2026-short"))
