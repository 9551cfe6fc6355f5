"""`--scorer evidence` of the persona-vector commands, `vectors calibrate`, and the evidence of
`subnetwork eval`, on the toy model, against plain transformers: the prompts are rebuilt here
from the raw YAML files and the chat template, the log-likelihoods by unpadded forward passes of
the plain model (reference.answer_evidence), the filter, coherence, AUROC and AxBench-style
score written out again."""

from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from reference import answer_evidence, greedy

from nnsight_persona.storage.store import load_dataset

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-4  # nats per token


def trait_yaml(name):
    return yaml.safe_load((ROOT / "experiments" / "traits" / f"{name}.yaml").read_text())


def rendered(tok, system, question):
    """Chat-template ids of a (system, user) prompt, or of the user turn alone (system None)."""
    messages = ([{"role": "system", "content": system}] if system is not None else []) + [
        {"role": "user", "content": question}]
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def side_system(raw, side, pair):
    """The trait's system turn ("You are {assistant} assistant. {instruction}"), by hand."""
    k = {"pos": "pos", "neg": "neg"}[side]
    return f"You are {raw['assistant'][k]} assistant. {raw['instruction'][pair][k]}".strip()


def distinct_trigrams(ids):
    grams = [tuple(ids[i:i + 3]) for i in range(len(ids) - 2)]
    return 1.0 if len(ids) < 3 else len(set(grams)) / len(grams)


def answers_of(ids_row):
    return [int(t) for t in ids_row if t >= 0]


def plain_pair_evidence(plain, tok, raw, pair, question, answer):
    """(against the negative side, against no instruction) of one answer, by hand."""
    pos = rendered(tok, side_system(raw, "pos", pair), question)
    neg = rendered(tok, side_system(raw, "neg", pair), question)
    none = rendered(tok, None, question)
    return (answer_evidence(plain, pos, neg, answer)["evidence"], answer_evidence(plain, pos, none, answer)["evidence"])


@pytest.fixture(scope="module")
def extracted(tmp_path_factory):
    """`vectors extract --scorer evidence` on the toy through the CLI."""
    from nnsight_persona.cli import main

    out = tmp_path_factory.mktemp("evx") / "x.nc"
    result = CliRunner().invoke(main, ["vectors", "extract", "--model", "toy", "--traits", "pirate,robot",
                                       "--scorer", "evidence", "--n-questions", "2", "--n-tokens", "12",
                                       "--layers", "2,4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return load_dataset(out)


def test_extract_evidence_equals_plain_transformers(extracted, toy, plain):
    ds = extracted.isel(model=0, checkpoint=0)
    tok = toy.tokenizer
    assert ds.attrs["threshold"] == 0.0 and ds.attrs["coherence_threshold"] == 50.0
    assert ds.reference.values.tolist() == ["neg", "none"]
    pos_values, neg_values = [], []
    for i in range(ds.sizes["sample"]):
        raw = trait_yaml(str(ds.sample_trait.values[i]))
        question = raw["questions"]["extract"][int(ds.question_index.values[i])]
        a = answers_of(ds.answer_ids.values[i])
        exp_neg, exp_none = plain_pair_evidence(plain, tok, raw, int(ds.pair.values[i]), question, a)
        got = ds.evidence.values[i]
        assert abs(got[0] - exp_neg) < TOL and abs(got[1] - exp_none) < TOL, (i, got, exp_neg, exp_none)
        assert int(ds.answer_length.values[i]) == len(a)
        # the filter's trait score is the evidence against the negative side; coherence 100 x distinct 3-grams
        assert ds.trait_score.values[i] == got[0]
        assert abs(ds.coherence.values[i] - 100 * distinct_trigrams(a)) < 1e-9
        (pos_values if ds.side.values[i] == "pos" else neg_values).append(exp_neg)
    # Power: positive answers are explained by the positive prompt, negative ones by the negative
    # prompt, by far more than the tolerance (a swapped pair flips every sign).
    assert min(pos_values) > 100 * TOL and max(neg_values) < -100 * TOL, (pos_values, neg_values)


def test_extract_evidence_filter_keeps_the_pairs_on_the_right_side(extracted):
    """The filter written out: pos trait >= 0 > neg trait, both coherences >= 50; a planted
    threshold (a pair kept with its positive answer below 0) is refused."""
    ds = extracted.isel(model=0, checkpoint=0)
    kept = ds.kept.values.astype(bool)
    key = lambda i: (str(ds.sample_trait.values[i]), int(ds.pair.values[i]), int(ds.question_index.values[i]))
    by = {}
    for i in range(ds.sizes["sample"]):
        by.setdefault(key(i), {})[str(ds.side.values[i])] = i
    for _, sides in by.items():
        p, n = sides["pos"], sides["neg"]
        t, c = ds.trait_score.values, ds.coherence.values
        expected = t[p] >= 0 and t[n] < 0 and c[p] >= 50 and c[n] >= 50
        assert kept[p] == kept[n] == expected, (sides, t[p], t[n], c[p], c[n])
    assert kept.any()
    # A stricter threshold, through the filter function, keeps exactly the pairs above it.
    from nnsight_persona.studies.vectors.extract import keep_pairs, samples_of
    from nnsight_persona.studies.vectors.traits import load_trait

    rows = samples_of([load_trait("pirate"), load_trait("robot")], 2)
    high = float(np.median(ds.trait_score.values[ds.side.values == "pos"]))
    strict = keep_pairs(rows, ds.trait_score.values, ds.coherence.values, high, 50.0)
    for _, sides in by.items():
        assert strict[sides["pos"]] == (ds.trait_score.values[sides["pos"]] >= high and kept[sides["pos"]])


def test_steer_evidence_through_the_api(extracted, toy, plain):
    """vectors_steer(scorer='evidence'): steered answers scored on the UNEDITED model with pair 0's
    prompts; the AxBench-style score recomputed from the dataset's own values."""
    from nnsight_persona.api import vectors_steer

    ds = vectors_steer(toy, vectors=extracted, traits="pirate", layers="4", coefs=(0, 4), kinds=("vector", "random"),
                       n_questions=2, n_tokens=10, scorer="evidence", progress=False)
    d = ds.isel(model=0).sel(trait="pirate")
    raw, tok = trait_yaml("pirate"), toy.tokenizer
    np.testing.assert_array_equal(d.trait_score.values, d.evidence.sel(reference="neg").values)
    # a steered answer at coef 4 (the edit changes the answer), scored by the plain unedited model
    texts_changed = False
    for q in range(2):
        question = raw["questions"]["eval"][q]
        a = [int(t) for t in tok(str(d.text.sel(kind="vector", layer=4, coef=4.0, question=q).values),
                                 add_special_tokens=False).input_ids]
        a_len = int(d.answer_length.sel(kind="vector", layer=4, coef=4.0, question=q))
        exp_neg, exp_none = plain_pair_evidence(plain, tok, raw, 0, question, a)
        if len(a) == a_len:  # the decoded text re-tokenizes to the answer's own ids
            got = d.evidence.sel(kind="vector", layer=4, coef=4.0, question=q).values
            assert abs(got[0] - exp_neg) < TOL and abs(got[1] - exp_none) < TOL, (q, got, exp_neg, exp_none)
        texts_changed |= str(d.text.sel(kind="vector", layer=4, coef=4.0, question=q).values) != str(
            d.text.sel(kind="vector", layer=4, coef=0.0, question=q).values)
    assert texts_changed
    # the prompted baseline: pair 0's positive prompt, its own greedy answer, scored by hand
    question = raw["questions"]["eval"][0]
    pos = rendered(tok, side_system(raw, "pos", 0), question)
    a = greedy(plain, pos, 10, tok.eos_token_id)
    a = a[: next((i for i, t in enumerate(a) if t in toy.eos_ids), len(a))]
    exp_neg, _ = plain_pair_evidence(plain, tok, raw, 0, question, a)
    assert abs(float(d.baseline_trait.sel(baseline="prompted", question=0)) - exp_neg) < TOL
    # AxBench-style: evidence put on 0..100 between the clean and prompted baselines' means, then the
    # harmonic mean with coherence per question, averaged over questions
    clean = float(d.baseline_trait.sel(baseline="clean").mean())
    prompted = float(d.baseline_trait.sel(baseline="prompted").mean())
    assert prompted > clean
    scaled = np.clip(100 * (d.trait_score.values - clean) / (prompted - clean), 0, 100)
    c = d.coherence.values
    with np.errstate(invalid="ignore", divide="ignore"):
        h = np.where((scaled == 0) | (c == 0), 0.0, 2 * scaled * c / (scaled + c))
    np.testing.assert_allclose(d.steering_score.values, h.mean(-1), rtol=1e-9)


def test_calibrate_through_the_cli(tmp_path, toy, plain):
    """vectors calibrate: prompted answers from the positive prompt, unprompted from the question
    alone (greedy, by hand), and the AUROC counted pair by pair."""
    from nnsight_persona.cli import main

    out = tmp_path / "cal.nc"
    result = CliRunner().invoke(main, ["vectors", "calibrate", "--model", "toy", "--traits", "pirate",
                                       "--n-questions", "2", "--n-tokens", "10", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    raw, tok = trait_yaml("pirate"), toy.tokenizer
    for i in range(ds.sizes["sample"]):
        question = raw["questions"]["eval"][int(ds.question_index.values[i])]
        pair = int(ds.pair.values[i])
        prompted = str(ds.condition.values[i]) == "prompted"
        prompt = rendered(tok, side_system(raw, "pos", pair) if prompted else None, question)
        a = greedy(plain, prompt, 10, tok.eos_token_id)
        a = a[: next((k for k, t in enumerate(a) if t in toy.eos_ids), len(a))]
        assert answers_of(ds.answer_ids.values[i]) == a, i
        exp_neg, exp_none = plain_pair_evidence(plain, tok, raw, pair, question, a)
        assert abs(ds.evidence.values[i, 0] - exp_neg) < TOL and abs(ds.evidence.values[i, 1] - exp_none) < TOL
    for r, ref in enumerate(ds.reference.values.tolist()):
        e = ds.evidence.values[:, r]
        pos, neg = e[ds.condition.values == "prompted"], e[ds.condition.values == "unprompted"]
        wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in pos for y in neg)
        assert abs(float(ds.auroc.sel(trait="pirate", reference=ref)) - wins / (len(pos) * len(neg))) < 1e-12
        assert float(ds.auroc_low.sel(trait="pirate", reference=ref)) <= float(
            ds.auroc.sel(trait="pirate", reference=ref)) + 1e-12
    # the toy expresses its pirate: prompted answers above every unprompted one against no instruction
    assert float(ds.auroc.sel(trait="pirate", reference="none")) == 1.0
    assert int(ds.expressed.sel(trait="pirate")) == 1


def test_subnetwork_eval_evidence_is_scored_on_the_unedited_model(tmp_path, toy, plain):
    """Each mask variant's generation scored for each persona, its prompt against none, by the
    plain model WITHOUT the mask."""
    from nnsight_persona.api import subnetwork_eval, subnetwork_find

    subnetwork_find(toy, persona_set="toy", sparsity=(0.5,), out=tmp_path / "f.nc", progress=False)
    ds = subnetwork_eval(tmp_path / "f-masks.safetensors", model=toy, random_seeds=1, n_tokens=8, progress=False)
    raw = yaml.safe_load((ROOT / "experiments" / "subnetworks" / "toy.yaml").read_text())
    tok = toy.tokenizer
    moved = False
    for variant in ("mask:pirate@0.5", "unpruned", "prompt:robot"):
        for g in range(2):
            question = str(ds.question.values[g])
            a = [int(t) for t in tok(str(ds.text.sel(variant=variant, generation=g).values),
                                     add_special_tokens=False).input_ids]
            assert len(a) == int(ds.answer_length.sel(variant=variant, generation=g))
            for persona in ("pirate", "robot"):
                user = raw["prompt_template"].format(persona=raw["personas"][persona]["text"], question=question)
                exp = answer_evidence(plain, rendered(tok, None, user), rendered(tok, None, question), a)["evidence"]
                got = float(ds.evidence.sel(variant=variant, persona=persona, generation=g))
                assert abs(got - exp) < TOL, (variant, persona, g, got, exp)
                moved |= abs(exp) > 100 * TOL
    assert moved
    # the calibration: AUROC of prompt:P against unpruned, the unpruned answers' 0.95 quantile
    for persona in ("pirate", "robot"):
        null = ds.evidence.sel(variant="unpruned", persona=persona).values
        ordered = np.sort(null)  # the 0.95 quantile as an observed value, rounded up
        assert float(ds.evidence_threshold.sel(persona=persona)) == ordered[int(np.ceil(0.95 * (len(ordered) - 1)))]
        prompted = ds.evidence.sel(variant=f"prompt:{persona}", persona=persona).values
        wins = sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in prompted for y in null)
        assert abs(float(ds.evidence_auroc.sel(persona=persona)) - wins / (len(prompted) * len(null))) < 1e-12


def test_vs_edit_evidence_is_xy_against_by_on_the_unedited_model(extracted, toy, plain, toy_grid_raw, tmp_path):
    """vectors vs-edit --scorer evidence: every answer (steered, one-site, bare, prompted) scored with
    its cell's XY prompt against its BY prompt by the plain unedited model; the trait score is it."""
    from reference import chat_prompt, user_texts

    from nnsight_persona.cli import main
    from nnsight_persona.storage.store import save_dataset

    path = save_dataset(extracted, tmp_path / "v.nc")
    out = tmp_path / "e.nc"
    result = CliRunner().invoke(main, ["vectors", "vs-edit", "--vectors", str(path), "--personas", "pirate",
                                       "--layers", "4", "--coefs", "0,2", "--n-tokens", "8", "--scorer", "evidence",
                                       "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out).isel(model=0, layer=0)
    tok = toy.tokenizer
    np.testing.assert_array_equal(ds.trait_score.values, ds.evidence.values)
    np.testing.assert_array_equal(ds.ref_trait_score.values, ds.ref_evidence.values)
    moved = []
    for c, cell in enumerate(ds.cell.values.tolist()):
        texts = user_texts(toy_grid_raw, str(ds.persona.values[c]), str(ds.task.values[c]))
        xy, by = chat_prompt(tok, texts["XY"])["ids"], chat_prompt(tok, texts["BY"])["ids"]
        for ids, got in ((ds.answer_ids.sel(condition="vector", coef=2.0, cell=cell).values,
                          ds.evidence.sel(condition="vector", coef=2.0, cell=cell)),
                         (ds.ref_answer_ids.sel(reference="prompted", cell=cell).values,
                          ds.ref_evidence.sel(reference="prompted", cell=cell)),
                         (ds.ref_answer_ids.sel(reference="one_site", cell=cell).values,
                          ds.ref_evidence.sel(reference="one_site", cell=cell))):
            a = answers_of(ids)
            exp = answer_evidence(plain, xy, by, a)["evidence"]
            assert abs(float(got) - exp) < TOL, (cell, float(got), exp)
            moved.append(exp)
    assert np.abs(moved).max() > 100 * TOL


def test_steer_evidence_through_the_cli_draws_the_evidence_curves(extracted, tmp_path):
    from nnsight_persona.cli import main
    from nnsight_persona.storage.store import save_dataset

    path = save_dataset(extracted, tmp_path / "v.nc")
    out = tmp_path / "s.nc"
    result = CliRunner().invoke(main, ["vectors", "steer", "--model", "toy", "--vectors", str(path), "--traits", "robot",
                                       "--layers", "2", "--coefs", "0,2", "--n-questions", "2", "--n-tokens", "8",
                                       "--scorer", "evidence", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert ds.evidence.dims[-1] == "reference" and ds.baseline_evidence.sizes["baseline"] == 2
    assert ds.trait_score.attrs["units"] == "nats/token" and (tmp_path / "s-steering.png").exists()
