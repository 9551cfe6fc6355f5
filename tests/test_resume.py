"""Interrupted runs keep what finished, and a resumed run completes it with the same numbers."""

import numpy as np
import pytest
from click.testing import CliRunner

from nnsight_persona.core import tracing
from nnsight_persona.cli import main
from nnsight_persona.studies.xu2026 import capture, inject, knockout, markers, substitute
from nnsight_persona.core.grids import load_grid
from nnsight_persona.storage.store import Checkpoint, load_dataset, resumable, save_dataset

# (experiment, where its traced call is looked up, that call, spec, result variable)
CASES = [
    (capture, capture, "read_residuals_on_prefix", lambda: capture.CaptureSpec(grid="tiny", layers=(0, 2), batch_size=3), "resid"),
    (substitute, substitute, "window_kl_against", lambda: substitute.SubstituteSpec(grid="tiny", layers=(1, 3), batch_size=5), "kl"),
    (markers, markers, "generate_with_edit", lambda: markers.MarkersSpec(grid="tiny", layer=2, n_tokens=5, batch_size=3), "text"),
    (inject, tracing, "window_kl_on_prefix", lambda: inject.InjectSpec(
        grid="tiny", layer_sets=((2,), (1, 3)), site_layers=(2,), batch_size=6, batches_per_request=2), "kl"),
    (knockout, knockout, "generate_with_edit", lambda: knockout.KnockoutSpec(
        grid="tiny", bands=((0, 2), (0, 4)), n_tokens=4, batch_size=4), "kl"),
]


@pytest.mark.parametrize("module, where, traced, make_spec, variable", CASES, ids=[c[0].__name__.split(".")[-1] for c in CASES])
def test_interrupt_then_resume_equals_an_uninterrupted_run(loaded_models, tiny_grid_file, monkeypatch, module, where, traced, make_spec, variable):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    full = module.run(loaded, grid, make_spec(), progress=False)
    real = getattr(where, traced)
    calls = {"n": 0}

    def counting(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == limit:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    limit = 10**9
    monkeypatch.setattr(where, traced, counting)
    module.run(loaded, grid, make_spec(), progress=False)
    total_calls, calls["n"], limit = calls["n"], 0, 2
    partial = module.run(loaded, grid, make_spec(), progress=False)
    assert partial.attrs["completed"] == 0
    calls["n"], limit = 0, 10**9
    resumed = module.run(loaded, grid, make_spec(), progress=False, previous=partial)
    assert resumed.attrs["completed"] == 1
    assert 0 < calls["n"] < total_calls  # only the unfinished part was computed again
    if resumed[variable].dtype.kind == "f":
        np.testing.assert_allclose(resumed[variable].values, full[variable].values, atol=1e-6)
    else:
        assert (resumed[variable].values == full[variable].values).all()
    if "evidence" in full:  # the answers' scores: kept from the partial run, computed for the rest
        assert np.isnan(partial.evidence.values).any() and not np.isnan(full.evidence.values).all()
        np.testing.assert_allclose(resumed.evidence.values, full.evidence.values, atol=1e-6)
        assert (resumed.answer_length.values == full.answer_length.values).all()


def test_resumable_only_matches_the_same_unfinished_computation(loaded_models, tiny_grid_file, tmp_path):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    spec = capture.CaptureSpec(grid="tiny", layers=(0, 2))
    ds = capture.run(loaded, grid, spec, progress=False)
    path = tmp_path / "cap.nc"
    as_stored = {**spec.to_dict(), "grid_definition": grid.to_dict()}
    save_dataset(ds, path)
    assert resumable(path, "capture", as_stored, loaded.model_id) is None  # finished: nothing to resume
    ds.attrs["completed"] = 0
    save_dataset(ds, path)
    assert resumable(path, "capture", as_stored, loaded.model_id) is not None
    assert resumable(path, "capture", {**as_stored, "batch_size": 7}, loaded.model_id) is not None
    assert resumable(path, "capture", {**as_stored, "layers": [0, 1]}, loaded.model_id) is None
    assert resumable(path, "substitute", as_stored, loaded.model_id) is None
    assert resumable(path, "capture", as_stored, "another-model") is None


def test_checkpoint_writes_the_partial_result_when_due(tmp_path):
    import xarray as xr

    path = tmp_path / "c.nc"
    check = Checkpoint(path, every_s=3600)
    check(lambda: xr.Dataset(attrs={"completed": 0}))
    assert not path.exists()  # not due yet
    check.every_s = 0
    check(lambda: xr.Dataset({"x": ("a", [1.0])}, attrs={"completed": 0}))
    assert load_dataset(path).attrs["completed"] == 0


def test_cli_keeps_an_interrupted_run_and_resumes_it(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    out = tmp_path / "sub.nc"
    args = ["substitute", "--model", str(tiny_dirs["qwen2"]), "--dtype", "float32", "--grid", str(tiny_grid_file),
            "--layers", "1,3", "--batch-size", "4", "--out", str(out), "--no-progress"]
    real = substitute.window_kl_against
    calls = {"n": 0}

    def interrupted(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(substitute, "window_kl_against", interrupted)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 130 and "kept the finished part" in result.output
    partial = load_dataset(out)
    assert partial.attrs["completed"] == 0 and partial.kl.isnull().any() and partial.kl.notnull().any()
    monkeypatch.setattr(substitute, "window_kl_against", real)
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0 and "resuming the unfinished run" in result.output
    fresh = tmp_path / "fresh.nc"
    assert CliRunner().invoke(main, args[:-3] + ["--out", str(fresh), "--no-progress"]).exit_code == 0
    np.testing.assert_allclose(load_dataset(out).kl.values, load_dataset(fresh).kl.values, atol=1e-6)
