"""vs-edit on the toy model, against plain transformers with torch hooks: coef 0 is the clean
(bare) generation; the one-site condition is the bare prompt with Delta_X (computed here from the
XB and BB prompts) added at p_last in the prefill only; steering at every response step adds
exactly c x |Delta_X| x v/|v| (or c x Delta_X) at hidden_states[L] from the last prompt token on
and nothing before; the persona prompt is plain greedy decoding of the XY prompt."""

import numpy as np
import pytest
import torch

from nnsight_persona.core.batching import left_pad
from nnsight_persona.studies.vectors import extract, vs_edit
from nnsight_persona.studies.vectors.steer import steering_edit
from nnsight_persona.studies.vectors.traits import load_trait
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.tracing import generate_with_edit
from reference import hidden_states
from tolerances import RESIDUAL, assert_close_per_vector

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

LAYER = 4
N_TOKENS = 12
COEFS = (0.0, 1.0, 3.0)


@pytest.fixture(scope="module")
def grid():
    return load_grid("toy")


@pytest.fixture(scope="module")
def vectors(toy):
    spec = extract.ExtractSpec(traits=("pirate",), layers=(2, LAYER), n_tokens=16, n_questions=3, batch_size=6,
                               keep="all")
    return extract.run(toy, [load_trait("pirate")], spec, progress=False)


@pytest.fixture(scope="module")
def result(toy, grid, vectors):
    spec = vs_edit.VsEditSpec(grid="toy", personas=("pirate",), layers=(LAYER,), coefs=COEFS, n_tokens=N_TOKENS,
                              batch_size=4)
    return vs_edit.run(toy, grid, [load_trait("pirate")], vectors, spec, progress=False).isel(model=0)


def _ids(tok, user):
    text = tok.apply_chat_template([{"role": "user", "content": user}], add_generation_prompt=True, tokenize=False)
    return tok(text, add_special_tokens=False).input_ids


def _delta_x(plain, tok, grid, cell):
    """h_XB - h_BB at the last prompt token and LAYER, by plain transformers."""
    xb = hidden_states(plain, _ids(tok, grid.user_text(cell, "XB")))[LAYER][-1]
    bb = hidden_states(plain, _ids(tok, grid.user_text(cell, "BB")))[LAYER][-1]
    return xb - bb


@torch.no_grad()
def _hooked_greedy(plain, ids, n, eos, vec=None, every_step=False):
    """Greedy decoding without a cache: each step a full forward pass, `vec` added to the input
    of block LAYER (= hidden_states[LAYER]) at the last prompt position (and, every_step, at every
    later position) by a forward pre-hook. Cut at the first end-of-turn token."""
    start = len(ids)

    def pre(module, args, kwargs):
        h = (kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]).clone()
        if every_step:
            h[0, start - 1:] += vec
        else:
            h[0, start - 1] += vec
        if "hidden_states" in kwargs:
            return args, {**kwargs, "hidden_states": h}
        return (h, *args[1:]), kwargs

    handle = plain.model.layers[LAYER].register_forward_pre_hook(pre, with_kwargs=True) if vec is not None else None
    seq = list(ids)
    try:
        for _ in range(n):
            seq.append(int(plain(torch.tensor([seq])).logits[0, -1].argmax()))
    finally:
        if handle is not None:
            handle.remove()
    out = seq[start:]
    return out[: next((i for i, t in enumerate(out) if t in eos), len(out))]


def _answer(ids_row):
    return [int(t) for t in ids_row if t >= 0]


def test_coef_zero_is_the_clean_bare_generation(result, grid, toy, plain):
    bare = result.ref_answer_ids.sel(reference="bare", layer=LAYER)
    eos = set(toy.eos_ids)
    for cell in result.cell.values.tolist():
        want = _hooked_greedy(plain, _ids(toy.tokenizer, grid.tasks[grid.cell(cell).task]), N_TOKENS, eos)
        assert _answer(bare.sel(cell=cell).values) == want, cell
        for cond in result.condition.values.tolist():
            got = _answer(result.answer_ids.sel(condition=cond, coef=0.0, layer=LAYER, cell=cell).values)
            assert got == want, (cond, cell)
    # The persona prompt (the ceiling) is plain greedy decoding of the XY prompt.
    for cell in result.cell.values.tolist():
        c = grid.cell(cell)
        want = _hooked_greedy(plain, _ids(toy.tokenizer, grid.user_text(c, "XY")), N_TOKENS, eos)
        assert _answer(result.ref_answer_ids.sel(reference="prompted", layer=LAYER, cell=cell).values) == want


def test_one_site_is_delta_x_added_at_p_last_in_the_prefill_only(result, grid, toy, plain):
    eos = set(toy.eos_ids)
    changed = 0
    for cell in result.cell.values.tolist():
        c = grid.cell(cell)
        dx = _delta_x(plain, toy.tokenizer, grid, c)
        assert float(result.delta_x_norm.sel(layer=LAYER, cell=cell)) == pytest.approx(float(dx.norm()), rel=1e-4)
        assert float(dx.norm()) > 1.0
        bare_ids = _ids(toy.tokenizer, grid.tasks[c.task])
        want = _hooked_greedy(plain, bare_ids, N_TOKENS, eos, dx, every_step=False)
        got = _answer(result.ref_answer_ids.sel(reference="one_site", layer=LAYER, cell=cell).values)
        assert got == want, cell
        # Delta_X at every step (coef 1) is another run: the prefill-only edit is not it.
        every = _hooked_greedy(plain, bare_ids, N_TOKENS, eos, dx, every_step=True)
        assert _answer(result.answer_ids.sel(condition="delta_x", coef=1.0, layer=LAYER, cell=cell).values) == every
        changed += got != _hooked_greedy(plain, bare_ids, N_TOKENS, eos)
    assert changed  # the edit moves at least one answer


def test_steering_at_every_step_adds_c_times_the_scaled_vector(result, grid, toy, plain, vectors):
    eos = set(toy.eos_ids)
    v = torch.from_numpy(vectors.vector.sel(trait="pirate", layer=LAYER, token_set="response_avg")
                         .isel(model=0, checkpoint=0).values)
    for cell in result.cell.values.tolist():
        c = grid.cell(cell)
        dx = _delta_x(plain, toy.tokenizer, grid, c)
        bare_ids = _ids(toy.tokenizer, grid.tasks[c.task])
        for coef in COEFS[1:]:
            added = coef * dx.norm() * v / v.norm()
            want = _hooked_greedy(plain, bare_ids, N_TOKENS, eos, added, every_step=True)
            got = _answer(result.answer_ids.sel(condition="vector", coef=coef, layer=LAYER, cell=cell).values)
            assert got == want, (cell, coef)
            assert float(result.added_norm.sel(condition="vector", coef=coef, layer=LAYER, cell=cell)) == \
                pytest.approx(coef * float(dx.norm()), rel=1e-4)
    # coef 1: the persona vector at the one-site edit's size.
    np.testing.assert_allclose(result.added_norm.sel(condition="vector", coef=1.0).values,
                               result.ref_added_norm.sel(reference="one_site").values, rtol=1e-5)


def test_the_edits_change_hidden_states_L_exactly_where_they_should(toy, plain, grid):
    """A plain pre-hook records the input of block LAYER while the package generates under the
    one-site edit and the every-step steering edit; plain transformers, unedited, on the tokens
    generated give the difference: the vector at p_last only (one-site), from p_last on (steering)."""
    ids = [_ids(toy.tokenizer, grid.tasks[t]) for t in ("weather", "story")]
    batch = left_pad(ids, toy.pad_id)
    vec = torch.randn(toy.hidden_size, generator=torch.Generator().manual_seed(0)) * 2.0
    values = torch.stack([vec, -vec])
    for name, edit in (("one_site", vs_edit.one_site_edit(batch, LAYER, values)),
                       ("steer", steering_edit(batch, LAYER, values, "response"))):
        seen = []
        handle = toy.lm._module.model.layers[LAYER].register_forward_pre_hook(lambda m, args, kwargs: seen.append(
            (kwargs.get("hidden_states", args[0] if args else None)).detach().clone()), with_kwargs=True)
        try:
            tokens = generate_with_edit(toy, batch, 5, edit)
        finally:
            handle.remove()
        got_all = torch.cat(seen, dim=1)
        for r, prompt in enumerate(ids):
            seq = prompt + tokens[r, :4].tolist()
            clean = hidden_states(plain, seq)[LAYER]
            got = got_all[r, int(batch.pad[r]):]
            expected = torch.zeros_like(got)
            n = len(prompt)
            if name == "one_site":
                expected[n - 1] = values[r]
            else:
                expected[n - 1:] = values[r]
            # padded and cached generation against unpadded plain forwards: per position, relative
            assert_close_per_vector(got, clean + expected, RESIDUAL, what=f"{name} row {r}")


def test_bad_inputs_are_one_line_errors(toy, grid, vectors):
    from nnsight_persona.core.errors import SelectionError

    spec = vs_edit.VsEditSpec(grid="toy", personas=("knight",), layers=(LAYER,))
    with pytest.raises(SelectionError, match="no trait \\['knight'\\]"):
        vs_edit.check_spec(spec, grid, toy.n_layers, vectors)
    with pytest.raises(SelectionError, match="no layer \\[3\\]"):
        vs_edit.check_spec(vs_edit.VsEditSpec(grid="toy", personas=("pirate",), layers=(3,)), grid, toy.n_layers, vectors)
    with pytest.raises(SelectionError, match="allowed"):
        vs_edit.check_spec(vs_edit.VsEditSpec(grid="toy", personas=("pirate",), layers=(LAYER,), conditions=("x",)),
                           grid, toy.n_layers, vectors)


def test_cli_writes_the_dataset_and_figure_and_refuses_bad_inputs(tmp_path, vectors):
    from click.testing import CliRunner

    from nnsight_persona.cli import main
    from nnsight_persona.storage.store import load_dataset, save_dataset

    path = save_dataset(vectors, tmp_path / "v.nc")
    out = tmp_path / "e.nc"
    args = ["vectors", "vs-edit", "--vectors", str(path), "--layers", "2,4", "--coefs", "0,1", "--n-tokens", "6",
            "--batch-size", "8", "--no-progress"]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ds = load_dataset(out)
    assert ds.attrs["experiment"] == "vectors-vs-edit" and ds.persona.values.tolist() == ["pirate"] * 3
    assert ds.layer.values.tolist() == [2, 4] and (tmp_path / "e.png").exists()
    assert "one_site" in result.output
    bad = CliRunner().invoke(main, [*args, "--personas", "knight", "--out", str(tmp_path / "x.nc")])
    assert bad.exit_code == 1 and "no trait ['knight']" in bad.output and len(bad.output.strip().splitlines()) == 1
    other = vectors.assign_attrs(model_id="smollm2")
    other_path = save_dataset(other, tmp_path / "other.nc")
    bad = CliRunner().invoke(main, ["vectors", "vs-edit", "--vectors", str(other_path), "--layers", "4",
                                    "--out", str(tmp_path / "y.nc"), "--no-progress"])
    assert bad.exit_code == 1 and "made with model 'smollm2'" in bad.output
