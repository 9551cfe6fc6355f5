"""The knockout experiment and its controls against independent mask hooks and token offsets."""

import numpy as np
import pytest
import torch

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.studies.xu2026 import knockout, markers
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.prompts import render_prompt
from reference import greedy, load_plain, logits_with_mask_knockout, summed_kl

BANDS = ((0, 2), (2, 4), (0, 4))


def _tokens_overlapping(offsets, c0: int, c1: int) -> list[int]:
    return [i for i, (a, b) in enumerate(offsets) if b > a and a < c1 and b > c0]


def _rendered(tok, user: str):
    """The chat-templated text of one user turn and its token offsets (the test's own route)."""
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    return text, enc["input_ids"], enc["offset_mapping"]


def expected_keys(tok, grid, cell, filler=" ."):
    """Each condition's (token ids of its prompt, key positions), from character offsets of the
    rendered text: the persona's characters, the task's, the baseline persona's, the filler's."""
    persona, task, base = grid.personas[cell.persona], grid.tasks[cell.task], grid.baseline_persona
    user = grid.prompt_template.format(persona=persona, task=task).strip()
    text, ids, off = _rendered(tok, user)
    u0 = text.rfind(user)
    p0 = u0 + user.find(persona)
    p1 = p0 + len(persona)
    persona_keys = _tokens_overlapping(off, p0, p1)
    n = len(persona_keys)
    after = [i for i in _tokens_overlapping(off, p1, u0 + len(user)) if i not in persona_keys]
    before = [i for i, (a, b) in enumerate(off) if i >= 1 and a < b <= p0]
    by_user = grid.prompt_template.format(persona=base, task=task).strip()
    by_text, by_ids, by_off = _rendered(tok, by_user)
    b0 = by_text.rfind(by_user) + by_user.find(base)
    neutral = None
    for k in range(1, 4 * n + 2):
        host_user = grid.prompt_template.format(persona=base + filler * k, task=task).strip()
        h_text, h_ids, h_off = _rendered(tok, host_user)
        f0 = h_text.rfind(host_user) + host_user.find(base) + len(base)
        fill = [i for i in _tokens_overlapping(h_off, f0, f0 + len(filler * k))
                if i not in _tokens_overlapping(h_off, f0 - len(base), f0)]
        if len(fill) > n:
            neutral = neutral or (h_ids, fill[:n])
            break
        neutral = (h_ids, fill)
        if len(fill) == n:
            break
    return {
        "persona": (ids, persona_keys),
        "task_span": (ids, (after + before)[:n]),
        "template_span": (ids, sorted(before, reverse=True)[:n]),
        "baseline_persona": (by_ids, _tokens_overlapping(by_off, b0, b0 + len(base))),
        "neutral_span": neutral,
        "none": (ids, []),
    }


def _logp(logits, start, tokens):
    return float(logits[start : start + len(tokens)].log_softmax(-1)[torch.arange(len(tokens)), torch.tensor(tokens)].sum())


@torch.no_grad()
def test_each_condition_knocks_out_exactly_its_keys(loaded_models, tiny_dirs, family, tiny_grid_file):
    """Key positions from character offsets (not the package's formulas); every condition's KL,
    log-prob drop and KL to BY equal an independent mask hook knocking out exactly those keys."""
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    spec = knockout.KnockoutSpec(grid="tiny", bands=BANDS, n_tokens=0, batch_size=7, min_gap=-1e9)
    ds = knockout.run(loaded, grid, spec, progress=False).isel(model=0)
    assert ds.attrs["completed"] == 1 and "any_marker" not in ds
    assert list(ds.condition.values) == list(knockout.CONDITIONS)
    for v in ("kl", "logp_drop", "persona_shift"):
        assert (ds[v].sel(condition="none").values == 0).all(), v
    assert (ds.toward_by.sel(condition="none").values == 0).all()
    plain = load_plain(tiny_dirs[family])
    for cell in grid.cells:
        expected = expected_keys(loaded.tokenizer, grid, cell)
        n = len(expected["persona"][1])
        xy_ids = expected["persona"][0]
        clean = greedy(plain, list(xy_ids), 12, loaded.pad_id)
        targets = clean[:10]
        full = lambda ids: list(ids) + clean[:9]
        clean_logits = {}
        for cond, (ids, _) in expected.items():
            clean_logits[tuple(ids)] = plain(torch.tensor([full(ids)])).logits[0].float()
        by_ids = expected["baseline_persona"][0]
        by_logits = clean_logits[tuple(by_ids)]
        xy_logits = clean_logits[tuple(xy_ids)]
        xy_start, by_start = len(xy_ids) - 1, len(by_ids) - 1
        gap = _logp(xy_logits, xy_start, targets) - _logp(by_logits, by_start, targets)
        assert float(ds.gap.sel(cell=cell.label)) == pytest.approx(gap, abs=1e-3)  # sums of 10 log-probs
        for cond, (ids, keys) in expected.items():
            got_keys = [int(k) for k in ds.key_positions.sel(cell=cell.label, condition=cond).values if k >= 0]
            assert got_keys == keys, (cell.label, cond)
            assert int(ds.n_keys.sel(cell=cell.label, condition=cond)) == len(keys)
            assert int(ds.prompt_length.sel(cell=cell.label, condition=cond)) == len(ids)
            assert len(keys) == n if cond == "persona" else cond == "baseline_persona" or len(keys) <= n
            if cond in ("task_span", "template_span"):
                assert not set(keys) & set(expected["persona"][1])
            start = len(ids) - 1
            for band in BANDS:
                got = ds.sel(cell=cell.label, band=f"{band[0]}:{band[1]}", condition=cond)
                logits = logits_with_mask_knockout(plain, full(ids), list(range(*band)), start, keys)
                ref = clean_logits[tuple(ids)]
                assert float(got.kl) == pytest.approx(summed_kl(ref, logits, start, 10), abs=1e-4), (cell.label, band, cond)
                drop = _logp(ref, start, targets) - _logp(logits, start, targets)
                assert float(got.logp_drop) == pytest.approx(drop, abs=1e-3), (cell.label, band, cond)
                # gap and drop are checked above; on a random model the gap is small, so compare the ratio as stored
                assert float(got.persona_shift) == pytest.approx(float(got.logp_drop) / float(ds.gap.sel(cell=cell.label)))
                if ds.prompt.sel(condition=cond) == "XY":
                    to_by = summed_kl(by_logits, logits, by_start, 10, patched_start=start)
                    assert float(got.kl_to_by) == pytest.approx(to_by, abs=1e-4)
                    base = summed_kl(by_logits, xy_logits, by_start, 10, patched_start=xy_start)
                    assert float(ds.kl_by_xy.sel(cell=cell.label)) == pytest.approx(base, abs=1e-4)
                    assert float(got.toward_by) == pytest.approx(1 - float(got.kl_to_by) / float(ds.kl_by_xy.sel(cell=cell.label)))
                else:
                    assert np.isnan(float(got.toward_by))
                if keys:
                    assert float(got.kl_per_key) == pytest.approx(float(got.kl) / len(keys))


def test_persona_shift_is_0_without_change_and_1_at_the_baseline_run():
    """The measures on constructed next-token distributions: rows XY, BY, knocked = XY, knocked =
    BY, knocked = noise, over a 5-token window; the targets are XY's most likely tokens."""
    from nnsight_persona.core.tracing import window_scores

    gen = torch.Generator().manual_seed(0)
    xy = (3 * torch.randn(5, 40, generator=gen)).log_softmax(-1)
    by = (3 * torch.randn(5, 40, generator=gen)).log_softmax(-1)
    noise = (3 * torch.randn(5, 40, generator=gen)).log_softmax(-1)
    logp = torch.stack([xy, by, xy, by, noise])
    targets = xy.argmax(-1).repeat(5, 1)
    scores = window_scores(logp, own_rows=torch.tensor([0, 1, 0, 0, 0]), baseline_rows=torch.tensor([1] * 5), targets=targets)
    for r in range(5):  # the sums, by hand
        assert scores[r, 1] == pytest.approx(float((by.exp() * (by - logp[r])).sum()), abs=1e-5)
        assert scores[r, 2] == pytest.approx(sum(float(logp[r, t, targets[r, t]]) for t in range(5)), abs=1e-5)
    assert scores[1, 0] == 0 and scores[4, 0] == pytest.approx(float((xy.exp() * (xy - noise)).sum()), abs=1e-5)
    drop = scores[0, 2] - scores[:, 2]
    gap = scores[0, 2] - scores[1, 2]
    assert gap > 1
    shift = knockout.persona_shift(drop.numpy(), gap.item(), min_gap=1.0)
    assert shift[2] == 0 and shift[3] == pytest.approx(1.0)
    toward = knockout.toward_baseline(scores[:, 1].numpy(), scores[0, 1].item(), min_gap=1.0)
    assert toward[2] == 0 and toward[3] == pytest.approx(1.0, abs=1e-6)
    assert toward[4] < 0.5  # noise is not BY, although it lowers the clean tokens' probability
    assert np.isnan(knockout.persona_shift(drop.numpy(), 0.5, min_gap=1.0)).all()  # no gap: undefined
    assert np.isnan(knockout.toward_baseline(scores[:, 1].numpy(), 0.5, min_gap=1.0)).all()


def test_control_has_as_many_keys_outside_the_persona(loaded_models, tiny_grid_file):
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    for cell in grid.cells:
        p = render_prompt(loaded.tokenizer, grid.user_text(cell, "XY"), grid.persona_text(cell, "XY"))
        n = p.persona_span[1] - p.persona_span[0]
        control = knockout.control_positions(p, n)
        assert not set(control) & set(range(*p.persona_span))
        assert 0 not in control and p.p_last not in control
        assert len(control) == min(n, p.p_user_text_last + 1 - p.persona_span[1] + p.persona_span[0] - 1)
        template = knockout.template_positions(p, n)
        assert template and max(template) < p.persona_span[0] and 0 not in template


def test_marker_generation_without_knockout_is_the_clean_generation(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    ko = knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=((0, 4),), n_tokens=8,
                                                          queries="generated"), progress=False).isel(model=0)
    mk = markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, n_tokens=8, conditions=("clean",)),
                     progress=False).isel(model=0)
    for cell in grid.cells:
        assert str(ko.text.sel(cell=cell.label, condition="none", band="0:4").item()) == str(mk.text.sel(cell=cell.label, condition="clean").item())
    assert set(np.unique(ko.any_marker.values)) <= {0, 1}


def test_bands_and_bad_input(loaded_models, tiny_grid_file):
    assert knockout.default_bands(26)[-1] == (0, 26) and knockout.default_bands(26)[0] == (0, 6)
    assert knockout.parse_bands("0:2,all", 4) == [(0, 2), (0, 4)]
    with pytest.raises(SelectionError, match="band '3:9' out of range"):
        knockout.parse_bands("3:9", 4)
    with pytest.raises(SelectionError, match="cannot read band 'x'"):
        knockout.parse_bands("x", 4)
    grid = load_grid(tiny_grid_file)
    loaded = loaded_models["llama"]
    with pytest.raises(SelectionError, match=r"unknown --queries 'prompt'"):
        knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, queries="prompt"), progress=False)
    with pytest.raises(SelectionError, match=r"renamed: use \['task_span'\]"):
        knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, conditions=("control",)), progress=False)
    with pytest.raises(SelectionError, match=r"head\(s\) \[9\] out of range"):
        knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, heads=(9,)), progress=False)


def test_knockout_figure_draws_every_control_per_key_and_the_shift(loaded_models, tiny_grid_file):
    from nnsight_persona.plots.knockout import plot_knockout_by_band

    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    ds = knockout.run(loaded, grid, knockout.KnockoutSpec(grid="tiny", bands=BANDS, n_tokens=0, min_gap=-1e9), progress=False)
    kl_ax, per_key_ax, shift_ax = plot_knockout_by_band(ds).axes
    lines = lambda ax: {l.get_label().split(" (KL 0")[0]: l for l in ax.get_lines() if not l.get_label().startswith("_")}
    assert set(lines(kl_ax)) == set(knockout.CONDITIONS)
    sub = ds.isel(model=0)
    for cond in ("persona", "neutral_span"):
        np.testing.assert_allclose(lines(per_key_ax)[cond].get_ydata(), sub.kl_per_key.sel(condition=cond).median("cell"))
        np.testing.assert_allclose(lines(shift_ax)[cond].get_ydata(), sub.persona_shift.sel(condition=cond).median("cell"))
    np.testing.assert_allclose(lines(shift_ax)["persona, toward BY"].get_ydata(), sub.toward_by.sel(condition="persona").median("cell"))
    n = int(sub.n_keys.sel(condition="persona").min()), int(sub.n_keys.sel(condition="persona").max())
    ds2 = ds.copy(deep=True)
    ds2["persona_shift"].loc[dict(cell=grid.cells[0].label)] = np.nan
    labels = [l.get_label() for l in plot_knockout_by_band(ds2).axes[2].get_lines()]
    assert f"persona (medians of {len(grid.cells) - 1}/{len(grid.cells)} cells)" in labels
    legend = [t.get_text() for t in kl_ax.get_legend().get_texts()]
    assert (f"persona ({n[0]} keys)" if n[0] == n[1] else f"persona ({n[0]}-{n[1]} keys)") in legend


def test_knockout_answers_are_scored_on_the_unedited_model(toy_model, toy_plain, toy_grid_raw):
    """Answers generated with the persona knocked out (plain greedy decoding through the reference's
    own mask hooks) scored XY against BY by plain forward passes of the UNKNOCKED model equal the
    dataset's evidence; with the knockout still in place, the XY pass would give other values."""
    from reference import answer_evidence, chat_prompt, user_texts

    cells, n_tokens = ("pirate__weather", "poet__story"), 8
    spec = knockout.KnockoutSpec(grid="toy", bands=((0, toy_model.n_layers),), conditions=("persona", "none"),
                                 cells=cells, n_tokens=n_tokens, n_eval=4)
    ds = knockout.run(toy_model, load_grid("toy"), spec, progress=False).isel(model=0, band=0)
    tok = toy_model.tokenizer
    blocks = list(range(toy_model.n_layers))
    worst_knocked_gap = 0.0
    for cell in cells:
        persona, task = cell.split("__")
        texts = user_texts(toy_grid_raw, persona, task)
        xy, by = chat_prompt(tok, texts["XY"]), chat_prompt(tok, texts["BY"])
        for cond in ("persona", "none"):
            keys = [int(k) for k in ds.key_positions.sel(cell=cell, condition=cond).values if k >= 0]
            seq = list(xy["ids"])
            for _ in range(n_tokens):  # greedy, the knockout held from p_last on
                nxt = int(logits_with_mask_knockout(toy_plain, seq, blocks, xy["p_last"], keys)[-1].argmax())
                if nxt == tok.eos_token_id:
                    break
                seq.append(nxt)
            answer = seq[len(xy["ids"]):]
            expected = answer_evidence(toy_plain, xy["ids"], by["ids"], answer)
            got = ds.sel(cell=cell, condition=cond)
            assert int(got.answer_length) == len(answer), (cell, cond)
            assert abs(float(got.evidence) - expected["evidence"]) < 1e-4, (cell, cond, float(got.evidence), expected)
            if keys:
                logp = logits_with_mask_knockout(toy_plain, seq, blocks, xy["p_last"], keys).log_softmax(-1)
                knocked = sum(float(logp[len(xy["ids"]) - 1 + t, a]) for t, a in enumerate(answer)) / len(answer)
                worst_knocked_gap = max(worst_knocked_gap,
                                        abs(knocked - expected["reference_logp"] - expected["evidence"]))
    assert worst_knocked_gap > 100 * 1e-4, worst_knocked_gap
