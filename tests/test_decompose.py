"""decompose and summarize on synthetic captures: agreement with plain numpy and the conventions."""

import json

import numpy as np
import pytest
import xarray as xr

from nnsight_persona.analysis import decompose, delta_vectors, format_table, summarize
from nnsight_persona.core.errors import PersonaError, SelectionError
from nnsight_persona.storage.store import load_dataset, save_dataset, spec_of
from nnsight_persona.core.replacements import site_residuals
from tolerances import RESIDUAL, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

PERSONAS, TASKS = ["yoda", "marx", "buffett"], ["haiku", "policy"]
POSITIONS = ["p_user_last", "p_last", "g1", "g2"]


def provenance(experiment, model_id="toy", grid="toy", **spec):
    return {
        "experiment": experiment, "model_id": model_id, "model_revision": "main", "model_family": "test",
        "dtype": "float32", "n_layers": 3, "layer_convention": "layer L = hidden_states[L]",
        "package_version": "0", "nnsight_version": "0", "transformers_version": "0", "torch_version": "0",
        "git_commit": "abc", "spec": json.dumps({"grid": grid, **spec}), "created": "2026-01-01T00:00:00+00:00",
        "completed": 1, "position_convention": "p_user_last = the paper's",
    }


def cell_coords(personas=PERSONAS, tasks=TASKS):
    cells = [(x, y) for x in personas for y in tasks]
    return {
        "cell": [f"{x}__{y}" for x, y in cells],
        "persona": ("cell", [x for x, _ in cells]),
        "task": ("cell", [y for _, y in cells]),
    }


def make_capture(resid=None, seed=0, layers=(0, 1, 2, 3), hidden=16, model_id="toy", grid="toy"):
    """A capture dataset with the schema of docs/datasets.md (resid only; the rest is not used)."""
    rng = np.random.default_rng(seed)
    shape = (1, len(layers), len(POSITIONS), len(PERSONAS) * len(TASKS), 4, hidden)
    if resid is None:
        resid = rng.normal(size=shape).astype(np.float32)
    ds = xr.Dataset(
        {"resid": (("model", "layer", "position", "cell", "condition", "hidden"), resid)},
        coords={"model": [model_id], "layer": np.array(layers), "position": POSITIONS,
                "condition": ["BB", "XB", "BY", "XY"], **cell_coords()},
        attrs=provenance("capture", model_id, grid, layers=list(layers)),
    )
    ds["layer"].attrs["long_name"] = "layer (hidden_states index)"
    return ds


def numpy_reference(resid):
    """The statistics written out directly, one vector pair at a time."""
    r = resid.astype(np.float64)
    out = {k: np.zeros(r.shape[:4]) for k in ("cos_xy_sum", "cos_x_y", "inter_over_xy", "norm_inter")}
    for idx in np.ndindex(*r.shape[:4]):
        bb, xb, by, xy = r[idx]
        dx, dy, dxy = xb - bb, by - bb, xy - bb
        s, inter = dx + dy, dxy - (dx + dy)
        out["cos_xy_sum"][idx] = dxy @ s / (np.linalg.norm(dxy) * np.linalg.norm(s))
        out["cos_x_y"][idx] = dx @ dy / (np.linalg.norm(dx) * np.linalg.norm(dy))
        out["inter_over_xy"][idx] = np.linalg.norm(inter) / np.linalg.norm(dxy)
        out["norm_inter"][idx] = np.linalg.norm(inter)
    return out


def test_decompose_agrees_with_numpy_on_random_data():
    cap = make_capture()
    ds = decompose(cap)
    expected = numpy_reference(cap.resid.values)
    for name, values in expected.items():
        assert ds[name].dims == ("model", "layer", "position", "cell")
        np.testing.assert_allclose(ds[name].values, values, rtol=1e-10, atol=1e-12)
    r = cap.resid.values.astype(np.float64)
    np.testing.assert_allclose(ds.norm_delta_x.values, np.linalg.norm(r[..., 1, :] - r[..., 0, :], axis=-1))
    assert ds.cos_xy_sum.dtype == np.float64


def test_exactly_additive_capture_gives_cos_one_and_no_interaction():
    rng = np.random.default_rng(1)
    bb, dx, dy = (rng.normal(size=(1, 4, 4, 6, 32)) for _ in range(3))
    resid = np.stack([bb, bb + dx, bb + dy, bb + dx + dy], axis=4)
    ds = decompose(make_capture(resid=resid, hidden=32))
    np.testing.assert_allclose(ds.cos_xy_sum.values, 1.0, atol=1e-12)
    np.testing.assert_allclose(ds.inter_over_xy.values, 0.0, atol=1e-12)


def test_zero_deltas_give_zero_not_nan():
    cap = make_capture()
    same = cap.resid.values.copy()
    same[:, 0, 1] = same[:, 0, 1, :, :1]  # layer 0, p_last: every condition has the same vector
    ds = decompose(make_capture(resid=same))
    at = ds.isel(layer=0).sel(position="p_last")
    for name in ("cos_xy_sum", "cos_x_y", "inter_over_xy", "norm_delta_xy"):
        assert np.all(at[name].values == 0), name
    assert not np.isnan(ds.cos_xy_sum.values).any()


def test_nan_cells_stay_nan():
    resid = make_capture().resid.values.copy()
    resid[:, :, :, 2] = np.nan  # a cell an interrupted capture never reached
    ds = decompose(make_capture(resid=resid))
    assert np.isnan(ds.cos_xy_sum.values[:, :, :, 2]).all()
    assert not np.isnan(ds.cos_xy_sum.values[:, :, :, :2]).any()


def test_cosines_lie_in_range():
    ds = decompose(make_capture(seed=3))
    for name in ("cos_xy_sum", "cos_x_y"):
        assert ((ds[name] >= -1) & (ds[name] <= 1)).all()


def test_coords_attrs_and_spec():
    cap = make_capture(grid="xu2026-short")
    ds = decompose(cap)
    assert list(ds.persona.values) == list(cap.persona.values)
    assert list(ds.task.values) == list(cap.task.values)
    assert ds.attrs["experiment"] == "decompose"
    assert ds.attrs["model_id"] == "toy" and ds.attrs["completed"] == 1
    spec = spec_of(ds)
    assert spec["grid"] == "xu2026-short"
    assert spec["source"]["spec"] == spec_of(cap) and spec["source"]["experiment"] == "capture"
    assert all(ds[v].attrs.get("long_name") for v in ds.data_vars)
    assert ds.layer.attrs["long_name"] == "layer (hidden_states index)"


def test_decomposition_of_a_toy_capture_equals_plain_transformers(toy_model, toy_plain, toy_grid_raw):
    """decompose and delta_vectors of a real capture (the toy persona model) agree with the
    statistics of residuals read by plain transformers, one prompt at a time."""
    from nnsight_persona.studies.xu2026 import capture
    from nnsight_persona.core.grids import load_grid
    from reference import CONDITIONS, chat_prompt, greedy, hidden_states, user_texts

    cells, layers = ["pirate__weather", "robot__story"], (2, 4, 6)
    spec = capture.CaptureSpec(grid="toy", layers=layers, cells=tuple(cells), n_continuation=2)
    cap = capture.run(toy_model, load_grid("toy"), spec, progress=False)
    positions = [str(p) for p in cap.position.values]
    tok = toy_model.tokenizer
    resid = np.zeros((1, len(layers), len(positions), len(cells), 4, toy_model.hidden_size))
    for ci, cell in enumerate(cells):
        p = {c: chat_prompt(tok, text) for c, text in user_texts(toy_grid_raw, *cell.split("__")).items()}
        clean = greedy(toy_plain, p["XY"]["ids"], 2, toy_model.pad_id)
        for k, cond in enumerate(CONDITIONS):
            states = hidden_states(toy_plain, p[cond]["ids"] + clean)
            for li, layer in enumerate(layers):
                for pi, pos in enumerate(positions):
                    resid[0, li, pi, ci, k] = states[layer][p[cond][pos]].numpy()
    expected = numpy_reference(resid)
    ds = decompose(cap)
    for name in ("cos_xy_sum", "cos_x_y", "inter_over_xy"):  # of one scale: elementwise
        np.testing.assert_allclose(ds[name].values, expected[name], rtol=1e-3, atol=1e-3, err_msg=name)
    assert_close_per_vector(ds.norm_inter.values, expected["norm_inter"], 1e-3, axis=None, what="norm_inter")
    dx, dy = delta_vectors(cap)
    # A delta's rounding is its residuals' (two routes to them, nnsight vs plain): relative to their norm.
    bb = np.linalg.norm(resid[..., 0, :], axis=-1)
    for got, k in ((dx, 1), (dy, 2)):
        error = np.linalg.norm(got.values - (resid[..., k, :] - resid[..., 0, :]), axis=-1) / bb
        assert error.max() < RESIDUAL, (k, float(error.max()))
    # The persona's and the task's effects are far apart: swapping or mixing them would show.
    assert (np.linalg.norm(dx.values - dy.values, axis=-1) / bb).max() > 100 * RESIDUAL
    # The toy model is nearly additive where it carries the persona (p_last), as the paper reports.
    assert float(ds.cos_xy_sum.sel(position="p_last").min()) > 0.5


def test_bad_inputs_are_named():
    cap = make_capture()
    with pytest.raises(SelectionError, match="XY"):
        decompose(cap.sel(condition=["BB", "XB", "BY"]))
    with pytest.raises(PersonaError, match="resid"):
        decompose(cap.drop_vars("resid"))
    with pytest.raises(PersonaError, match="substitute"):
        decompose(cap.assign_attrs(experiment="substitute"))


def test_netcdf_round_trip_is_identical(tmp_path):
    ds = decompose(make_capture())
    path = save_dataset(ds, tmp_path / "decompose.nc")
    back = load_dataset(path)
    xr.testing.assert_identical(back, ds)


def test_summaries_equal_numpy():
    ds = decompose(make_capture(seed=5))
    values = ds.cos_xy_sum.values.copy()
    values[0, 1, 2, 0] = np.nan
    da = ds.cos_xy_sum.copy(data=values)
    s = summarize(da)
    assert s["median"].dims == ("model", "layer", "position")
    np.testing.assert_allclose(s["median"].values, np.nanmedian(values, axis=-1))
    np.testing.assert_allclose(s["q25"].values, np.nanquantile(values, 0.25, axis=-1))
    np.testing.assert_allclose(s["q75"].values, np.nanquantile(values, 0.75, axis=-1))
    np.testing.assert_allclose(s["min"].values, np.nanmin(values, axis=-1))
    np.testing.assert_allclose(s["max"].values, np.nanmax(values, axis=-1))
    assert int(s["count"].values[0, 1, 2]) == values.shape[-1] - 1
    with pytest.raises(SelectionError, match="hidden"):
        summarize(da, over="hidden")


def test_format_table_aligns_and_rounds():
    text = format_table([{"layer": 1, "x": 0.123456}, {"layer": 10, "x": float("nan")}], digits=3)
    lines = text.splitlines()
    assert lines[0].split() == ["layer", "x"] and "0.123" in lines[2] and "nan" in lines[3]
    assert len({len(line) for line in lines[:3]}) == 1


def test_site_residuals_read_the_capture_in_place_or_select_the_sites():
    cap = make_capture()
    resid = cap.resid.isel(model=0)
    whole = site_residuals(cap, resid.layer.values, resid.position.values, resid.cell.values)
    assert np.shares_memory(whole, cap.resid.values)  # no copy of the whole capture
    np.testing.assert_array_equal(whole, resid.transpose("layer", "position", "cell", "condition", "hidden").values)
    cells = ["marx__policy", "yoda__haiku"]
    some = site_residuals(cap, [3, 1], ["g1"], cells)
    assert not np.shares_memory(some, cap.resid.values) and some.shape == (2, 1, 2, 4, 16)
    for i, layer in enumerate([3, 1]):
        for k, cell in enumerate(cells):
            for j, cond in enumerate(["BB", "XB", "BY", "XY"]):
                np.testing.assert_array_equal(some[i, 0, k, j], resid.sel(layer=layer, position="g1", cell=cell, condition=cond).values)
    shuffled = cap.sel(condition=["XY", "BB", "BY", "XB"])  # stored in another order: read by name
    np.testing.assert_array_equal(site_residuals(shuffled, [0], ["g2"], cells)[0, 0], some_at(cap, 0, "g2", cells))


def some_at(cap, layer, position, cells):
    r = cap.resid.isel(model=0).sel(layer=layer, position=position)
    return np.stack([np.stack([r.sel(cell=c, condition=k).values for k in ["BB", "XB", "BY", "XY"]]) for c in cells])
