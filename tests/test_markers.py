"""The behavioural marker test: scoring rules, and generation under edits against plain hooks."""

import pytest

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.studies.xu2026 import markers
from nnsight_persona.core.grids import grid_from_dict, load_grid
from nnsight_persona.core.scoring import marker_counts, markers_found
from reference import CONDITIONS, chat_prompt, greedy_with_patch, hidden_states, replacement, user_texts

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)


def test_scoring_follows_the_papers_rules():
    text = "A single point of failure (SPOF). Scalability: fine. Clean code; indemnification; fault-tolerant."
    markers_ = ["SPOF", "single point of failure", "scalability", "lean", "indemnif*", "fault-tolerant", "indemnif"]
    assert markers_found(text, markers_) == ["SPOF", "single point of failure", "scalability", "indemnif*", "fault-tolerant"]
    assert marker_counts("Iterate, iterate! ITERATE.", ["iterate"]) == {"iterate": 3}
    assert markers_found("the classical french sauté", ["French", "sauté", "classic"]) == ["French", "sauté"]
    # Multi-word markers match as substrings, single words only on word boundaries.
    assert markers_found("unfeel heardness", ["feel heard", "heard"]) == ["feel heard"]


def test_default_layer_is_the_papers():
    assert markers.default_layer(26) == 14


def eos_ids(tok, plain) -> set[int]:
    ids = plain.generation_config.eos_token_id
    return {tok.eos_token_id} | set(ids if isinstance(ids, (list, tuple)) else [ids]) - {None}


def check_markers(loaded, plain, grid, raw, cells, layer, patch_steps, n_tokens, batch_size):
    """Greedy texts under each condition equal plain greedy decoding with a pre-hook writing the
    reference's own vectors (from its own hidden states); returns, per mistake the comparison
    targets, in how many cells the mistaken vector would change the text."""
    spec = markers.MarkersSpec(grid=grid.name, layer=layer, n_tokens=n_tokens, patch_steps=patch_steps,
                               batch_size=batch_size, cells=tuple(cells))
    ds = markers.run(loaded, grid, spec, progress=False).isel(model=0)
    assert ds.attrs["completed"] == 1
    tok, eos = loaded.tokenizer, eos_ids(loaded.tokenizer, plain)
    power = {"remove_persona_sign": 0, "additive_sign": 0}
    for cell in cells:
        persona, task = cell.split("__")
        p = {c: chat_prompt(tok, text) for c, text in user_texts(raw, persona, task).items()}
        h = {c: hidden_states(plain, p[c]["ids"])[layer][p[c]["p_last"]] for c in CONDITIONS}
        xy, bare = p["XY"], chat_prompt(tok, raw["tasks"][task])

        def generate(value=None, ids=xy):
            delta = value - h["XY"] if value is not None and patch_steps == "all" else None
            return tok.decode(greedy_with_patch(plain, ids["ids"], n_tokens, eos, layer, ids["p_last"], value, delta),
                              skip_special_tokens=True)

        expected = {"clean": generate(), "bare": generate(ids=bare)}
        for cond in markers.EDITED:
            expected[cond] = generate(replacement(h, cond))
        for cond, text in expected.items():
            assert str(ds.text.sel(cell=cell, condition=cond).item()) == text, (cell, cond)
        dx, dy = h["XB"] - h["BB"], h["BY"] - h["BB"]
        power["remove_persona_sign"] += generate(h["XY"] + dx) != expected["remove_persona"]
        power["additive_sign"] += generate(h["BB"] + dx - dy) != expected["additive"]
    return ds, power


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_generation_under_edits_equals_plain_hooks(sharp_models, sharp_plain, tiny_grid_file, tiny_grid_raw, patch_steps):
    grid = load_grid(tiny_grid_file)
    _, power = check_markers(sharp_models["llama"], sharp_plain["llama"], grid, tiny_grid_raw, grid.cell_labels, 2,
                             patch_steps, 12, 5)
    assert min(power.values()) > 0, power  # a flipped sign would change some text


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_generation_of_the_toy_model_equals_plain_hooks(toy_model, toy_plain, toy_grid_raw, patch_steps):
    cells = ["pirate__weather", "robot__story"]
    ds, power = check_markers(toy_model, toy_plain, load_grid("toy"), toy_grid_raw, cells, 4, patch_steps, 12, 32)
    # Removing Delta_X makes the toy model answer as the baseline persona ("here is my honest
    # view."); adding it keeps the persona, so a flipped sign changes the text.
    assert power["remove_persona_sign"] == len(cells), power
    # The toy model speaks in persona, and loses it without the persona text.
    assert ds.any_marker.sel(condition="clean").sum() > ds.any_marker.sel(condition="bare").sum()


def test_flags_agree_with_the_text(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    grid = load_grid(tiny_grid_file)
    ds = markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, n_tokens=8), progress=False)
    assert ds.attrs["completed"] == 1 and int(ds.generated.sum()) == ds.text.size
    table = markers.summary_table(ds)
    ds = ds.isel(model=0)
    for cell in grid.cells:
        for cond in ds.condition.values:
            text = str(ds.text.sel(cell=cell.label, condition=cond).item())
            own = markers_found(text, grid.markers[cell.persona])
            assert int(ds.any_marker.sel(cell=cell.label, condition=cond)) == int(bool(own))
            assert int(ds.n_distinct.sel(cell=cell.label, condition=cond)) == len(own)
    assert [row[0] for row in table] == list(markers.CONDITIONS) and all(row[2] == 4 for row in table)


def test_bad_markers_input(loaded_models, tiny_grid_file):
    loaded = loaded_models["qwen2"]
    no_markers = grid_from_dict({
        "baseline": {"persona": "a thoughtful person", "task": "Give advice."},
        "personas": {"yoda": "Yoda"}, "tasks": {"haiku": "Write a haiku."},
    }, name="plain")
    with pytest.raises(SelectionError, match="grid 'plain' has no markers"):
        markers.run(loaded, no_markers, markers.MarkersSpec(grid="plain", layer=1), progress=False)
    grid = load_grid(tiny_grid_file)
    with pytest.raises(SelectionError, match=r"unknown marker condition\(s\) \['steered'\]"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, conditions=("clean", "steered")), progress=False)
    with pytest.raises(SelectionError, match="unknown --patch-steps 'some'"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=1, patch_steps="some"), progress=False)
    with pytest.raises(SelectionError, match=r"layer 9 out of range; allowed: 0..4"):
        markers.run(loaded, grid, markers.MarkersSpec(grid="tiny", layer=9), progress=False)


@pytest.mark.parametrize("patch_steps", ["prefill", "all"])
def test_evidence_of_every_condition_is_scored_on_the_unedited_model(toy_model, toy_plain, toy_grid_raw, patch_steps):
    """Each condition's answer (plain greedy decoding under the reference's hook) scored XY against
    BY by plain forward passes of the UNEDITED model equals the dataset's evidence; scored with the
    edit still in place, the edited conditions' values would be far off (checked: power)."""
    from reference import answer_evidence, patched_logits

    cells, layer, n_tokens = ["pirate__weather", "robot__story", "knight__breakfast"], 4, 12
    spec = markers.MarkersSpec(grid="toy", layer=layer, n_tokens=n_tokens, patch_steps=patch_steps, cells=tuple(cells))
    ds = markers.run(toy_model, load_grid("toy"), spec, progress=False).isel(model=0)
    tok, eos = toy_model.tokenizer, eos_ids(toy_model.tokenizer, toy_plain)
    worst_edited_gap = 0.0
    for cell in cells:
        persona, task = cell.split("__")
        p = {c: chat_prompt(tok, text) for c, text in user_texts(toy_grid_raw, persona, task).items()}
        h = {c: hidden_states(toy_plain, p[c]["ids"])[layer][p[c]["p_last"]] for c in CONDITIONS}
        xy, by, bare = p["XY"], p["BY"], chat_prompt(tok, toy_grid_raw["tasks"][task])
        answers = {"clean": greedy_with_patch(toy_plain, xy["ids"], n_tokens, eos, layer, xy["p_last"]),
                   "bare": greedy_with_patch(toy_plain, bare["ids"], n_tokens, eos, layer, bare["p_last"])}
        for cond in markers.EDITED:
            value = replacement(h, cond)
            delta = value - h["XY"] if patch_steps == "all" else None
            answers[cond] = greedy_with_patch(toy_plain, xy["ids"], n_tokens, eos, layer, xy["p_last"], value, delta)
        for cond, answer in answers.items():
            expected = answer_evidence(toy_plain, xy["ids"], by["ids"], answer)
            got = ds.sel(cell=cell, condition=cond)
            assert int(got.answer_length) == len(answer), (cell, cond)
            assert abs(float(got.evidence) - expected["evidence"]) < 1e-4, (cell, cond, float(got.evidence), expected)
            if cond in markers.EDITED:  # the same answer scored with the edit in the XY pass
                seq, value = xy["ids"] + answer, replacement(h, cond)
                adds = () if patch_steps == "prefill" else ((layer, len(xy["ids"]), value - h["XY"]),)
                logp = patched_logits(toy_plain, seq, layer, xy["p_last"], value, adds=adds).log_softmax(-1)
                edited = sum(float(logp[len(xy["ids"]) - 1 + t, a]) for t, a in enumerate(answer))
                by_logp = expected["reference_logp"] * len(answer)
                worst_edited_gap = max(worst_edited_gap, abs((edited - by_logp) / len(answer) - expected["evidence"]))
    assert worst_edited_gap > 100 * 1e-4, worst_edited_gap
    print(f"evidence with the edit in place off by up to {worst_edited_gap:.3f} nats/token")
    # The toy speaks in persona: its clean answers carry evidence, its bare answers do not.
    assert float(ds.evidence.sel(condition="clean").mean()) > float(ds.evidence.sel(condition="bare").mean())
