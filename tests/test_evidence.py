"""The evidence scorer (core/evidence.py) against plain transformers, batched against one at a
time, the local simulation of the remote path against a local run, and its coherence rule."""

import dataclasses

import numpy as np
import pytest

from nnsight_persona.core import evidence
from nnsight_persona.core.errors import SelectionError
from reference import answer_evidence, chat_prompt, greedy, user_texts
from tolerances import SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

TOL = 1e-4  # nats per token, the bound #24 sets against plain transformers (values of one scale)
CELLS = [("pirate", "weather"), ("robot", "story"), ("poet", "breakfast"), ("knight", "weather")]


@pytest.fixture(scope="module")
def toy_answers(toy_plain, toy_model, toy_grid_raw):
    """Per cell: XY and BY prompt ids (the reference's own rendering) and answers of several
    lengths: the XY prompt's greedy answer, the BY prompt's, and a short one cut from the first."""
    tok = toy_model.tokenizer
    rows = []
    for persona, task in CELLS:
        texts = user_texts(toy_grid_raw, persona, task)
        xy, by = chat_prompt(tok, texts["XY"])["ids"], chat_prompt(tok, texts["BY"])["ids"]
        eos = {tok.eos_token_id}
        cut = lambda ids: ids[: next((i for i, t in enumerate(ids) if t in eos), len(ids))]
        a_xy = cut(greedy(toy_plain, xy, 14, tok.eos_token_id))
        a_by = cut(greedy(toy_plain, by, 11, tok.eos_token_id))
        rows += [(xy, by, a_xy), (xy, by, a_by), (xy, by, a_xy[:3])]
    return rows


def reference_scores(plain, rows):
    return [answer_evidence(plain, xy, by, a) for xy, by, a in rows]


def test_evidence_of_the_toy_model_equals_plain_transformers(toy_model, toy_plain, toy_answers):
    got = evidence.score_answers(toy_model, *zip(*toy_answers), batch_size=5)
    expected = reference_scores(toy_plain, toy_answers)
    for i, (exp, (xy, by, a)) in enumerate(zip(expected, toy_answers)):
        assert got.answer_length[i] == len(a)
        assert abs(got.evidence[i] - exp["evidence"]) < TOL, (i, got.evidence[i], exp["evidence"])
        assert abs(got.evidence_sum[i] - exp["evidence_sum"]) < TOL * len(a), (i, got.evidence_sum[i], exp)
        assert abs(got.reference_logp[i] - exp["reference_logp"]) < TOL, (i, got.reference_logp[i], exp)
    # Power: the toy's persona answers are explained by the persona prompt by nats, so a swapped
    # pair (the sign), a prompt token counted as an answer token or an off-by-one moves the
    # values far past the tolerance.
    values = np.array([e["evidence"] for e in expected])
    assert np.abs(values).max() > 100 * TOL
    xy, by, a = toy_answers[0]
    shifted = answer_evidence(toy_plain, xy[:-1], by[:-1], [xy[-1]] + a)["evidence"]  # the prompt's last token counted
    assert abs(shifted - expected[0]["evidence"]) > 100 * TOL


def test_persona_answers_score_above_baseline_answers(toy_model, toy_answers):
    """The toy speaks in persona under XY: its XY answer scores above its BY answer in every cell,
    and above zero (a swapped pair flips this)."""
    got = evidence.score_answers(toy_model, *zip(*toy_answers))
    xy_answers, by_answers = got.evidence[0::3], got.evidence[1::3]
    assert (xy_answers > 0).all() and (xy_answers > by_answers).all(), (xy_answers, by_answers)


def test_padded_batches_equal_one_at_a_time(toy_model, toy_answers):
    one = evidence.score_answers(toy_model, *zip(*toy_answers), batch_size=1)
    batched = evidence.score_answers(toy_model, *zip(*toy_answers), batch_size=len(toy_answers))
    for name in ("evidence", "evidence_sum", "reference_logp"):
        a, b = getattr(one, name), getattr(batched, name)
        assert_close_per_vector(b, a, SCORES, axis=None, what=name)  # padded vs unpadded
        assert np.abs(a - b).max() < TOL, name


def test_remote_path_equals_local(toy_model, toy_answers):
    local = evidence.score_answers(toy_model, *zip(*toy_answers), batch_size=4)
    simulated = evidence.score_answers(dataclasses.replace(toy_model, remote="local"), *zip(*toy_answers), batch_size=4)
    for name in ("evidence", "evidence_sum", "reference_logp"):
        a, b = getattr(local, name), getattr(simulated, name)
        assert_close_per_vector(b, a, SCORES, axis=None, what=name)


def test_logit_budget_splits_passes_without_changing_scores(toy_model, toy_answers, monkeypatch):
    whole = evidence.score_answers(toy_model, *zip(*toy_answers))
    vocab = toy_model.lm._module.config.vocab_size
    monkeypatch.setattr(evidence, "LOGIT_BUDGET", 2 * 16 * vocab)  # about one answer a pass
    calls = []
    original = evidence._score_group
    monkeypatch.setattr(evidence, "_score_group", lambda *a, **k: calls.append(1) or original(*a, **k))
    split = evidence.score_answers(toy_model, *zip(*toy_answers))
    assert len(calls) >= len(toy_answers) // 2
    assert np.abs(whole.evidence - split.evidence).max() < TOL


def test_empty_answers_and_coherence(toy_model, toy_answers):
    xy, by, a = toy_answers[0]
    got = evidence.score_answers(toy_model, [xy, xy], [by, by], [[], a])
    assert np.isnan(got.evidence[0]) and got.answer_length[0] == 0 and np.isnan(got.coherence[0])
    assert np.isfinite(got.evidence[1])
    # "aye, aye, aye, ...": a 2-token loop repeats almost every 3-gram.
    loop = [7, 8] * 20
    assert evidence.coherence(loop) == pytest.approx(2 / 38)
    assert evidence.coherence([1, 2, 3, 4, 5]) == 1.0 and evidence.coherence([1, 2]) == 1.0
    # A degenerate answer keeps no positive evidence; a coherent one keeps its own.
    combined = evidence.combined(np.array([0.4, 0.4, -0.3]), np.array([0.05, 0.9, 0.05]))
    assert combined.tolist() == [0.0, 0.4, -0.3]


def test_bad_inputs_are_one_line_errors(toy_model):
    with pytest.raises(SelectionError, match="one persona prompt and one reference prompt per answer"):
        evidence.score_answers(toy_model, [[1, 2]], [[1, 2], [3]], [[4]])
    with pytest.raises(SelectionError, match=r"answer\(s\) \[0\] have an empty prompt"):
        evidence.score_answers(toy_model, [[]], [[1]], [[4]])
    with pytest.raises(SelectionError, match="batch size must be >= 1"):
        evidence.score_answers(toy_model, [[1]], [[1]], [[4]], batch_size=0)


def test_evidence_equals_plain_transformers_in_every_family(sharp_models, sharp_plain, family):
    """Every supported family (Gemma-2's final soft-capping and sliding windows included), on the
    sharp tiny models, with prompts and answers of unequal lengths so batches are padded on both
    sides."""
    loaded, plain = sharp_models[family], sharp_plain[family]
    tok = loaded.tokenizer
    xy = chat_prompt(tok, "As a pirate with a parrot, describe the weather today.")["ids"]
    by = chat_prompt(tok, "As a thoughtful person, describe the weather today.")["ids"]
    other = chat_prompt(tok, "As a poet, tell a story.")["ids"]
    rng = np.random.default_rng(0)
    vocab = min(loaded.lm._module.config.vocab_size, 200)
    rows = [(xy, by, rng.integers(5, vocab, n).tolist()) for n in (9, 4, 1)] + [(other, by, rng.integers(5, vocab, 6).tolist())]
    got = evidence.score_answers(loaded, *zip(*rows), batch_size=4)
    whole = evidence.score_answers(dataclasses.replace(loaded, remote="local"), *zip(*rows), batch_size=4)
    expected = np.array([answer_evidence(plain, *row)["evidence"] for row in rows])
    np.testing.assert_allclose(got.evidence, expected, atol=TOL, rtol=0)
    np.testing.assert_allclose(whole.evidence, expected, atol=TOL, rtol=0)
    assert np.abs(expected).max() > 100 * TOL
