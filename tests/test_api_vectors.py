"""The Python API of the `vectors ...` and `subnetwork ...` commands (nnsight_persona.vectors_extract
... subnetwork_eval) makes the Dataset its command writes, on a model name or an already loaded
model, follows the commands' output rules, and words bad arguments in one line.

Each command runs once (click's CliRunner, into tmp folders) with options away from their defaults,
so an option the API drops or mistranslates changes the spec, a coordinate or the numbers."""

import json
import shutil

import numpy as np
import pytest
import xarray as xr
from click.testing import CliRunner

import nnsight_persona
from nnsight_persona.cli import main
from nnsight_persona.core.errors import OutputError, PersonaError
from nnsight_persona.storage.store import load_dataset

SMALL = ["--n-questions", "1", "--n-tokens", "4", "--no-progress"]
SMALL_API = {"n_questions": 1, "n_tokens": 4, "progress": False}
PER_RUN = {"created", "sweep_wall_s"}  # differ between any two runs


def _ok(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result.output


def same_result(a: xr.Dataset, b: xr.Dataset, spec: bool = True) -> None:
    """Every data variable, coordinate and attr (but the creation time) equal, numbers to 1e-6."""
    xr.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    plain = lambda ds: {k: v for k, v in ds.attrs.items() if k not in PER_RUN | {"spec"}}  # noqa: E731
    assert plain(a) == plain(b)
    if spec:
        assert json.loads(a.attrs["spec"]) == json.loads(b.attrs["spec"])


@pytest.fixture(scope="module")
def toy():
    return nnsight_persona.load_model("toy")


@pytest.fixture
def no_second_load(monkeypatch):
    """Fail if anything loads a model (a loaded model must be used as it is)."""
    from nnsight_persona.models import loading as models

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded again")

    def apply():
        monkeypatch.setattr(models, "load_model", refuse)

    return apply


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """`vectors extract` of one trait at two layers, with a non-default threshold and token sets."""
    folder = tmp_path_factory.mktemp("vectors")
    out = folder / "v.nc"
    _ok(["vectors", "extract", "--traits", "pirate", "--layers", "2,4", "--token-sets", "response_avg,prompt_last",
         "--threshold", "40", "--checkpoint-label", "final", "--step", "7", "--out", str(out), *SMALL])
    return out


EXTRACT = dict(traits=["pirate"], layers=[2, 4], token_sets=["response_avg", "prompt_last"], threshold=40,
               checkpoint_label="final", step=7, **SMALL_API)


def test_extract_by_name_and_loaded_is_the_commands_dataset(extracted, toy, no_second_load, tmp_path, monkeypatch):
    from nnsight_persona.studies.vectors import extract as exp

    monkeypatch.chdir(tmp_path)
    by_name = nnsight_persona.vectors_extract("toy", **EXTRACT)
    same_result(by_name, load_dataset(extracted))
    no_second_load()
    out = tmp_path / "api.nc"
    loaded = nnsight_persona.vectors_extract(toy, out=out, export=tmp_path / "api.safetensors", **EXTRACT)
    same_result(loaded, load_dataset(extracted))
    same_result(load_dataset(out), loaded)
    assert (tmp_path / "api.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["api.nc", "api.safetensors"]  # nothing else written
    # The output rules: the finished file is returned without computing; another computation is refused.
    monkeypatch.setattr(exp, "run", lambda *a, **k: pytest.fail("a finished result was computed again"))
    again = nnsight_persona.vectors_extract(toy, out=out, **EXTRACT)
    assert again.attrs["created"] == loaded.attrs["created"]
    with pytest.raises(OutputError, match="--overwrite"):
        nnsight_persona.vectors_extract(toy, out=out, **{**EXTRACT, "threshold": 60})


STEER_ARGS = ["--layers", "4", "--coefs", "0,3", "--kinds", "vector,random", "--positions", "all", "--scale", "norm",
              "--seeds", "1", "--token-set", "prompt_last"]
STEER = dict(layers=4, coefs=[0, 3], kinds=["vector", "random"], positions="all", scale="norm", seeds=[1],
             token_set="prompt_last", **SMALL_API)


def test_steer_on_a_loaded_model_is_the_commands_dataset(extracted, toy, no_second_load, tmp_path):
    out = tmp_path / "s.nc"
    _ok(["vectors", "steer", "--vectors", str(extracted), "--out", str(out), *STEER_ARGS, *SMALL])
    assert (tmp_path / "s-steering.png").exists()
    written = load_dataset(out)
    no_second_load()
    same_result(nnsight_persona.vectors_steer(toy, vectors=extracted, **STEER), written)
    # The vectors as a Dataset (vectors_extract's): the same numbers; the spec names no file.
    from_ds = nnsight_persona.vectors_steer(toy, vectors=load_dataset(extracted), **STEER)
    same_result(from_ds, written, spec=False)
    assert json.loads(from_ds.attrs["spec"])["vectors_file"] == ""


def test_monitor_on_a_loaded_model_is_the_commands_dataset(extracted, toy, no_second_load, tmp_path):
    out = tmp_path / "m.nc"
    _ok(["vectors", "monitor", "--vectors", str(extracted), "--layers", "2", "--token-set", "prompt_last",
         "--out", str(out), *SMALL])
    no_second_load()
    ds = nnsight_persona.vectors_monitor(toy, vectors=str(extracted), layers=[2], token_set="prompt_last", **SMALL_API)
    same_result(ds, load_dataset(out))


def test_vs_delta_is_the_commands_dataset(extracted, tmp_path):
    from pathlib import Path

    capture = Path(__file__).resolve().parent.parent / "artifacts" / "toy" / "capture-toy.nc"
    out = tmp_path / "vd.nc"
    _ok(["vectors", "vs-delta", "--vectors", str(extracted), "--capture", str(capture), "--position", "g1",
         "--out", str(out)])
    ds = nnsight_persona.vectors_vs_delta(load_dataset(extracted), load_dataset(capture), position="g1")
    xr.testing.assert_allclose(ds, load_dataset(out))
    assert ds.trait.values.tolist() == ["pirate"] and np.isfinite(ds.cosine.values).all()


def test_vs_edit_on_a_loaded_model_is_the_commands_dataset(extracted, toy, no_second_load, tmp_path):
    out = tmp_path / "ve.nc"
    _ok(["vectors", "vs-edit", "--vectors", str(extracted), "--personas", "pirate", "--layers", "4",
         "--coefs", "0,1.5", "--conditions", "delta_x", "--n-tokens", "4", "--out", str(out), "--no-progress"])
    assert (tmp_path / "ve.png").exists()
    no_second_load()
    ds = nnsight_persona.vectors_vs_edit(toy, vectors=extracted, personas=["pirate"], layers=[4], coefs=[0, 1.5],
                                         conditions=["delta_x"], n_tokens=4, progress=False)
    same_result(ds, load_dataset(out))
    assert ds.coef.values.tolist() == [0, 1.5] and ds.condition.values.tolist() == ["delta_x"]


def test_trace_is_the_commands_dataset(toy_dir, tmp_path, no_second_load):
    folders = []
    for step in (3, 9):
        folder = tmp_path / f"ckpt-{step}"
        shutil.copytree(toy_dir, folder)
        (folder / "checkpoint.json").write_text(json.dumps({"step": step}))
        folders.append(folder)
    args = ["--traits", "pirate", "--layers", "2,4", "--steer-layer", "2", "--coef", "3", "--scale", "raw",
            "--seeds", "1", "--keep", "all", "--n-questions", "1", "--n-tokens", "4", "--no-progress"]
    _ok(["vectors", "trace", *[w for f in folders for w in ("--revision", str(f))], "--out-dir",
         str(tmp_path / "cli"), *args])
    written = load_dataset(tmp_path / "cli" / "trace.nc")
    keywords = dict(traits="pirate", layers=[2, 4], steer_layer=2, coef=3, scale="raw", seeds=[1], keep="all",
                    **SMALL_API)
    # given out of order: the steps order them; without out_dir nothing is written
    ds = nnsight_persona.vectors_trace([str(folders[1]), folders[0]], **keywords)
    same_result(ds, written)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt-3", "ckpt-9", "cli"]
    # models loaded from the folders, with out_dir: the command's files
    loaded = [nnsight_persona.load_model(str(f)) for f in folders]
    no_second_load()
    again = nnsight_persona.vectors_trace(loaded, out_dir=tmp_path / "api", **keywords)
    same_result(again, written)
    assert sorted(p.name for p in (tmp_path / "api").iterdir()) == sorted(
        p.name for p in (tmp_path / "cli").iterdir() if p.suffix == ".nc")
    same_result(load_dataset(tmp_path / "api" / "steer-step-9.nc"), load_dataset(tmp_path / "cli" / "steer-step-9.nc"))


@pytest.fixture(scope="module")
def found(tmp_path_factory):
    folder = tmp_path_factory.mktemp("subnetworks")
    out = folder / "subnetwork-find-toy.nc"
    _ok(["subnetwork", "find", "--sparsity", "0.2,0.5", "--mlp-only", "--method", "wanda", "--seed", "3",
         "--tokens", "all", "--batch-size", "4", "--out", str(out), "--no-progress"])
    return out


FIND = dict(sparsity=[0.2, 0.5], mlp_only=True, method="wanda", seed=3, tokens="all", batch_size=4, progress=False)


def test_subnetwork_find_on_a_loaded_model_is_the_commands_dataset(found, toy, no_second_load, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    no_second_load()
    ds = nnsight_persona.subnetwork_find(toy, **FIND)
    same_result(ds, load_dataset(found))
    assert not list(tmp_path.iterdir())  # no out: nothing written
    out = tmp_path / "f.nc"
    nnsight_persona.subnetwork_find(toy, out=out, **FIND)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f-masks.safetensors", "f.nc"]
    with pytest.raises(OutputError, match="--overwrite"):
        nnsight_persona.subnetwork_find(toy, out=out, **{**FIND, "seed": 4})


def test_subnetwork_eval_on_a_loaded_model_is_the_commands_dataset(found, toy, no_second_load, tmp_path):
    masks = found.with_name("subnetwork-find-toy-masks.safetensors")
    out = tmp_path / "e.nc"
    _ok(["subnetwork", "eval", str(masks), "--random-seeds", "1", "--n-tokens", "3", "--no-prompt-baseline",
         "--batch-size", "4", "--out", str(out), "--no-progress"])
    no_second_load()
    ds = nnsight_persona.subnetwork_eval(masks, model=toy, random_seeds=1, n_tokens=3, prompt_baseline=False,
                                         batch_size=4, progress=False)
    same_result(ds, load_dataset(out))
    assert "prompt" not in ds.kind.values.tolist()


def _one_line(call, match):
    with pytest.raises(PersonaError, match=match) as error:
        call()
    assert "\n" not in str(error.value)


def test_bad_arguments_are_one_line_errors(extracted, found, toy):
    from nnsight_persona import api

    _one_line(lambda: api.vectors_steer(toy, vectors=extracted, coefs="0,x"), r"--coefs '0,x' is not a comma list")
    _one_line(lambda: api.vectors_steer(toy, vectors=extracted, layers=3), r"no layer \[3\]")
    _one_line(lambda: api.vectors_steer(toy, vectors=42), "vectors must be a vectors file")
    _one_line(lambda: api.vectors_extract(3), "model must be a name .* not a int")
    _one_line(lambda: api.vectors_extract(toy, token_sets=["answers"]), r"unknown token set\(s\) \['answers'\]")
    _one_line(lambda: api.vectors_monitor(toy, vectors=extracted, ndif_host="https://x"), "only 'local'")
    _one_line(lambda: api.subnetwork_find(toy, sparsity=[1.5]), "sparsity 1.5 is out of range")
    weight_masks = found.with_name("subnetwork-find-toy-masks.safetensors")
    _one_line(lambda: api.subnetwork_eval(weight_masks, model="toy", ndif_host="local"), "cannot travel")
    # a model loaded for the remote path runs there: the masks are refused before any work, the same way
    simulated = nnsight_persona.load_model("toy", remote="local")
    _one_line(lambda: api.subnetwork_eval(weight_masks, model=simulated), "holds weight masks, which cannot travel")


def test_the_functions_are_exported_lazily():
    import subprocess
    import sys

    code = ("import sys, nnsight_persona as n; heavy = ('torch', 'xarray', 'nnsight', 'transformers'); "
            "print(sorted(m for m in heavy if m in sys.modules)); print(sorted(n.__all__))")
    lines = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert lines[0] == "[]"
    from nnsight_persona.api import VECTORS_AND_SUBNETWORKS

    assert set(VECTORS_AND_SUBNETWORKS) <= set(eval(lines[1]))
