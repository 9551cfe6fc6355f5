"""open_results / collect: result files of several models as one Dataset along `model`, checked;
compare and the figures on such a dataset.

The files are the committed SmolLM2 results and copies of them dressed as other models (another
depth, scaled numbers), so every expected value is read back from the source files with plain
netCDF reads, never through the code under test.
"""

import json
from pathlib import Path

import netCDF4
import numpy as np
import pytest
from click.testing import CliRunner

from nnsight_persona import open_results
from nnsight_persona.core.errors import SelectionError
from nnsight_persona.core.selection import paper_layers
from nnsight_persona.storage.store import load_dataset, save_dataset

ROOT = Path(__file__).resolve().parent.parent
SMOL = ROOT / "artifacts" / "smollm2"
SUB = SMOL / "substitute-xu2026-short.nc"
DEC = SMOL / "decompose-xu2026-short.nc"


def raw(path, variable):
    """A variable as stored in the file (netCDF4 directly), and the file's layer list."""
    with netCDF4.Dataset(path) as f:
        return np.array(f[variable][:]), [int(v) for v in f["layer"][:]]


def dressed(source, path, model, n_layers, layers, scale):
    """`source` as if made by `model` (n_layers deep, at `layers`), its numbers times `scale`."""
    ds = load_dataset(source)
    ds = ds.isel(layer=slice(0, len(layers))).assign_coords(model=[model], layer=list(layers))
    for name in ds.data_vars:
        if ds[name].dtype.kind == "f":
            ds[name] = ds[name] * scale
    ds.attrs.update(model_id=model, n_layers=n_layers, created="2000-01-01T00:00:00+00:00")
    save_dataset(ds, path)
    return path


@pytest.fixture
def gemma_like(tmp_path):
    """The SmolLM2 substitute result as a 26-layer model on its paper layers, KL x 3."""
    return dressed(SUB, tmp_path / "substitute-gemma.nc", "gemma-like", 26, paper_layers(26), 3.0)


def test_same_layers_concatenate_along_model(tmp_path):
    other = dressed(SUB, tmp_path / "other.nc", "twin", 30, paper_layers(30), 2.0)
    ds = open_results([SUB, other])
    assert ds["model"].values.tolist() == ["smollm2", "twin"]
    kl, _ = raw(SUB, "kl")
    np.testing.assert_allclose(ds.kl.sel(model="smollm2").values, kl[0])
    np.testing.assert_allclose(ds.kl.sel(model="twin").values, 2 * kl[0])
    assert ds["created"].sel(model="twin").item() == "2000-01-01T00:00:00+00:00"
    assert json.loads(ds.attrs["models"]) == ["smollm2", "twin"]


def test_different_depths_need_depth_alignment(gemma_like):
    with pytest.raises(SelectionError, match="align='depth'") as err:
        open_results([SUB, gemma_like])
    assert "\n" not in str(err.value) and "gemma" in str(err.value)
    ds = open_results([SUB, gemma_like], align="depth")
    assert ds["layer_frac"].values.tolist() == [0.25, 0.40, 0.55, 0.70, 0.85]
    assert ds["layer"].sel(model="gemma-like").values.tolist() == paper_layers(26)
    assert ds["layer"].sel(model="smollm2").values.tolist() == [8, 12, 16, 21, 26]
    kl, layers = raw(SUB, "kl")
    # the gemma-like model's value at depth 0.55 is its own third layer's, x 3
    np.testing.assert_allclose(ds.kl.sel(model="gemma-like", layer_frac=0.55).values, 3 * kl[0][2])
    np.testing.assert_allclose(ds.kl.sel(model="smollm2", layer_frac=0.55).values, kl[0][layers.index(16)])


def test_nearest_depth_alignment_takes_the_deeper_models_matching_layers(tmp_path):
    half = dressed(DEC, tmp_path / "decompose-half.nc", "half", 15, range(16), 1.0)
    ds = open_results([DEC, half], align="depth")
    assert ds["layer"].sel(model="smollm2").values.tolist() == list(range(0, 31, 2))
    cos, layers = raw(DEC, "cos_xy_sum")
    np.testing.assert_allclose(ds.cos_xy_sum.sel(model="smollm2").isel(layer_frac=5).values, cos[0][layers.index(10)])
    np.testing.assert_allclose(ds.cos_xy_sum.sel(model="half").isel(layer_frac=5).values, cos[0][5])


def test_layers_that_do_not_map_are_refused(tmp_path):
    odd = dressed(DEC, tmp_path / "decompose-odd.nc", "odd", 7, range(8), 1.0)  # depth k/7 of 30 is no layer of a 0..7 subset
    partial = dressed(DEC, tmp_path / "decompose-few.nc", "few", 30, range(5), 1.0)
    with pytest.raises(SelectionError, match="do not map onto"):
        open_results([partial, odd], align="depth")


@pytest.mark.parametrize("change, message", [
    ("grid", "different grids"), ("experiment", "of one experiment"), ("cells", "select the same cells"),
])
def test_incompatible_files_are_one_clear_line(tmp_path, change, message):
    ds = load_dataset(SUB).assign_coords(model=["other"])
    if change == "grid":
        spec = json.loads(ds.attrs["spec"])
        ds.attrs["spec"] = json.dumps({**spec, "grid": "xu2026-long"})
    elif change == "experiment":
        ds.attrs["experiment"] = "inject"
    else:
        ds = ds.isel(cell=slice(0, 6))
    save_dataset(ds, tmp_path / "other.nc")
    with pytest.raises(SelectionError, match=message) as err:
        open_results([SUB, tmp_path / "other.nc"])
    assert "\n" not in str(err.value) and "other.nc" in str(err.value)


def test_a_glob_and_a_repeated_model(tmp_path, gemma_like):
    assert open_results(str(tmp_path / "substitute-*.nc"))["model"].values.tolist() == ["gemma-like"]
    with pytest.raises(SelectionError, match="more than one"):
        open_results([gemma_like, gemma_like.with_name("copy.nc")] if gemma_like.with_name("copy.nc").write_bytes(
            gemma_like.read_bytes()) else [])
    with pytest.raises(SelectionError, match="no result file matches"):
        open_results(str(tmp_path / "nothing-*.nc"))


def test_compare_sets_every_model_beside_the_paper(gemma_like):
    from nnsight_persona.analysis.compare import compare, side_by_side

    ds = open_results([SUB, gemma_like], align="depth")
    rows = compare(ds, paper="gemma2b")
    alone = {m: compare(load_dataset(p), paper="gemma2b") for m, p in (("smollm2", SUB), ("gemma-like", gemma_like))}
    for model in alone:
        assert [r for r in rows if r["model"] == model] == alone[model]
    table = side_by_side(rows)
    kl, layers = raw(SUB, "kl")
    conditions = load_dataset(SUB).condition.values.tolist()
    positions = load_dataset(SUB).position.values.tolist()
    # the paper's layer 14 is depth 0.55: smollm2's layer 16 and the gemma-like model's 14
    row = next(r for r in table if r["position"] == "p_last" and r["paper_layer"] == 14)
    additive = kl[0][:, :, :, conditions.index("additive")]
    want = np.median(additive[layers.index(16), positions.index("p_last")])
    assert row["smollm2"] == pytest.approx(want)
    assert row["gemma-like"] == pytest.approx(3 * np.median(additive[2, positions.index("p_last")]))


def test_figures_one_per_model_and_one_with_every_model(gemma_like):
    from nnsight_persona.plots import figures_for

    ds = open_results([SUB, gemma_like], align="depth")
    figures = figures_for(ds)
    assert {"kl_by_layer-smollm2", "kl_by_layer-gemma-like", "controls-gemma-like", "across_models"} <= set(figures)
    kl, layers = raw(SUB, "kl")
    conditions = load_dataset(SUB).condition.values.tolist()
    positions = load_dataset(SUB).position.values.tolist()
    panel = figures["across_models"].axes[positions.index("g1")]
    lines = {line.get_label().split(" (")[0]: line for line in panel.get_lines()}
    additive = kl[0][:, positions.index("g1"), :, conditions.index("additive")]
    np.testing.assert_allclose(lines["smollm2"].get_xdata(), np.array(layers) / 30)
    np.testing.assert_allclose(lines["smollm2"].get_ydata(), np.median(additive, axis=1))
    np.testing.assert_allclose(lines["gemma-like"].get_xdata(), np.array(paper_layers(26)) / 26)
    np.testing.assert_allclose(lines["gemma-like"].get_ydata(), 3 * np.median(additive, axis=1))


def test_collect_command_writes_what_open_results_gives(tmp_path, gemma_like):
    from nnsight_persona.cli import main

    out = tmp_path / "all-models.nc"
    bad = CliRunner().invoke(main, ["collect", str(SUB), str(gemma_like), "--out", str(out)])
    assert bad.exit_code != 0 and "align" in bad.output and not out.exists()
    ok = CliRunner().invoke(main, ["collect", str(SUB), str(gemma_like), "--out", str(out), "--align", "depth"])
    assert ok.exit_code == 0, ok.output
    written = load_dataset(out)
    np.testing.assert_allclose(written.kl.values, open_results([SUB, gemma_like], align="depth").kl.values)
    again = CliRunner().invoke(main, ["collect", str(SUB), "--out", str(out)])
    assert again.exit_code != 0 and "--overwrite" in again.output
    # a collected file opens again, and plots
    assert load_dataset(out)["layer"].sel(model="gemma-like").values.tolist() == paper_layers(26)
    plotted = CliRunner().invoke(main, ["plot", str(out), "--out-dir", str(tmp_path / "fig"), "--quiet"])
    assert plotted.exit_code == 0, plotted.output
    assert (tmp_path / "fig" / "all-models-across_models.png").exists()
