"""Captured residuals agree with plain transformers, one prompt at a time, on every family."""

import pytest
import numpy as np
import torch

from nnsight_persona.studies.xu2026 import capture
from nnsight_persona.core.grids import load_grid
from nnsight_persona.storage.store import load_dataset, save_dataset
from reference import CONDITIONS, chat_prompt, greedy, hidden_states, user_texts
from tiny_models import MAX_TEST_PARAMS
from tolerances import RESIDUAL, assert_close_per_vector, relative_errors

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)


def _capture(loaded, grid, batch_size, n_continuation=4):
    spec = capture.CaptureSpec(
        grid="tiny", layers=tuple(range(loaded.n_layers + 1)), batch_size=batch_size, n_continuation=n_continuation
    )
    return capture.run(loaded, grid, spec, progress=False)


def test_test_models_are_tiny(loaded_models, sharp_models):
    for loaded in [*loaded_models.values(), *sharp_models.values()]:
        n = sum(p.numel() for p in loaded.lm._module.parameters())
        assert n <= MAX_TEST_PARAMS
        assert loaded.n_layers == 4 and loaded.hidden_size == 32


def test_sharp_models_are_sharp(sharp_plain, loaded_models, tiny_dirs, tiny_grid_raw):
    """The sharp test models move next-token distributions by nats when the persona changes (the
    default tiny ones by ~1e-3, where KL(p || q) and KL(q || p) cannot be told apart)."""
    from reference import load_plain

    def persona_kls(plain, tok):
        out = []
        for cell in ("yoda__haiku", "engineer__book"):
            p = {c: chat_prompt(tok, t) for c, t in user_texts(tiny_grid_raw, *cell.split("__")).items()}
            with torch.no_grad():
                a = plain(torch.tensor([p["XY"]["ids"]])).logits[0, -1].log_softmax(-1)
                b = plain(torch.tensor([p["BY"]["ids"]])).logits[0, -1].log_softmax(-1)
            out.append((float((a.exp() * (a - b)).sum()), float((b.exp() * (b - a)).sum())))
        return out

    for family, plain in sharp_plain.items():
        kls = persona_kls(plain, loaded_models[family].tokenizer)
        assert max(k for k, _ in kls) > 0.5, (family, kls)
        assert max(abs(k - r) for k, r in kls) > 0.05, (family, kls)
    dull = persona_kls(load_plain(tiny_dirs["llama"]), loaded_models["llama"].tokenizer)
    assert max(k for k, _ in dull) < 0.05


def check_against_reference(loaded, plain, grid, raw, cells, n_continuation=4):
    """The capture of `cells` equals, at every layer and position, the residuals of plain
    transformers run on one unpadded prompt at a time, at positions found by their definitions."""
    spec = capture.CaptureSpec(grid=grid.name, layers=tuple(range(loaded.n_layers + 1)), cells=tuple(cells),
                               batch_size=16, n_continuation=n_continuation)
    ds = capture.run(loaded, grid, spec, progress=False).isel(model=0)
    assert ds.attrs["completed"] == 1
    tok = loaded.tokenizer
    lengths, seen = set(), []
    for cell in cells:
        persona, task = cell.split("__")
        prompts = {c: chat_prompt(tok, text) for c, text in user_texts(raw, persona, task).items()}
        clean = greedy(plain, prompts["XY"]["ids"], n_continuation, loaded.pad_id)
        assert ds.continuation_ids.sel(cell=cell).values.tolist() == clean
        for cond in CONDITIONS:
            p = prompts[cond]
            lengths.add(len(p["ids"]))
            states = hidden_states(plain, p["ids"] + clean[:2])
            for pos in ds.position.values:
                assert int(ds.token_index.sel(position=pos, cell=cell, condition=cond)) == p[str(pos)], (cell, cond, pos)
                for layer in ds.layer.values:
                    got = torch.from_numpy(ds.resid.sel(layer=layer, position=pos, cell=cell, condition=cond).values)
                    expected = states[layer][p[str(pos)]]
                    assert_close_per_vector(got, expected, RESIDUAL, what=f"{cell} {cond} {pos} layer {layer}")
                    seen.append(expected)
    assert len(lengths) > 2  # the batch really mixed prompt lengths
    return seen


def test_capture_equals_plain_transformers_per_prompt(sharp_models, sharp_plain, family, tiny_grid_file, tiny_grid_raw):
    grid = load_grid(tiny_grid_file)
    check_against_reference(sharp_models[family], sharp_plain[family], grid, tiny_grid_raw, grid.cell_labels)


def test_capture_of_the_toy_model_equals_plain_transformers(toy_model, toy_plain, toy_grid_raw):
    grid = load_grid("toy")
    seen = check_against_reference(toy_model, toy_plain, grid, toy_grid_raw, ["pirate__weather", "robot__story"])
    # Residual norms of a trained model grow with depth: a layer read one off is far from the right one.
    assert max(float(v.norm()) for v in seen) > 50


def test_batching_never_shifts_a_position(loaded_models, family, tiny_grid_file):
    loaded = loaded_models[family]
    grid = load_grid(tiny_grid_file)
    one = _capture(loaded, grid, batch_size=1)
    many = _capture(loaded, grid, batch_size=16)
    assert_close_per_vector(many.resid.values, one.resid.values, RESIDUAL)  # padded vs unpadded
    # The comparison can fail: neighbouring positions hold residuals far apart for the bound.
    r = one.resid.values
    assert relative_errors(r[0, 1:, 0], r[0, 1:, 1]).max() > 100 * RESIDUAL


def test_netcdf_round_trip_is_identical(loaded_models, tiny_grid_file, tmp_path):
    ds = _capture(loaded_models["llama"], load_grid(tiny_grid_file), batch_size=8)
    path = save_dataset(ds, tmp_path / "capture.nc")
    back = load_dataset(path)
    assert back.identical(ds)
    assert back.attrs["model_id"] == ds.attrs["model_id"]
    assert "grid_definition" in back.attrs["spec"]
    assert str(back.continuation.values[0, 0]) == loaded_models["llama"].tokenizer.decode(
        back.continuation_ids.values[0, 0]
    )


def test_interrupted_capture_is_marked_incomplete(loaded_models, tiny_grid_file, monkeypatch):
    loaded = loaded_models["qwen2"]
    calls = {"n": 0}

    def flaky_version(real):
        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(*args, **kwargs)
        return flaky

    for name in ("read_residuals", "read_residuals_on_prefix"):  # remote and local paths
        monkeypatch.setattr(capture, name, flaky_version(getattr(capture, name)))
    ds = _capture(loaded, load_grid(tiny_grid_file), batch_size=4)
    assert ds.attrs["completed"] == 0
    # Rows are (cell, condition) prompts. The XY rows are read while generating, before the
    # capture passes, so all of them are kept; of the others the first chunk's 4 are kept whole,
    # every other row is empty.
    missing = np.isnan(ds.resid.values[0]).all(axis=(0, 1, -1))
    assert (missing == np.isnan(ds.resid.values[0]).any(axis=(0, 1, -1))).all()
    xy = list(ds.condition.values).index("XY")
    assert not missing[:, xy].any()
    others = np.delete(missing, xy, axis=1)
    assert (~others).sum() == 4 and others.sum() == others.size - 4


def test_capture_batches_prompts_of_similar_length(loaded_models, tiny_grid_file, monkeypatch):
    """Rows are batched shortest first, so a pass pads each row only to its neighbours' length:
    the token-forwards of the capture passes equal those of length-sorted chunks, fewer than
    the grid's (cell, condition) order would run."""
    loaded = loaded_models["llama"]
    grid = load_grid(tiny_grid_file)
    widths = []

    def counting(real):
        def counted(loaded_, batch, *args, **kwargs):
            widths.append(tuple(batch.input_ids.shape))
            return real(loaded_, batch, *args, **kwargs)
        return counted

    for name in ("read_residuals", "read_residuals_on_prefix"):  # remote and local paths
        monkeypatch.setattr(capture, name, counting(getattr(capture, name)))
    ds = _capture(loaded, grid, batch_size=4)
    xy = list(ds.condition.values).index("XY")  # XY rows are read while generating, not in capture passes
    lengths = [len(loaded.tokenizer(str(t), add_special_tokens=False).input_ids) + 2
               for t in np.delete(ds.prompt_text.values[0], xy, axis=-1).ravel()]  # + the teacher-forced g1, g2
    cost = lambda ls: sum(len(ls[k:k + 4]) * max(ls[k:k + 4]) for k in range(0, len(ls), 4))
    assert sum(r * w for r, w in widths) == cost(sorted(lengths))
    assert cost(sorted(lengths)) < cost(lengths)
