"""The Python API (nnsight_persona.capture ... heads) makes the Dataset its command writes, on a
model name or an already loaded model, and follows the commands' output rules."""

import subprocess
import sys

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import nnsight_persona
from nnsight_persona.cli import main
from nnsight_persona.core.errors import OutputError
from nnsight_persona.storage.store import load_dataset

# Per experiment: the command's options and the same run as API keywords (None: the defaults on both sides).
CASES = {
    "capture": (["--layers", "0,2", "--positions", "p_last,g1", "--n-continuation", "3"],
                {"layers": [0, 2], "positions": ["p_last", "g1"], "n_continuation": 3}),
    "decompose": (["--layers", "1,3", "--positions", "p_last"], {"layers": "1,3", "positions": "p_last"}),
    "substitute": (["--positions", "p_last", "--cells", "yoda__haiku,engineer__book"],
                   {"positions": "p_last", "cells": ["yoda__haiku", "engineer__book"]}),
    "markers": (["--n-tokens", "4", "--conditions", "clean,additive"],
                {"n_tokens": 4, "conditions": ["clean", "additive"]}),
    "inject": (["--clamp-layers", "2;1-3", "--site-layers", "2", "--positions", "p_last"],
               {"clamp_layers": "2;1-3", "site_layers": [2], "positions": "p_last"}),
    "knockout": (["--band", "0:2,all", "--n-tokens", "0"], {"bands": "0:2,all", "n_tokens": 0}),
    "heads": (["--band", "1:3", "--top-k", "1,2"], {"band": "1:3", "top_k": [1, 2]}),
}
# Differ between any two runs: when and how long.
PER_RUN = {"created", "sweep_wall_s"}


def same_result(a: xr.Dataset, b: xr.Dataset) -> None:
    from nnsight_persona.storage.store import result_spec, spec_of

    xr.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    plain = lambda ds: {k: v for k, v in ds.attrs.items() if k not in PER_RUN | {"spec"}}
    assert plain(a) == plain(b)
    assert result_spec(spec_of(a)) == result_spec(spec_of(b))  # a decompose's spec names its capture's time


@pytest.mark.parametrize("experiment", list(CASES))
def test_each_function_returns_the_commands_dataset(experiment, tiny_dirs, tiny_grid_file, tmp_path):
    args, keywords = CASES[experiment]
    model = str(tiny_dirs["llama"])
    out = tmp_path / f"{experiment}.nc"
    result = CliRunner().invoke(main, [experiment, "--model", model, "--grid", str(tiny_grid_file), "--out", str(out),
                                       "--quiet", *args])
    assert result.exit_code == 0, result.output
    ds = getattr(nnsight_persona, experiment)(model, grid=str(tiny_grid_file), progress=False, **keywords)
    same_result(ds, load_dataset(out))


def test_defaults_are_the_commands_defaults(tiny_dirs, tiny_grid_file, tmp_path):
    model = str(tiny_dirs["qwen2"])
    out = tmp_path / "sub.nc"
    result = CliRunner().invoke(main, ["substitute", "--model", model, "--grid", str(tiny_grid_file), "--cells",
                                       "yoda__haiku", "--out", str(out), "--quiet"])
    assert result.exit_code == 0, result.output
    ds = nnsight_persona.substitute(model, grid=str(tiny_grid_file), cells="yoda__haiku", progress=False)
    assert ds.layer.values.tolist() == [1, 2, 3]  # the paper's fractional grid of 4 layers
    same_result(ds, load_dataset(out))


def test_a_loaded_model_is_used_as_it_is(tiny_dirs, tiny_grid_file, monkeypatch):
    from nnsight_persona.models import loading as models

    model = str(tiny_dirs["llama"])
    by_name = nnsight_persona.knockout(model, grid=str(tiny_grid_file), bands="0:2", n_tokens=0, progress=False)
    loaded = nnsight_persona.load_model(model)

    def no_second_load(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    monkeypatch.setattr(models, "load_model", no_second_load)
    first = nnsight_persona.knockout(loaded, grid=str(tiny_grid_file), bands="0:2", n_tokens=0, progress=False)
    capture = nnsight_persona.capture(loaded, grid=str(tiny_grid_file), positions="p_last", progress=False)
    sub = nnsight_persona.substitute(loaded, capture=capture, layers=[2], positions="p_last", progress=False)
    same_result(first, by_name)
    assert sub.attrs["model_id"] == model and np.isfinite(sub.kl.values).all()
    with pytest.raises(Exception, match="dtype 'bfloat16' disagrees"):
        nnsight_persona.capture(loaded, grid=str(tiny_grid_file), dtype="bfloat16", progress=False)


def test_decompose_of_a_capture_dataset_needs_no_model(tiny_dirs, tiny_grid_file, monkeypatch):
    from nnsight_persona.models import loading as models
    from nnsight_persona.analysis import decompose

    capture = nnsight_persona.capture(str(tiny_dirs["llama"]), grid=str(tiny_grid_file), layers=[1, 2],
                                      progress=False)
    monkeypatch.setattr(models, "load_model", lambda *a, **k: pytest.fail("decompose loaded a model"))
    same_result(nnsight_persona.decompose(capture=capture), decompose(capture))


def test_out_follows_the_commands_rules(tiny_dirs, tiny_grid_file, tmp_path, monkeypatch):
    from nnsight_persona.studies.xu2026 import substitute as exp

    model, out = str(tiny_dirs["llama"]), tmp_path / "sub.nc"
    run = dict(grid=str(tiny_grid_file), layers=[2], positions="p_last", out=out, progress=False)
    first = nnsight_persona.substitute(model, **run)
    same_result(load_dataset(out), first)
    monkeypatch.setattr(exp, "run", lambda *a, **k: pytest.fail("a finished result was computed again"))
    again = nnsight_persona.substitute(model, **run)  # done: the file's result, nothing computed
    assert again.attrs["created"] == first.attrs["created"]
    with pytest.raises(OutputError, match="differs from this run in layers"):
        nnsight_persona.substitute(model, **{**run, "layers": [1]})


def test_bad_input_is_one_clear_error(tiny_dirs, tiny_grid_file):
    from nnsight_persona.core.errors import SelectionError

    with pytest.raises(SelectionError, match=r"unknown position\(s\) \['g7'\]"):
        nnsight_persona.capture(str(tiny_dirs["llama"]), grid=str(tiny_grid_file), positions="p_last,g7")
    with pytest.raises(SelectionError, match="not a int"):
        nnsight_persona.capture(3, grid=str(tiny_grid_file))


def test_import_is_light_and_lazy():
    code = ("import sys, nnsight_persona as n; heavy = ('torch', 'xarray', 'nnsight', 'transformers', 'matplotlib'); "
            "print(sorted(m for m in heavy if m in sys.modules)); print(sorted(n.__all__))")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "[]"
    assert set(CASES) | {"open_results", "write_report", "load_model"} <= set(eval(lines[1]))
    with pytest.raises(AttributeError, match="no attribute 'substitue'"):
        nnsight_persona.substitue  # noqa: B018
