"""Elicitation variants of persona-vector extraction (instruction pairs, a third-person character
description, 2-shot dialogue, combined) on the toy model. The prompts are rebuilt here from the
trait files' raw YAML (not through the package's Trait), checked token by token against the chat
template, and the vectors compared with a plain transformers difference of means on those prompts."""

import json

import numpy as np
import pytest
import torch
import yaml
from click.testing import CliRunner

from nnsight_persona.cli import main
from nnsight_persona.studies.vectors import extract, io
from nnsight_persona.studies.vectors.chat import render
from nnsight_persona.studies.vectors.traits import TRAITS_DIR, TraitError, load_trait
from nnsight_persona.storage.store import load_dataset
from reference import hidden_states
from tolerances import RESIDUAL, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

N_TOKENS = 16
SETS = ("response_avg", "prompt_avg", "prompt_last")


def raw(name):
    return yaml.safe_load((TRAITS_DIR / f"{name}.yaml").read_text())


def hand_messages(data, variant, side, pair, question):
    """The prompt of one side as the docs define each variant, from the YAML dict alone."""
    k = side  # "pos" / "neg"
    system_turn = data["elicitation"] == "system"
    instruction = data["instruction"][pair % len(data["instruction"])][k]
    character = data["character"][pair % len(data["character"])][k] if variant in ("character", "combined") else ""
    turns = []
    if variant in ("two-shot", "combined"):
        for ex in data["dialogue"][pair % len(data["dialogue"])][k]:
            turns += [{"role": "user", "content": ex["question"]}, {"role": "assistant", "content": ex["answer"]}]
    if system_turn:
        system = ""
        if variant == "combined":
            system = " ".join(t for t in (f"You are {data['assistant'][k]} assistant.", instruction, character) if t)
        elif variant == "character":
            system = character
        head = [{"role": "system", "content": system}] if system else []
        return head + turns + [{"role": "user", "content": question}]
    user = question
    if variant == "combined" and instruction:
        user = f"As {instruction}, {question}"
    if character:
        user = f"{character} {user}"
    return turns + [{"role": "user", "content": user}]


@pytest.mark.parametrize("name", ["evil", "sycophantic", "humorous", "impolite", "pirate", "robot", "poet"])
@pytest.mark.parametrize("variant", ["character", "two-shot", "combined"])
def test_each_variant_builds_the_prompt_it_says(name, variant):
    data, trait = raw(name), load_trait(name)
    question = data["questions"]["extract"][0]
    n = {"character": len(data["character"]), "two-shot": len(data["dialogue"])}.get(variant, len(data["instruction"]))
    assert trait.n_pairs(variant) == n
    for pair in range(n):
        for side in ("pos", "neg"):
            got = trait.messages(side, pair, question, variant)
            assert got == hand_messages(data, variant, side, pair, question), (name, variant, side, pair)
    pos = trait.messages("pos", 0, question, variant)
    roles = [m["role"] for m in pos]
    if variant == "character":
        assert "assistant" not in roles and data["character"][0]["pos"] in (pos[0]["content"])
    else:  # two exchanges before the question
        assert roles[-5:] == ["user", "assistant", "user", "assistant", "user"]
    # The instruction variant is today's prompt, unchanged.
    assert trait.messages("pos", 0, question) == trait.messages("pos", 0, question, "instruction")


def test_two_shot_turns_sit_in_the_chat_template_token_by_token(toy, tmp_path):
    tok = toy.tokenizer
    data = raw("pirate")
    question = data["questions"]["extract"][0]
    ids = render(tok, load_trait("pirate").messages("pos", 0, question, "two-shot"))
    special = lambda t: tok.convert_tokens_to_ids(t)
    text = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    want = [special("<|bos|>")]
    for ex in data["dialogue"][0]["pos"]:
        want += [special("<|user|>"), *text(ex["question"]), special("<|end|>"),
                 special("<|assistant|>"), *text(ex["answer"]), special("<|end|>")]
    want += [special("<|user|>"), *text(question), special("<|end|>"), special("<|assistant|>")]
    assert ids == want
    # A model without a chat template (a base checkpoint): the texts joined by a space, no role tokens.
    tok.save_pretrained(tmp_path / "tok")
    base = tok.__class__.from_pretrained(str(tmp_path / "tok"))
    base.chat_template = None
    d = data["dialogue"][0]["pos"]
    joined = f"{d[0]['question']} {d[0]['answer']} {d[1]['question']} {d[1]['answer']} {question}"
    assert render(base, load_trait("pirate").messages("pos", 0, question, "two-shot")) == base(joined)["input_ids"]
    evil = raw("evil")
    system = f"You are an evil assistant. {evil['instruction'][0]['pos']}"
    q = evil["questions"]["extract"][0]
    assert render(base, load_trait("evil").messages("pos", 0, q)) == base(f"{system} {q}")["input_ids"]
    assert special("<|user|>") not in render(base, load_trait("evil").messages("pos", 0, q, "combined"))


@pytest.fixture(scope="module")
def variants_run(toy):
    spec = extract.ExtractSpec(traits=("pirate",), layers=(0, 2, 5, 8), n_tokens=N_TOKENS, n_questions=2, batch_size=3,
                               keep="all", elicitation=("two-shot", "combined", "character"))
    return extract.run(toy, [load_trait("pirate")], spec, progress=False)


def test_vector_under_each_variant_equals_a_plain_transformers_difference_of_means(toy, plain, variants_run):
    ds = variants_run.isel(model=0, checkpoint=0)
    tok, eos = toy.tokenizer, set(toy.eos_ids)
    data = raw("pirate")
    assert ds.elicitation.values.tolist() == ["two-shot", "combined", "character"]
    layers = [0, 2, 5, 8]
    want_vectors = {}
    for variant in ds.elicitation.values.tolist():
        mine = np.flatnonzero(ds.sample_elicitation.values == variant)
        n_pairs = {"character": len(data["character"]), "two-shot": len(data["dialogue"])}.get(variant, 2)
        assert len(mine) == n_pairs * 2 * 2  # pairs x questions x sides
        means, sides = {s: [] for s in SETS}, []
        for i in mine:
            row = ds.isel(sample=i)
            side, pair, q = str(row.side.values), int(row.pair), int(row.question_index)
            messages = hand_messages(data, variant, side, pair, data["questions"]["extract"][q])
            assert json.loads(str(row.messages.values)) == messages
            assert str(row.user.values) == messages[-1]["content"]
            prompt = tok(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                         add_special_tokens=False).input_ids
            out = plain.generate(torch.tensor([prompt]), max_new_tokens=N_TOKENS, do_sample=False,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
            answer = out[: next((k for k, t in enumerate(out) if t in eos), len(out))]
            assert answer == [int(t) for t in row.answer_ids.values if t >= 0]
            h = torch.stack(hidden_states(plain, prompt + answer))[layers]
            means["response_avg"].append(h[:, len(prompt):].mean(1))
            means["prompt_avg"].append(h[:, : len(prompt)].mean(1))
            means["prompt_last"].append(h[:, len(prompt) - 1])
            sides.append(side)
        sides = np.array(sides)
        assert ds.kept.values[mine].all()  # keep="all"
        for s in SETS:
            m = torch.stack(means[s]).double().numpy()
            want = m[sides == "pos"].mean(0) - m[sides == "neg"].mean(0)
            got = ds.vector.sel(elicitation=variant, trait="pirate", token_set=s).values
            assert_close_per_vector(got.reshape(want.shape), want, RESIDUAL, what=f"{variant} {s}")
            assert np.abs(want).max() > 1.0
        want_vectors[variant] = m[sides == "pos"].mean(0) - m[sides == "neg"].mean(0)  # prompt_last, the last set
    # The cosine between variants, per layer, from the reference vectors.
    a, b = want_vectors["two-shot"], want_vectors["character"]
    with np.errstate(invalid="ignore"):
        want_cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    got_cos = ds.elicitation_cos.sel(trait="pirate", token_set="prompt_last", elicitation="two-shot", versus="character")
    np.testing.assert_allclose(got_cos.values, want_cos, atol=1e-5)
    assert np.nanmin(want_cos) < 0.9  # different directions (layer 0 is NaN: the same last prompt token)


def test_one_variant_keeps_todays_layout_and_the_variant_is_recorded(toy, variants_run, tmp_path):
    trait = load_trait("pirate")
    spec = extract.ExtractSpec(traits=("pirate",), layers=(2,), n_tokens=8, n_questions=1, batch_size=4,
                               elicitation=("character",))
    one = extract.run(toy, [trait], spec, progress=False)
    assert "elicitation" not in one.dims and one.attrs["elicitation"] == "character"
    assert one.vector.dims == ("model", "checkpoint", "trait", "token_set", "layer", "hidden")
    default = extract.run(toy, [trait], extract.ExtractSpec(traits=("pirate",), layers=(2,), n_tokens=8, n_questions=1),
                          progress=False)
    assert default.attrs["elicitation"] == "instruction"
    # today's layout: the instruction in a system turn, the question alone as the user turn
    assert default.user.values.tolist()[0] == trait.extract_questions[0]
    assert default.system.values.tolist()[0] == "You are a pirate assistant."
    back = io.import_safetensors(io.export_safetensors(one, tmp_path / "c.safetensors"))
    assert back.attrs["elicitation"] == "character"
    paths = io.export_variants(variants_run, tmp_path / "v.safetensors")
    assert [p.name for p in paths] == ["v-two-shot.safetensors", "v-combined.safetensors", "v-character.safetensors"]
    for path, variant in zip(paths, variants_run.elicitation.values.tolist()):
        got = io.import_safetensors(path)
        assert got.attrs["elicitation"] == variant
        np.testing.assert_array_equal(got.vector.values, variants_run.vector.sel(elicitation=variant).values)
    with pytest.raises(Exception, match="several elicitation variants"):
        io.export_safetensors(variants_run, tmp_path / "x.safetensors")


def _one_line(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    return result.output


def test_bad_variants_and_missing_material_give_one_line(tmp_path):
    base = ["vectors", "extract", "--model", "toy", "--traits", "pirate", "--out", str(tmp_path / "x.nc"), "--no-progress"]
    out = _one_line([*base, "--elicitation", "dream"])
    assert "'dream'" in out and "two-shot" in out
    assert "twice" in _one_line([*base, "--elicitation", "character,character"])
    data = raw("pirate")
    del data["dialogue"]
    path = tmp_path / "nodialogue.yaml"
    path.write_text(yaml.safe_dump(data))
    out = _one_line([*base[:4], "--traits", str(path), "--out", str(tmp_path / "y.nc"), "--elicitation", "combined"])
    assert str(path) in out and "'dialogue'" in out
    assert not (tmp_path / "y.nc").exists()


BAD = [
    ("character without neg", ["character", 0], {"pos": "The assistant is bad."}, "character[0]"),
    ("empty character pos", ["character", 1], {"pos": " ", "neg": ""}, "character[1].pos"),
    ("dialogue unequal sides", ["dialogue", 0, "neg"], [{"question": "q?", "answer": "a."}], "dialogue[0]"),
    ("dialogue turn without answer", ["dialogue", 1, "pos", 0], {"question": "q?"}, "dialogue[1].pos[0]"),
    ("dialogue empty answer", ["dialogue", 0, "pos", 1, "answer"], "", "dialogue[0].pos[1].answer"),
    ("dialogue side empty", ["dialogue", 0, "pos"], [], "dialogue[0].pos"),
]


@pytest.mark.parametrize("where, value, key", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_character_and_dialogue_keys_give_one_line_naming_file_and_key(tmp_path, where, value, key):
    data = raw("pirate")
    target = data
    for k in where[:-1]:
        target = target[k]
    target[where[-1]] = value
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(TraitError) as err:
        load_trait(path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message and key in message, message


def test_a_multi_variant_file_is_refused_by_steer_in_one_line(variants_run, tmp_path):
    from nnsight_persona.storage.store import save_dataset

    path = save_dataset(variants_run, tmp_path / "multi.nc")
    out = _one_line(["vectors", "steer", "--model", "toy", "--vectors", str(path), "--layers", "2",
                     "--out", str(tmp_path / "s.nc"), "--no-progress"])
    assert "several elicitation variants" in out and "--export" in out
    assert load_dataset(path).elicitation.values.tolist() == ["two-shot", "combined", "character"]


def test_the_python_api_takes_the_variants_as_a_list(toy, tmp_path):
    import nnsight_persona

    ds = nnsight_persona.vectors_extract(toy, traits=["pirate"], layers=[2], n_questions=1, n_tokens=6, progress=False,
                                         elicitation=["two-shot", "character"], export=tmp_path / "p.safetensors")
    assert ds.elicitation.values.tolist() == ["two-shot", "character"] and ds.attrs["elicitation"] == "two-shot, character"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p-character.safetensors", "p-two-shot.safetensors"]
