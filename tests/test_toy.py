"""The embedded toy persona model: corpus, held-out split, shipped weights, tokenizer, trainer."""

from __future__ import annotations

import json

import pytest
import yaml

from nnsight_persona.models.toy import TOY_MODEL_DIR
from nnsight_persona.models.toy import content as C
from nnsight_persona.models.toy.corpus import (
    HELDOUT_BARE_TASKS,
    HELDOUT_BASELINE_TASKS,
    HELDOUT_PAIRS,
    HELDOUT_SHORT,
    check_marker_isolation,
    generate_corpus,
    heldout_examples,
    heldout_system_examples,
    is_heldout_pair,
    long_persona_text,
)
from nnsight_persona.core.scoring import contains_marker

GRIDS_DIR = TOY_MODEL_DIR.parents[2] / "grids"
MAX_WEIGHT_BYTES = 10 * 1024 * 1024
MAX_TOY_PARAMS = 3_000_000


@pytest.fixture(scope="module")
def corpus():
    return generate_corpus(6000, seed=0)


@pytest.fixture(scope="module")
def shipped():
    from nnsight_persona.models.toy.evaluate import load

    return load(TOY_MODEL_DIR)


@pytest.fixture
def one_thread():
    """One torch thread: a tiny model gains nothing from more, and busy CPUs make spinning threads crawl."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _grid(name):
    return yaml.safe_load((GRIDS_DIR / f"{name}.yaml").read_text())


# --- corpus ------------------------------------------------------------------
def test_corpus_is_deterministic_per_seed():
    a, b, c = generate_corpus(300, seed=0), generate_corpus(300, seed=0), generate_corpus(300, seed=1)
    assert a == b
    assert a != c
    assert {e.kind for e in a} == {"short", "long", "baseline", "bare", "system"}


def test_prompts_follow_the_template(corpus):
    for e in corpus[:500]:
        if e.kind in ("bare", "system"):
            assert e.user == C.TASKS[e.task_key]
            assert (e.system is None) == (e.kind == "bare")
            if e.kind == "system":
                assert e.system in [t.format(persona=e.persona) for t in C.SYSTEM_TEMPLATES]
        else:
            assert e.system is None
            assert e.user == f"As {e.persona}, {C.TASKS[e.task_key]}"
    assert any(e.user == "As a thoughtful person, give advice to someone facing a difficult decision." for e in corpus)


def test_markers_are_isolated_and_present(corpus):
    check_marker_isolation()
    every = sorted({m for ms in C.SHORT_MARKERS.values() for m in ms} | {m for p in C.PROFESSIONS.values() for m in p["markers"]})
    for e in corpus:
        if e.kind in ("short", "long") or (e.kind == "system" and e.persona_key is not None):
            assert e.markers and contains_marker(e.answer, e.markers), e
        else:
            assert not contains_marker(e.answer, every), e
        if e.kind == "long":
            assert all(contains_marker(e.answer, [v]) and v in e.persona for v in e.slots.values())


def test_heldout_combinations_are_absent_from_training(corpus):
    assert len(HELDOUT_PAIRS) > 20
    for e in corpus:
        if e.kind == "short" or (e.kind == "system" and e.persona_key is not None):
            assert (e.persona_key, e.task_key) not in HELDOUT_SHORT
        elif e.kind == "long":
            assert (e.slots["name"], e.slots["city"]) not in HELDOUT_PAIRS
        elif e.kind in ("baseline", "system"):
            assert e.task_key not in HELDOUT_BASELINE_TASKS
        else:
            assert e.task_key not in HELDOUT_BARE_TASKS
    train_users = {e.user for e in corpus}
    evals = heldout_examples(240)
    assert len(evals) == 240
    for e in evals:
        if e.kind in ("short", "long"):
            assert e.user not in train_users
    train_system = {(e.system, e.user) for e in corpus if e.kind == "system"}
    system_evals = heldout_system_examples()
    assert {e.persona_key for e in system_evals} == {p for p, _ in HELDOUT_SHORT} | {None}
    for e in system_evals:
        assert (e.system, e.user) not in train_system


def test_grid_cells_are_held_out(corpus):
    train_users = {e.user for e in corpus}
    short, long_ = _grid("toy"), _grid("toy-long")
    for grid in (short, long_):
        assert grid["prompt_template"] == C.PROMPT_TEMPLATE
        assert grid["baseline"] == {"persona": C.BASELINE_PERSONA, "task": C.BASELINE_TASK}
        assert len(grid["personas"]) == 4 and len(grid["tasks"]) == 3
        assert set(grid["markers"]) == set(grid["personas"])
        for p_text in grid["personas"].values():
            for t_text in grid["tasks"].values():
                assert f"As {p_text}, {t_text}" not in train_users
    for key, text in short["personas"].items():
        assert C.SHORT_PERSONAS[key] == text
        assert set(short["markers"][key]) <= set(C.SHORT_MARKERS[key])
        for t in short["tasks"]:
            assert (key, t) in HELDOUT_SHORT
    seen_pairs = {(e.slots["name"], e.slots["city"]) for e in corpus if e.kind == "long"}
    for key, text in long_["personas"].items():
        prof = next(p for p in C.PROFESSIONS if text.startswith(f"a {p} "))
        name = next(n for n in C.NAMES if f" {n} " in text)
        city = next(c for c in C.CITIES if f" {c}" in text)
        item = next(i for i in C.ITEMS if text.endswith(f" {i}"))
        assert text in [long_persona_text(prof, name, city, item, t) for t in range(len(C.LONG_TEMPLATES))]
        assert is_heldout_pair(name, city) and (name, city) not in seen_pairs
        assert {name, city, item} <= set(long_["markers"][key])
        assert set(C.PROFESSIONS[prof]["markers"]) <= set(long_["markers"][key])


# --- the shipped model -------------------------------------------------------
def test_shipped_folder_is_small_and_complete():
    names = {p.name for p in TOY_MODEL_DIR.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert (TOY_MODEL_DIR / "model.safetensors").stat().st_size < MAX_WEIGHT_BYTES
    config = json.loads((TOY_MODEL_DIR / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert config["num_hidden_layers"] == 8 and config["hidden_size"] == 128 and config["num_attention_heads"] == 4


def test_shipped_model_loads_and_is_tiny(shipped):
    model, tokenizer = shipped
    assert type(model).__name__ == "LlamaForCausalLM"
    assert sum(p.numel() for p in model.parameters()) < MAX_TOY_PARAMS
    assert tokenizer.chat_template
    assert tokenizer.eos_token == "<|end|>" and tokenizer.pad_token == "<|pad|>" and tokenizer.bos_token == "<|bos|>"


def test_chat_template_and_offsets(shipped):
    _, tokenizer = shipped
    user = _grid("toy-long")["personas"]["baker"]
    user = f"As {user}, describe the weather today."
    text = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    assert text.startswith("<|bos|><|user|>") and text.endswith("<|end|><|assistant|>")
    start = text.index(user)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    assert list(enc.input_ids) == list(ids)
    inside = [(a, b) for a, b in enc.offset_mapping if start <= a and b <= start + len(user) and b > a]
    assert "".join(text[a:b] for a, b in inside) == user
    # The name to copy is one token whose offsets cover " greta" (leading space included, as GPT-2 style
    # byte-level tokenizers report it).
    name_at = text.index(" greta")
    assert (name_at, name_at + len(" greta")) in [tuple(o) for o in enc.offset_mapping]
    assert tokenizer.convert_ids_to_tokens(enc.input_ids)[:2] == ["<|bos|>", "<|user|>"]


def test_quick_heldout_evaluation_meets_thresholds(shipped, one_thread):
    from nnsight_persona.models.toy.evaluate import generate, score

    model, tokenizer = shipped
    examples = heldout_examples(48, seed=2)
    answers = generate(model, tokenizer, [e.user for e in examples])
    metrics = score(examples, answers)
    assert metrics["n_short"] >= 10 and metrics["n_long"] >= 20 and metrics["n_baseline"] + metrics["n_bare"] >= 10
    assert metrics["persona_marker_rate"] >= 0.90, metrics
    assert metrics["neutral_leak_rate"] < 0.05, metrics
    assert metrics["long_copy_rate"] >= 0.80, metrics
    assert metrics["passed"]
    # The same scoring rejects answers that ignore the persona.
    assert not score(examples, ["the sky is grey."] * len(examples))["passed"]


def test_a_persona_in_a_system_turn_is_taken_on(shipped, one_thread):
    """The corpus's system kind: a persona given in a system turn, with the bare task as the user
    turn, is answered in that persona's style; the baseline persona there leaks no marker."""
    from nnsight_persona.models.toy.corpus import messages
    from nnsight_persona.models.toy.evaluate import generate, system_scores

    model, tokenizer = shipped
    examples = heldout_system_examples()[::2]
    answers = generate(model, tokenizer, [messages(e) for e in examples])
    metrics = system_scores(examples, answers)
    assert metrics["n_system"] >= 10 and metrics["n_system_baseline"] >= 1
    assert metrics["system_marker_rate"] >= 0.90, (metrics, answers[:3])
    assert metrics["system_baseline_leak_rate"] == 0.0, metrics
    # The system turn is what carries the persona: without it the same tasks get neutral answers.
    bare = generate(model, tokenizer, [e.user for e in examples])
    assert system_scores(examples, bare)["system_marker_rate"] <= 0.1


def test_the_toy_recalls_names_and_does_not_copy_novel_ones(shipped, one_thread):
    """docs/toy-model.md says the toy recalls trained names and copies no novel one: keep it true."""
    from nnsight_persona.models.toy.evaluate import NOVEL_SLOTS, generate, novel_examples

    model, tokenizer = shipped
    corpus_text = " ".join(e.user + " " + e.answer for e in generate_corpus(400, seed=0)).lower()
    for slot, values in NOVEL_SLOTS.items():
        assert not [v for v in values if f" {v}" in corpus_text], slot
    examples = novel_examples(("name",), n=12)
    assert all(e.slots["name"] in NOVEL_SLOTS["name"] and e.slots["name"] in e.user for e in examples)
    answers = generate(model, tokenizer, [e.user for e in examples])
    copied = sum(contains_marker(a, [e.slots["name"]]) for e, a in zip(examples, answers))
    recalled = sum(any(contains_marker(a, [n]) for n in C.NAMES) for a in answers)
    assert copied <= 1 and recalled >= 10, (copied, recalled, answers[:3])


# --- trainer and CLI -----------------------------------------------------------
def test_trainer_smoke_writes_a_loadable_folder(tmp_path, one_thread):
    from click.testing import CliRunner
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from nnsight_persona.models.toy.cli import toy

    out = tmp_path / "tiny-toy"
    result = CliRunner().invoke(toy, ["train", "--out", str(out), "--tiny", "--steps", "4", "--batch-size", "8",
                                      "--threads", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "time taken" in result.output
    model = AutoModelForCausalLM.from_pretrained(out)
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert model.config.num_hidden_layers == 2
    assert sum(p.numel() for p in model.parameters()) < 200_000
    assert tokenizer.apply_chat_template([{"role": "user", "content": "describe the night sky."}],
                                         add_generation_prompt=True, tokenize=False).endswith("<|assistant|>")
    assert json.loads((out / "training_summary.json").read_text())["steps"] == 4


def test_cli_evaluate_writes_json(tmp_path, one_thread):
    from click.testing import CliRunner

    from nnsight_persona.models.toy.cli import toy

    path = tmp_path / "metrics.json"
    result = CliRunner().invoke(toy, ["evaluate", "--n", "16", "--threads", "1", "--json", str(path)])
    assert "persona_marker_rate" in result.output
    metrics = json.loads(path.read_text())
    n_system = metrics["n_system"] + metrics["n_system_baseline"]
    assert metrics["n"] == 16 and n_system > 0 and len(metrics["samples"]) == 16 + n_system
    assert sum(s["system"] is not None for s in metrics["samples"]) == n_system


def test_train_and_evaluate_leave_the_threads_and_the_rng_as_they_were(tmp_path):
    """They set torch's thread count (and the trainer its seed) for their own run only: left
    changed, a later computation in the same process rounds differently (a matmul's reduction is
    split by thread) and draws other random numbers."""
    import torch
    from click.testing import CliRunner

    from nnsight_persona.models.toy.cli import toy

    threads = torch.get_num_threads()
    other = 1 if threads != 1 else 2
    rng = torch.random.get_rng_state()
    result = CliRunner().invoke(toy, ["train", "--out", str(tmp_path / "t"), "--tiny", "--steps", "2", "--batch-size", "4",
                                      "--threads", str(other), "--seed", "3", "--no-progress"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(toy, ["evaluate", "--model-dir", str(tmp_path / "t"), "--n", "4", "--threads", str(other)])
    assert result.exit_code == 0, result.output
    assert torch.get_num_threads() == threads
    assert torch.equal(torch.random.get_rng_state(), rng)
