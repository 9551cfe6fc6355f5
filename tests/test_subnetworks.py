"""Persona subnetworks (docs/subnetworks.md): masks, channel norms, masked copies, the structured
variant, evaluation scoring and the calibration files, each against an independent computation
(plain transformers forward passes and torch hooks on the toy persona model)."""

import copy
import dataclasses
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from reference import chat_prompt, load_plain
from tolerances import RESIDUAL, SCORES, assert_close_per_vector

from nnsight_persona.core.errors import DataFileError
from nnsight_persona.studies.subnetworks import data, evaluate, find
from nnsight_persona.studies.subnetworks import masks as M
from nnsight_persona.studies.subnetworks.apply import MaskedCopy, channel_factors, mask_channels
from nnsight_persona.studies.subnetworks.norms import encode, linear_names, record_norms

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)


@pytest.fixture(scope="module")
def toy():
    from nnsight_persona.models.loading import load_model

    return load_model("toy", dtype="float32", device="cpu")


@pytest.fixture(scope="module")
def plain(toy_dir):
    return load_plain(toy_dir)


@pytest.fixture(scope="module")
def pset():
    return data.load_persona_set("toy")


def _find(toy, pset, **kw):
    spec = find.FindSpec(persona_set="toy", batch_size=8, **kw)
    return find.run(toy, pset, spec, progress=False)


def _plain_ids(tok, question, answer):
    """A sample's ids built from the chat template directly (no package helper)."""
    prompt = chat_prompt(tok, question)["ids"]
    return prompt, prompt + tok(answer, add_special_tokens=False).input_ids


@torch.no_grad()
def _plain_logits(model, ids):
    return model(torch.tensor([ids])).logits[0]


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --- masks ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("sparsity", [0.0, 0.3, 0.5, 0.77, 0.94])
def test_mask_keeps_exactly_the_fraction_of_each_row_and_ties_follow_the_seed(sparsity):
    gen = torch.Generator().manual_seed(1)
    scores = torch.relu(torch.randn(12, 50, generator=gen))  # about half of each row is a tie at 0
    scores[:, :5] = 2.0  # ties above zero too
    mask = M.keep_top(scores, sparsity, seed=3, name="m")
    k = 50 - int(np.floor(sparsity * 50 + 0.5))
    assert mask.sum(1).tolist() == [k] * 12
    for row, keep in zip(scores, mask):  # a kept entry never scores below a pruned one
        if (~keep).any():
            assert row[keep].min() >= row[~keep].max()
    assert torch.equal(mask, M.keep_top(scores, sparsity, seed=3, name="m"))
    other = M.keep_top(scores, sparsity, seed=4, name="m")
    assert other.sum(1).tolist() == [k] * 12
    ranked = scores.sort(1, descending=True).values
    if k < 50 and (ranked[:, k - 1] == ranked[:, k]).any():  # the cut falls inside a tie (0.3, 0.5: zeros; 0.94: 2.0s)
        assert not torch.equal(mask, other)  # the seed decides which tied entries stay
    else:
        assert torch.equal(mask, other)


def test_found_masks_keep_the_fraction_of_every_row_and_repeat_with_the_seed(toy, pset):
    masks, ds = _find(toy, pset, sparsities=(0.3,), seed=5)
    again, _ = _find(toy, pset, sparsities=(0.3,), seed=5)
    other, _ = _find(toy, pset, sparsities=(0.3,), seed=6)
    differs = False
    for key, by_module in masks.items():
        for name, mask in by_module.items():
            n_in = mask.shape[1]
            assert (mask.sum(1) == n_in - int(np.floor(0.3 * n_in + 0.5))).all(), name
            assert torch.equal(mask, again[key][name])
            differs |= not torch.equal(mask, other[key][name])
    assert differs  # relu scores tie, and the seed decides those
    widths = np.array([masks[("pirate", 0.3)][m].shape[1] for m in ds.module.values])
    want = (widths - np.floor(0.3 * widths + 0.5)) / widths
    np.testing.assert_allclose(ds.kept_fraction.values, np.broadcast_to(want, ds.kept_fraction.shape))


def test_mask_file_round_trips_with_its_spec(tmp_path):
    masks = {("a", 0.3): {"x": torch.rand(5, 13) > 0.5, "y": torch.rand(7) > 0.2}}
    M.save_masks(masks, tmp_path / "m.safetensors", {"seed": 2})
    back, spec = M.load_masks(tmp_path / "m.safetensors")
    assert spec == {"seed": 2}
    assert all(torch.equal(back[("a", 0.3)][n], m) for n, m in masks[("a", 0.3)].items())


def test_statistics_count_overlaps_like_sets():
    a = torch.tensor([[1, 1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[1, 0, 1, 0]], dtype=torch.bool)
    ds = M.statistics({("p", 0.5): {"m": a}, ("q", 0.5): {"m": b}}, ["p", "q"], [0.5], ["m"])
    assert ds.jaccard.sel(persona="p", other="q").values.item() == pytest.approx(1 / 3)
    assert ds.jaccard_pruned.sel(persona="p", other="q").values.item() == pytest.approx(1 / 3)
    assert ds.overlap.sel(persona="p", other="q").values.item() == pytest.approx(1 / 2)
    assert M.overall(ds, "jaccard", "p", "q", 0.5) == pytest.approx(1 / 3)


def test_contrastive_z_is_the_papers_formula():
    a, b = torch.tensor([[1.0, 2.0], [3.0, 2.0]]), torch.tensor([[0.0, 5.0], [0.0, 3.0]])
    want = (np.array([2.0, 2.0]) - np.array([0.0, 4.0])) / np.sqrt(np.array([1.0, 0.0]) + np.array([0.0, 1.0]) + 1e-6)
    np.testing.assert_allclose(M.z_scores(a, b).numpy(), want, rtol=1e-6)
    np.testing.assert_allclose(M.channel_weight("contrastive", a, b, "softplus", 2.0).numpy(),
                               np.log1p(np.exp(want / 2)), rtol=1e-5)


# --- channel norms --------------------------------------------------------------------------------

@pytest.mark.parametrize("tokens", ["answer", "all"])
def test_channel_norms_equal_plain_forward_hooks(toy, plain, pset, tokens):
    items = pset.persona("pirate").calibration[:5]
    names = linear_names(toy.lm._module, toy.adapter, head=True)
    got = record_norms(toy, [encode(toy.tokenizer, it.question, it.matching) for it in items], names, tokens,
                       batch_size=5)  # one left-padded batch of unequal lengths
    captured, handles = {}, []
    for name, module in plain.named_modules():
        if isinstance(module, torch.nn.Linear):
            handles.append(module.register_forward_pre_hook(lambda m, args, name=name: captured.__setitem__(name, args[0])))
    try:
        for r, it in enumerate(items):
            prompt, ids = _plain_ids(toy.tokenizer, it.question, it.matching)
            start = len(prompt) if tokens == "answer" else 0
            with torch.no_grad():
                plain(torch.tensor([ids]))
            for name in names:
                want = captured[name][0, start:].double().pow(2).sum(0).sqrt()
                assert_close_per_vector(got[name][r], want, RESIDUAL, what=name)  # padded nnsight vs unpadded hooks
    finally:
        for h in handles:
            h.remove()
    assert len(got) == 57 and all(v.shape[0] == 5 for v in got.values())


# --- applying masks -------------------------------------------------------------------------------

def test_sparsity_zero_leaves_every_output_unchanged(toy, plain, pset):
    masks, _ = _find(toy, pset, sparsities=(0.0,), head=True)
    assert all(m.all() for by in masks.values() for m in by.values())
    ids = _plain_ids(toy.tokenizer, "describe the night sky.", "arr matey! the stars are bright.")[1]
    want = _plain_logits(plain, ids)
    copy_ = MaskedCopy(toy)
    masked = copy_.with_masks(masks[("pirate", 0.0)])
    assert torch.equal(_plain_logits(masked.lm._module, ids), want)
    structured, _ = _find(toy, pset, sparsities=(0.0,), structured=True, head=True)
    with toy.lm.trace(torch.tensor([ids])):
        mask_channels(toy.lm, channel_factors(structured[("robot", 0.0)]))
        logits = toy.lm.output.logits.save()
    assert torch.equal(logits[0], want)


def test_callers_model_is_bit_identical_after_find_and_eval(toy, pset):
    before = _state(toy.lm._module)
    masks, _ = _find(toy, pset, sparsities=(0.5,), head=True)
    spec = evaluate.EvalSpec(persona_set="toy", masks_sha256="t", mask_spec=json.dumps({"structured": False}),
                             random_seeds=1, n_tokens=3)
    ds = evaluate.run(toy, pset, spec, masks, progress=False)
    after = toy.lm._module.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ... and the masks did change the copy's outputs (the run was not a no-op)
    assert float(abs(ds.margin.sel(variant="mask:pirate@0.5") - ds.margin.sel(variant="unpruned")).max()) > 0.5


def test_weight_mask_of_the_copy_equals_masking_plain_weights(toy, plain, pset):
    masks, _ = _find(toy, pset, sparsities=(0.5,), method="wanda", head=True)
    chosen = masks[("robot", 0.5)]
    reference = copy.deepcopy(plain)
    reference.lm_head.weight = torch.nn.Parameter(reference.lm_head.weight.detach().clone())
    with torch.no_grad():
        for name, mask in chosen.items():
            reference.get_submodule(name).weight.mul_(mask)
    ids = _plain_ids(toy.tokenizer, "describe the night sky.", "beep boop. the stars are bright.")[1]
    got = _plain_logits(MaskedCopy(toy).with_masks(chosen).lm._module, ids)
    want = _plain_logits(reference, ids)
    assert_close_per_vector(got, want, RESIDUAL, what="logits per position")
    assert (want - _plain_logits(plain, ids)).abs().max() > 1.0  # a mask that matters
    assert torch.equal(plain.model.embed_tokens.weight, reference.model.embed_tokens.weight)


def test_structured_variant_equals_the_channel_mask_applied_to_the_weights(toy, plain, pset):
    masks, _ = _find(toy, pset, sparsities=(0.4,), structured=True, head=True)
    chosen = masks[("pirate", 0.4)]
    reference = copy.deepcopy(plain)
    reference.lm_head.weight = torch.nn.Parameter(reference.lm_head.weight.detach().clone())
    with torch.no_grad():
        for name, keep in chosen.items():
            reference.get_submodule(name).weight[:, ~keep] = 0.0
    ids = _plain_ids(toy.tokenizer, "plan a trip to the mountains.", "ahoy matey! pack warm clothes.")[1]
    want = _plain_logits(reference, ids)
    with toy.lm.trace(torch.tensor([ids])):
        mask_channels(toy.lm, channel_factors(chosen))
        logits = toy.lm.output.logits.save()
    assert_close_per_vector(logits[0], want, RESIDUAL, what="logits per position")
    assert (want - _plain_logits(plain, ids)).abs().max() > 1.0


def test_structured_variant_runs_through_the_local_simulation_of_the_remote_path(toy, pset):
    masks, _ = _find(toy, pset, sparsities=(0.4,), structured=True)
    channels = channel_factors(masks[("robot", 0.4)])
    simulated = dataclasses.replace(toy, remote="local")
    seqs = [encode(toy.tokenizer, it.question, it.matching) for it in pset.persona("robot").evaluation[:4]]
    here = evaluate.answer_logprobs(toy, seqs, channels)
    there = evaluate.answer_logprobs(simulated, seqs, channels)
    assert_close_per_vector(there, here, SCORES, axis=None)
    assert np.abs(here - evaluate.answer_logprobs(toy, seqs)).max() > 0.5  # the edit travelled
    questions = [it.question for it in pset.persona("robot").evaluation[:3]]
    assert evaluate.generations(simulated, questions, 6, channels) == evaluate.generations(toy, questions, 6, channels)


def test_weight_masks_are_refused_remotely(toy):
    from nnsight_persona.core.errors import SelectionError

    with pytest.raises(SelectionError, match="cannot travel"):
        MaskedCopy(dataclasses.replace(toy, remote="local"))


# --- evaluation scoring ---------------------------------------------------------------------------

def test_answer_log_likelihood_equals_plain_transformers(toy, plain, pset):
    items = pset.persona("pirate").evaluation[:4]
    seqs = [encode(toy.tokenizer, it.question, ans) for it in items for ans in (it.matching, it.other)]
    got = evaluate.answer_logprobs(toy, seqs, batch_size=8)
    for k, (it, ans) in enumerate((it, ans) for it in items for ans in (it.matching, it.other)):
        prompt, ids = _plain_ids(toy.tokenizer, it.question, ans)
        logp = _plain_logits(plain, ids).double().log_softmax(-1)
        want = sum(float(logp[t - 1, ids[t]]) for t in range(len(prompt), len(ids)))
        assert got[k] == pytest.approx(want, rel=1e-4, abs=1e-3)


# --- calibration files ----------------------------------------------------------------------------

BAD_FILES = [
    ("train.csv", "question,matching,not_matching\nq1,a,b\nq2,a,b\nq3,,b\n", "row 3 (line 4) has no value for matching"),
    ("train.csv", "question,matching\nq1,a\n", "the header lacks not_matching"),
    ("train.csv", "question,matching,not_matching\nq1,a,b\nq2,a,b,c\n", "row 2 (line 3) has 4 fields"),
    ("train.yaml", "- {question: q, matching: a, not_matching: b}\n- {question: q, matching: a}\n",
     "row 2 has no value for not_matching"),
    ("train.txt", "x", "item files are .csv or .yaml"),
]


@pytest.mark.parametrize("name, text, message", BAD_FILES)
def test_bad_calibration_files_give_one_line_naming_file_and_row(tmp_path, name, text, message):
    bad = tmp_path / name
    bad.write_text(text)
    with pytest.raises(DataFileError) as info:
        data.load_calibration(bad)
    assert message in str(info.value) and str(bad) in str(info.value) and "\n" not in str(info.value)


def test_bad_evaluation_answer_key_names_the_row(tmp_path):
    bad = tmp_path / "test_mc.csv"
    bad.write_text("question,A,B,matching\nq,a,b,A\nq,a,b, (B)\nq,a,b,C\n")
    with pytest.raises(DataFileError, match=r"test_mc.csv: row 3 has matching 'C'; allowed: A, B"):
        data.load_evaluation(bad)


def test_cli_reports_a_bad_calibration_file_in_one_line(tmp_path):
    from nnsight_persona.cli import main

    (tmp_path / "p-train.csv").write_text("question,matching,not_matching\nq,a,b\nq,a,\n")
    (tmp_path / "p-test_mc.csv").write_text("question,A,B,matching\nq,a,b,A\n")
    (tmp_path / "set.yaml").write_text(
        "personas:\n"
        "  a: {text: x, opposite: b, calibration: p-train.csv, evaluation: p-test_mc.csv}\n"
        "  b: {text: y, opposite: a, calibration: p-train.csv, evaluation: p-test_mc.csv}\n"
        "neutral: [{question: q, answer: a}]\n")
    result = CliRunner().invoke(main, ["subnetwork", "find", "--set", str(tmp_path / "set.yaml")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "p-train.csv: row 2 (line 3) has no value for not_matching" in lines[0]


def test_bundled_persona_sets_load():
    for name in ("toy", "smollm2"):
        s = data.load_persona_set(name)
        assert len(s.personas) == 2 and all(len(p.calibration) >= 8 and len(p.evaluation) >= 8 for p in s.personas.values())
        a, b = s.personas.values()
        assert a.opposite == b.name and b.opposite == a.name


# --- the commands end to end ----------------------------------------------------------------------

def test_find_and_eval_commands_write_masks_statistics_and_figures(tmp_path):
    from nnsight_persona.cli import main
    from nnsight_persona.storage.store import load_dataset

    out = tmp_path / "find.nc"
    runner = CliRunner()
    result = runner.invoke(main, ["subnetwork", "find", "--sparsity", "0.2,0.5", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    stats = load_dataset(out)
    assert stats.attrs["completed"] == 1 and set(stats.sparsity.values) == {0.2, 0.5}
    mask_file = tmp_path / "find-masks.safetensors"
    result = runner.invoke(main, ["subnetwork", "eval", str(mask_file), "--random-seeds", "1", "--n-tokens", "4",
                                  "--out", str(tmp_path / "eval.nc"), "--no-progress"])
    assert result.exit_code == 0, result.output
    ds = load_dataset(tmp_path / "eval.nc")
    assert set(ds.kind.values) == {"unpruned", "prompt", "mask", "random"}
    # the per-item margins the figures' intervals resample: their means are the file's per-persona measures
    for persona in ds.persona.values:
        mine = ds.item_margin.values[:, ds.item_persona.values == persona]
        np.testing.assert_allclose(mine.mean(axis=1), ds.margin.sel(persona=persona).values, rtol=1e-9)
        np.testing.assert_allclose((1 / (1 + np.exp(-mine))).mean(axis=1), ds.p_matching.sel(persona=persona).values,
                                   rtol=1e-9)
    assert (tmp_path / "eval-alignment_vs_sparsity.png").exists() and (tmp_path / "eval-persona_by_mask.png").exists()
    again = runner.invoke(main, ["subnetwork", "eval", str(mask_file), "--random-seeds", "1", "--n-tokens", "4",
                                 "--out", str(tmp_path / "eval.nc"), "--no-progress"])
    assert again.exit_code == 0 and "already done" in again.output
    remote = runner.invoke(main, ["subnetwork", "eval", str(mask_file), "--ndif-host", "local"])
    assert remote.exit_code == 1 and "cannot travel" in remote.output
    # the structured variant, through the file (modules stored alphabetically) and the simulated remote path
    result = runner.invoke(main, ["subnetwork", "find", "--structured", "--sparsity", "0.3", "--out",
                                  str(tmp_path / "s.nc"), "--no-progress"])
    assert result.exit_code == 0, result.output
    for extra, name in (([], "here.nc"), (["--ndif-host", "local"], "there.nc")):
        result = runner.invoke(main, ["subnetwork", "eval", str(tmp_path / "s-masks.safetensors"), "--random-seeds", "1",
                                      "--n-tokens", "4", "--no-prompt-baseline", "--out", str(tmp_path / name),
                                      "--no-progress", *extra])
        assert result.exit_code == 0, result.output
    here, there = load_dataset(tmp_path / "here.nc"), load_dataset(tmp_path / "there.nc")
    assert_close_per_vector(there.margin.values, here.margin.values, SCORES, axis=None)
    assert there.attrs["backend"] == "local simulation of the remote path"
    assert there.attrs["remote_requests"] > 0 and there.attrs["remote_bytes_received"] > 0
    assert "remote_requests" not in here.attrs


# --- the committed results are what the code computes ---------------------------------------------

def test_committed_toy_subnetwork_results_recompute(toy):
    from pathlib import Path

    from nnsight_persona.storage.store import load_dataset, spec_of

    folder = Path(__file__).resolve().parent.parent / "artifacts" / "toy"
    stats_path, eval_path = folder / "subnetwork-find-toy.nc", folder / "subnetwork-eval-toy.nc"
    if not (stats_path.exists() and eval_path.exists()):
        pytest.skip("no committed toy subnetwork results")
    committed = load_dataset(stats_path)
    recorded = spec_of(committed)
    spec = find.FindSpec(**{k: tuple(v) if isinstance(v, list) else v for k, v in recorded.items()})
    pset = data.load_persona_set(spec.persona_set)
    assert spec.data_sha256 == find.data_digest(pset), "the calibration files changed since the results were made"
    masks, ds = find.run(toy, pset, spec, progress=False)
    np.testing.assert_array_equal(ds.n_kept_both.values, committed.n_kept_both.values)
    evaluated = load_dataset(eval_path)
    label = str(evaluated.variant.values[evaluated.kind.values.astype(str) == "mask"][0])
    variant = next(v for v in evaluate.variants(pset, masks, evaluate.EvalSpec(persona_set="toy", masks_sha256="",
                                                                              mask_spec="{}")) if v.label == label)
    eval_spec = evaluate.EvalSpec(**spec_of(evaluated))
    got = evaluate.score_variant(MaskedCopy(toy).with_masks(evaluate.masks_of(variant, masks)), pset, variant, None,
                                 eval_spec)
    # recomputed here against the committed file (made on another CPU, in other batches)
    assert_close_per_vector(got["margin"], evaluated.margin.sel(variant=label).values, SCORES, axis=None)
    assert got["text"] == evaluated.text.sel(variant=label).values.tolist()
