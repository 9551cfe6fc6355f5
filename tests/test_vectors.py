"""Persona vectors on the toy model, against plain transformers: extraction equals a hand-written
difference of means, batching does not change it, steering adds exactly c x v at hidden_states[L]
where it should, coef 0 is the clean generation, files round-trip, and the local simulation of
the remote path gives the same numbers."""

import dataclasses

import numpy as np
import pytest
import torch

from nnsight_persona.core.batching import left_pad
from nnsight_persona.studies.vectors import extract, io, monitor, steer
from nnsight_persona.studies.vectors.passes import TOKEN_SETS
from nnsight_persona.studies.vectors.traits import load_trait
from nnsight_persona.core.tracing import generate_with_edit
from reference import hidden_states
from tolerances import RESIDUAL, SCORES, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

N_TOKENS = 20


@pytest.fixture(scope="module")
def traits():
    return [load_trait("pirate"), load_trait("robot")]


def _spec(**kw):
    base = dict(traits=("pirate", "robot"), layers=tuple(range(9)), n_tokens=N_TOKENS, n_questions=3, batch_size=5)
    return extract.ExtractSpec(**{**base, **kw})


@pytest.fixture(scope="module")
def extracted(toy, traits):
    return extract.run(toy, traits, _spec(), progress=False)


def _template_ids(tok, messages):
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def test_extracted_vector_equals_plain_transformers_difference_of_means(toy, plain, traits, extracted):
    ds = extracted.isel(model=0, checkpoint=0)
    tok = toy.tokenizer
    eos = set(toy.eos_ids)
    assert ds.outcome.values.tolist() == ["extracted", "extracted"]
    for trait in traits:
        samples = ds.sample[ds.sample_trait == trait.name].values
        means = {s: [] for s in TOKEN_SETS}
        sides, kept = [], []
        by_key = {}
        for s in samples:
            row = ds.sel(sample=s)
            q = trait.extract_questions[int(row.question_index)]
            messages = trait.messages(str(row.side.values), int(row.pair), q)
            ids = _template_ids(tok, messages)
            # The answer is plain greedy decoding up to the end of turn.
            out = plain.generate(torch.tensor([ids]), max_new_tokens=N_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()
            answer = out[: next((i for i, t in enumerate(out) if t in eos), len(out))]
            assert answer == [int(t) for t in row.answer_ids.values if t >= 0]
            h = torch.stack(hidden_states(plain, ids + answer))  # [layers, T, hidden], our convention
            means["response_avg"].append(h[:, len(ids):].mean(1))
            means["prompt_avg"].append(h[:, : len(ids)].mean(1))
            means["prompt_last"].append(h[:, len(ids) - 1])
            sides.append(str(row.side.values))
            by_key[(int(row.pair), int(row.question_index), sides[-1])] = (float(row.trait_score), float(row.coherence))
        # The filter by its definition, from the recorded scores.
        for s in samples:
            row = ds.sel(sample=s)
            pos = by_key[(int(row.pair), int(row.question_index), "pos")]
            neg = by_key[(int(row.pair), int(row.question_index), "neg")]
            kept.append(pos[0] >= 50 and neg[0] < 50 and pos[1] >= 50 and neg[1] >= 50)
        assert kept == ds.kept.sel(sample=samples).values.astype(bool).tolist()
        sides, kept = np.array(sides), np.array(kept)
        assert kept.any()
        for name in TOKEN_SETS:
            m = torch.stack(means[name]).numpy()
            want = m[kept & (sides == "pos")].mean(0) - m[kept & (sides == "neg")].mean(0)
            got = ds.vector.sel(trait=trait.name, token_set=name).values
            assert_close_per_vector(got.reshape(want.shape), want, RESIDUAL, what=f"{trait.name} {name}")
            assert np.abs(want).max() > 1.0  # large enough to tell a wrong layer or sign apart


def test_batched_and_one_by_one_extraction_agree(toy, traits, extracted):
    single = extract.run(toy, traits, _spec(batch_size=1), progress=False)
    np.testing.assert_array_equal(single.answer_ids.values, extracted.answer_ids.values)
    np.testing.assert_array_equal(single.kept.values, extracted.kept.values)
    assert_close_per_vector(single.vector.values, extracted.vector.values, RESIDUAL)  # unpadded vs padded


def test_nonextractable_is_a_recorded_outcome(toy, traits):
    # A lexicon the toy never writes: no positive answer passes, nothing is kept, and no error.
    never = dataclasses.replace(traits[0], markers=("spaceship", "quasar"))
    ds = extract.run(toy, [never], _spec(traits=("pirate",), n_questions=2, layers=(2,)), progress=False)
    assert ds.outcome.values.ravel().tolist() == ["nonextractable"]
    assert ds.n_kept.values.ravel().tolist() == [0] and np.isnan(ds.vector.values).all()
    assert ds.pass_rate.values.shape[-1] == 3


def test_export_then_import_round_trips(extracted, tmp_path):
    path = io.export_safetensors(extracted, tmp_path / "v.safetensors")
    back = io.import_safetensors(path)
    np.testing.assert_array_equal(back.vector.values, extracted.vector.values)
    assert back.layer.values.tolist() == extracted.layer.values.tolist()
    assert back.trait.values.tolist() == extracted.trait.values.tolist()
    assert back.token_set.values.tolist() == extracted.token_set.values.tolist()
    assert back.n_kept.values.tolist() == extracted.n_kept.values.tolist()
    np.testing.assert_allclose(back.resid_norm.values, extracted.resid_norm.values, rtol=1e-6)
    for key in ("model", "revision", "layer_convention", "token_sets", "threshold", "scorer", "pairs_kept"):
        assert back.attrs[key], key
    assert back.attrs["scorer"] == extracted.attrs["scorer"] and float(back.attrs["threshold"]) == 50.0
    assert back.attrs["model_id"] == "toy" and "hidden_states[L]" in back.attrs["layer_convention"]
    assert back.attrs["checkpoint_revision"] == extracted.attrs["checkpoint_revision"]


def _vector(extracted, layer, trait="pirate"):
    return torch.from_numpy(extracted.vector.sel(trait=trait, token_set="response_avg", layer=layer)
                            .isel(model=0, checkpoint=0).values)


PROMPTS = ["describe the weather today.", "As a thoughtful person, tell a short story about a cat."]


def _batch(toy):
    ids = [_template_ids(toy.tokenizer, [{"role": "user", "content": p}]) for p in PROMPTS]
    return ids, left_pad(ids, toy.pad_id)


def test_steering_with_coef_zero_is_the_clean_generation(toy, traits, extracted):
    ids, batch = _batch(toy)
    v = _vector(extracted, 4)
    clean = generate_with_edit(toy, batch, N_TOKENS)
    for positions in steer.POSITIONS:
        zero = generate_with_edit(toy, batch, N_TOKENS, steer.steering_edit(batch, 4, 0.0 * v.expand(2, -1), positions))
        assert torch.equal(zero, clean), positions
    steered = generate_with_edit(toy, batch, N_TOKENS, steer.steering_edit(batch, 4, 8.0 * v.expand(2, -1), "response"))
    assert not torch.equal(steered, clean)  # the same edit with a coefficient does steer
    # The whole steer experiment: coef 0 rows equal its clean baseline answers.
    spec = steer.SteerSpec(traits=("pirate",), layers=(4,), coefs=(0.0, 6.0), kinds=("vector", "random"),
                           n_tokens=N_TOKENS, n_questions=2, batch_size=3)
    ds = steer.run(toy, traits, extracted, spec, progress=False).isel(model=0)
    clean_texts = ds.baseline_text.sel(trait="pirate", baseline="clean").values.tolist()
    for kind in ds.kind.values:
        assert ds.text.sel(trait="pirate", layer=4, coef=0.0, kind=kind).values.tolist() == clean_texts
    assert ds.text.sel(trait="pirate", layer=4, coef=6.0, kind="vector").values.tolist() != clean_texts


@pytest.mark.parametrize("positions", steer.POSITIONS)
@pytest.mark.parametrize("layer", [1, 5])
def test_steering_adds_exactly_c_v_at_hidden_states_L_and_nothing_before(toy, plain, extracted, positions, layer):
    """Record the input of block L (= hidden_states[L]) with a plain torch pre-hook while the
    package generates under the steering edit, then run plain transformers, unsteered, on the
    tokens it generated: the difference is c x v at the steered positions and 0 elsewhere."""
    ids, batch = _batch(toy)
    coef = 3.0
    v = _vector(extracted, layer)
    seen = []
    block = toy.lm._module.model.layers[layer]
    handle = block.register_forward_pre_hook(lambda m, args, kwargs: seen.append(
        (kwargs.get("hidden_states", args[0] if args else None)).detach().clone()), with_kwargs=True)
    try:
        tokens = generate_with_edit(toy, batch, 6, steer.steering_edit(batch, layer, coef * v.expand(2, -1), positions))
    finally:
        handle.remove()
    steered = torch.cat(seen, dim=1)  # [rows, width + 5, hidden]: the prefill, then one column per step
    width = batch.input_ids.shape[1]
    for r, prompt in enumerate(ids):
        seq = prompt + tokens[r, :5].tolist()
        clean = hidden_states(plain, seq)[layer]  # unpadded, unsteered, same tokens
        got = steered[r, int(batch.pad[r]):]
        n = len(prompt)
        expected = torch.zeros_like(got)
        if positions in ("prompt", "all"):
            expected[:n] = coef * v
        if positions in ("response", "all"):
            expected[n - 1:] = coef * v
        # padded and cached steered generation against unpadded plain forwards: per position, relative
        assert_close_per_vector(got, clean + expected, RESIDUAL, what=f"row {r}")
        assert float((coef * v).abs().max()) > 0.5
        assert got.shape[0] == n + 5 and width - int(batch.pad[r]) == n


def test_remote_local_equals_local(toy, traits):
    remote = dataclasses.replace(toy, remote="local")
    spec = _spec(traits=("pirate",), n_questions=2, layers=(0, 3, 8))
    a = extract.run(toy, traits[:1], spec, progress=False)
    b = extract.run(remote, traits[:1], spec, progress=False)
    np.testing.assert_array_equal(a.answer_ids.values, b.answer_ids.values)
    assert_close_per_vector(b.vector.values, a.vector.values, RESIDUAL)
    sspec = steer.SteerSpec(traits=("pirate",), layers=(3,), coefs=(4.0,), kinds=("vector",), n_tokens=10,
                            n_questions=2, batch_size=4)
    sa = steer.run(toy, traits[:1], a, sspec, progress=False)
    sb = steer.run(remote, traits[:1], a, sspec, progress=False)
    assert sa.text.values.tolist() == sb.text.values.tolist()
    mspec = monitor.MonitorSpec(traits=("pirate",), layers=(3, 8), n_tokens=8, n_questions=2)
    ma, mb = monitor.run(toy, traits[:1], a, mspec, progress=False), monitor.run(remote, traits[:1], a, mspec, progress=False)
    assert_close_per_vector(mb.projection.values, ma.projection.values, SCORES, axis=None)


def test_monitor_projection_equals_plain_transformers(toy, plain, traits, extracted):
    layers = (2, 6)
    spec = monitor.MonitorSpec(traits=("pirate",), layers=layers, n_tokens=N_TOKENS, n_questions=2)
    ds = monitor.run(toy, traits, extracted, spec, progress=False).isel(model=0)
    trait = traits[0]
    for condition in monitor.CONDITIONS:
        ids = _template_ids(toy.tokenizer, trait.messages(condition, 0, trait.eval_questions[0]))
        h = hidden_states(plain, ids)
        for layer in layers:
            v = _vector(extracted, layer)
            want = float(h[layer][-1] @ v / v.norm())
            got = float(ds.projection.sel(trait="pirate", condition=condition, question=0, read="prompt_last", layer=layer))
            assert got == pytest.approx(want, rel=1e-4, abs=1e-4)
