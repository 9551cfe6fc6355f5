"""Persona vectors without a model: trait files, the endpoint scorer against a real loopback HTTP
server, the statistics of `trace`, and the original's .pt import."""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from nnsight_persona.studies.vectors import io, trace
from nnsight_persona.studies.vectors.scorers import EndpointScorer, coherence_score, lexicon_score, make_scorer
from nnsight_persona.studies.vectors.traits import TraitError, list_traits, load_trait

GOOD = {
    "name": "t", "elicitation": "system", "assistant": {"pos": "an evil", "neg": "a helpful"},
    "instruction": [{"pos": "Be bad.", "neg": "Be good."}, {"pos": "Hurt.", "neg": "Help."}],
    "questions": {"extract": ["q1?", "q2?"], "eval": ["q3?"]}, "markers": ["bad"],
}


def _write(tmp_path, data, name="trait.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_every_bundled_trait_loads_and_the_toy_traits_use_the_toys_system_turn():
    from nnsight_persona.models.toy import content as C

    names = list_traits()
    assert {"evil", "sycophantic", "humorous", "impolite", "pirate", "robot", "poet"} <= set(names)
    for name in names:
        trait = load_trait(name)
        assert trait.pairs and trait.extract_questions and trait.eval_questions
    # The toy traits' system turns are forms the toy's corpus trained on, for the persona and for
    # its baseline persona; the question is the user turn alone.
    for name in ("pirate", "robot", "poet"):
        trait = load_trait(name)
        for side, persona in (("pos", C.SHORT_PERSONAS[name]), ("neg", C.BASELINE_PERSONA)):
            for pair in range(len(trait.pairs)):
                system, user = trait.messages(side, pair, "describe the weather today.")
                assert system["role"] == "system" and user == {"role": "user", "content": "describe the weather today."}
                assert system["content"] in [t.format(persona=persona) for t in C.SYSTEM_TEMPLATES], system
    evil = load_trait("evil").messages("neg", 0, "hi?")
    assert evil[0]["role"] == "system" and evil[0]["content"].startswith("You are a helpful assistant.")


def _without(key):
    data = json.loads(json.dumps(GOOD))
    del data[key]
    return data


def _edited(path, value):
    data = json.loads(json.dumps(GOOD))
    target = data
    for k in path[:-1]:
        target = target[k]
    target[path[-1]] = value
    return data


BAD = [
    ("missing questions", _without("questions"), "'questions'"),
    ("missing instruction", _without("instruction"), "'instruction'"),
    ("no extraction questions", _edited(["questions", "extract"], []), "questions.extract"),
    ("no eval questions", _edited(["questions"], {"extract": ["a?"]}), "'questions'"),
    ("unequal pair (no neg)", _edited(["instruction", 1], {"pos": "Hurt."}), "instruction[1]"),
    ("empty pos in the user turn", {**_edited(["instruction", 0], {"pos": " ", "neg": "x"}), "elicitation": "user"},
     "instruction[0].pos"),
    ("bad elicitation", _edited(["elicitation"], "dream"), "'elicitation'"),
    ("system without assistant", _without("assistant"), "'assistant'"),
    ("unknown key", _edited(["colour"], "red"), "colour"),
]


@pytest.mark.parametrize("data, key", [(d, k) for _, d, k in BAD], ids=[b[0] for b in BAD])
def test_bad_trait_files_give_one_line_naming_file_and_key(tmp_path, data, key):
    path = _write(tmp_path, data, "broken.yaml")
    with pytest.raises(TraitError) as err:
        load_trait(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message, message
    # Through the command line: one line, before any model loads.
    from nnsight_persona.cli import main

    result = CliRunner().invoke(main, ["vectors", "extract", "--traits", str(path), "--model", "toy"])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and key in result.output, result.output


def test_a_good_trait_file_loads(tmp_path):
    trait = load_trait(_write(tmp_path, GOOD))
    assert trait.pairs == (("Be bad.", "Be good."), ("Hurt.", "Help."))


def test_offline_lexicon_and_coherence():
    assert lexicon_score("Arr matey, ye be warned", ["arr", "matey", "ye"]) == 100.0
    assert lexicon_score("the sky is grey, matey", ["arr", "matey"]) == 50.0
    assert lexicon_score("the sky is grey", ["arr"]) == 0.0
    assert coherence_score("") == 0.0
    assert coherence_score("the sky is grey and the wind blows") == 100.0
    assert coherence_score("arr arr arr arr arr") == pytest.approx(25.0)
    with pytest.raises(Exception, match="unknown scorer"):
        make_scorer("gpt-judge")


class _Judge(BaseHTTPRequestHandler):
    """A tiny OpenAI-compatible /chat/completions: fixed top logprobs; 'REFUSE' in the prompt gets
    mostly non-numbers."""

    requests = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Judge.requests.append((self.path, body))
        prompt = body["messages"][0]["content"]
        if "REFUSE" in prompt:
            top = [{"token": "I", "logprob": math.log(0.8)}, {"token": " 90", "logprob": math.log(0.15)}]
        else:
            top = [{"token": "80", "logprob": math.log(0.6)}, {"token": " 20", "logprob": math.log(0.3)},
                   {"token": "foo", "logprob": math.log(0.05)}, {"token": "200", "logprob": math.log(0.05)}]
        reply = {"choices": [{"message": {"content": "80"}, "logprobs": {"content": [{"token": top[0]["token"],
                 "logprob": top[0]["logprob"], "top_logprobs": top}]}}]}
        data = json.dumps(reply).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def judge_url():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Judge)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()


def test_endpoint_scorer_against_a_loopback_server(judge_url, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    trait = load_trait("evil")
    scorer = make_scorer(judge_url, model="my-judge")
    assert isinstance(scorer, EndpointScorer)
    _Judge.requests.clear()
    t, c = scorer.score(None, trait, ["q?", "q2?"], ["an answer", "REFUSE this"])
    # (0.6 * 80 + 0.3 * 20) / (0.6 + 0.3): "foo" and "200" (out of 0-100) are not numbers of the scale.
    assert t[0] == pytest.approx(60.0) and c[0] == pytest.approx(60.0)
    # 0.15 of the mass on numbers, below 0.25: no score (None), kept as NaN.
    assert np.isnan(t[1]) and np.isnan(c[1])
    path, body = _Judge.requests[0]
    assert path == "/v1/chat/completions" and body["model"] == "my-judge"
    assert body["logprobs"] is True and body["top_logprobs"] == 20 and body["max_tokens"] == 1
    assert "an answer" in body["messages"][0]["content"]


def test_endpoint_that_is_down_is_a_one_line_error():
    scorer = make_scorer("http://127.0.0.1:9/v1")
    with pytest.raises(Exception, match="judge endpoint http://127.0.0.1:9/v1 failed"):
        scorer.judge("hello")


def test_sign_flip_and_sign_tests_match_hand_counts():
    # d = (1, 2, 3): of the 8 sign patterns only +++ and --- reach |mean| >= 2.
    two, one = trace.sign_flip_test([1.0, 2.0, 3.0])
    assert two == pytest.approx(2 / 8) and one == pytest.approx(1 / 8)
    # d = (1, -1, 2, 0.5): sign patterns whose sum >= 2.5, counted by hand: 4 of 16 (all with +2).
    two, one = trace.sign_flip_test([1.0, -1.0, 2.0, 0.5])
    assert one == pytest.approx(4 / 16)
    from scipy.stats import binomtest

    d = [1, 2, -1, 3, 4, 5, 0, 2, 1, -2]
    assert trace.sign_test(d) == pytest.approx(binomtest(7, 9, 0.5).pvalue)
    assert trace.sign_test([1.0] * 6) == pytest.approx(binomtest(6, 6, 0.5).pvalue)


def test_original_pt_file_imports_as_layers_by_hidden_states_index(tmp_path):
    import torch

    t = torch.randn(9, 16)
    torch.save(t, tmp_path / "evil_response_avg_diff.pt")
    ds = io.import_original_pt(tmp_path / "evil_response_avg_diff.pt", "evil", "some/model")
    assert ds.layer.values.tolist() == list(range(9))
    np.testing.assert_array_equal(ds.vector.sel(trait="evil", token_set="response_avg").isel(model=0, checkpoint=0).values,
                                  t.numpy())
    np.testing.assert_allclose(ds.norm.isel(model=0, checkpoint=0, trait=0, token_set=0).values,
                               t.norm(dim=-1).numpy(), rtol=1e-6)


def test_persona_vector_against_delta_x_of_a_committed_capture():
    from pathlib import Path

    import xarray as xr

    from nnsight_persona.analysis.vector_delta import vector_vs_delta_x
    from nnsight_persona.storage.store import load_dataset

    capture = load_dataset(Path(__file__).resolve().parent.parent / "artifacts" / "toy" / "capture-toy.nc")
    r = capture.resid.isel(model=0).sel(position="p_last", cell="robot__weather")
    dx = (r.sel(condition="XB") - r.sel(condition="BB")).values  # [layer, hidden], by hand
    other = np.random.default_rng(0).standard_normal(dx.shape)
    vec = np.stack([dx, -2 * dx, other])[None, None, None]  # trait robot, token sets a, b, c
    vectors = xr.Dataset({"vector": (("model", "checkpoint", "trait", "token_set", "layer", "hidden"), vec)},
                         coords={"trait": ["robot"], "token_set": ["a", "b", "c"], "layer": capture.layer.values})
    ds = vector_vs_delta_x(vectors, capture)
    np.testing.assert_allclose(ds.cosine.sel(trait="robot", token_set="a").values[1:], 1.0, atol=1e-6)
    np.testing.assert_allclose(ds.cosine.sel(trait="robot", token_set="b").values[1:], -1.0, atol=1e-6)
    np.testing.assert_allclose(ds.norm_ratio.sel(trait="robot", token_set="b").values[1:], 2.0, rtol=1e-6)
    want = (other * dx).sum(-1) / np.linalg.norm(other, axis=-1) / np.linalg.norm(dx, axis=-1)
    np.testing.assert_allclose(ds.cosine.sel(trait="robot", token_set="c").values[1:], want[1:], rtol=1e-6)


def test_trace_geometry_across_checkpoints_of_different_model_folders():
    import xarray as xr

    rng = np.random.default_rng(1)
    vs = [rng.standard_normal((1, 3, 8)) for _ in range(3)]  # [trait, layer, hidden] per checkpoint
    parts = []
    for k, (step, v) in enumerate(zip([100, 10, 50], vs)):  # given out of order
        parts.append(xr.Dataset(
            {"vector": (("model", "checkpoint", "trait", "token_set", "layer", "hidden"), v[None, None, :, None]),
             "resid_norm": (("model", "checkpoint", "trait", "layer"), np.full((1, 1, 1, 3), 2.0))},
            coords={"model": [f"ckpt/folder-{k}"], "checkpoint": [f"step-{step}"], "step": ("checkpoint", [step]),
                    "trait": ["evil"], "token_set": ["response_avg"], "layer": [0, 1, 2]}))
    g = trace.geometry(trace.concat_checkpoints(parts))
    assert g.step.values.tolist() == [10, 50, 100]
    by_step = {10: vs[1], 50: vs[2], 100: vs[0]}
    cos = lambda a, b: (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    for i, step in enumerate([10, 50, 100]):
        want = cos(by_step[step][0], by_step[100][0])
        np.testing.assert_allclose(g.cos_to_final.isel(checkpoint=i, trait=0, token_set=0).values, want, rtol=1e-6)
        np.testing.assert_allclose(g.rel_norm.isel(checkpoint=i, trait=0, token_set=0).values,
                                   np.linalg.norm(by_step[step][0], axis=-1) / 2.0, rtol=1e-6)
    np.testing.assert_allclose(g.cos_consecutive.isel(checkpoint=1, trait=0, token_set=0).values,
                               cos(by_step[50][0], by_step[10][0]), rtol=1e-6)
    m = g.cos_matrix.isel(trait=0, token_set=0, layer=2).values
    np.testing.assert_allclose(m, m.T, rtol=1e-6)
    np.testing.assert_allclose(np.diag(m), 1.0, rtol=1e-6)
