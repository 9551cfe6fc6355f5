import pytest

from nnsight_persona.core.errors import SelectionError
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.prompts import render_prompt


def test_named_positions_and_persona_span(loaded_models, family):
    tok = loaded_models[family].tokenizer
    grid = load_grid("xu2026-long")
    for cell in grid.cells[:6]:
        for cond in ("BB", "XY"):
            persona = grid.persona_text(cell, cond)
            p = render_prompt(tok, grid.user_text(cell, cond), persona)
            assert p.ids == tuple(tok(p.text, add_special_tokens=False).input_ids)
            # p_user_last is the paper's: the last token of the template rendered without the
            # generation prompt, tokenized on its own (as the paper's code does).
            messages = [{"role": "user", "content": grid.user_text(cell, cond)}]
            closed = tok.apply_chat_template(messages, add_generation_prompt=False, tokenize=False)
            closed_ids = tok(closed, add_special_tokens=False).input_ids
            assert p.p_user_last == len(closed_ids) - 1
            assert p.ids[: len(closed_ids)] == tuple(closed_ids)
            # p_user_text_last holds the user text's final character; later tokens hold none of it.
            assert tok.decode(p.ids[: p.p_user_text_last + 1]).endswith(grid.user_text(cell, cond).strip()[-3:])
            assert not tok.decode(p.ids[p.p_user_text_last + 1 :]).strip().endswith(grid.user_text(cell, cond).strip()[-3:])
            assert p.p_user_text_last < p.p_user_last < p.p_last == len(p.ids) - 1
            assert p.window_start("p_user_last") == p.window_start("p_last") == p.p_last
            assert p.window_start("g1") == p.position("g1")
            assert p.position("g1") == len(p.ids) and p.position("g2") == len(p.ids) + 1
            start, end = p.persona_span
            assert tok.decode(p.ids[start:end]).strip() == persona
            assert persona not in tok.decode(p.ids[start + 1 : end]).strip() or end - start == 1


def test_unknown_position_is_a_clear_error(loaded_models):
    p = render_prompt(loaded_models["qwen2"].tokenizer, "As Yoda, Write.", "Yoda")
    with pytest.raises(SelectionError, match="unknown position 'g3'"):
        p.position("g3")


def test_persona_missing_from_text_is_a_clear_error(loaded_models):
    with pytest.raises(SelectionError, match="persona text 'Marx' not found"):
        render_prompt(loaded_models["qwen2"].tokenizer, "As Yoda, Write.", "Marx")
