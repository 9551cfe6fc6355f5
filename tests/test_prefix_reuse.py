"""Inject and knockout run each prompt's clean prefix once and score only the window (locally);
the numbers equal whole-sequence runs and independent hooks on models with sharp logits, Gemma-2's
sliding window and final soft-capping included."""

import dataclasses

import pytest
import torch

from nnsight_persona.core import tracing
from nnsight_persona.core.batching import left_pad
from nnsight_persona.core.edits import Knockout
from nnsight_persona.studies.xu2026 import capture, inject, knockout
from nnsight_persona.core.grids import load_grid
from reference import greedy, logits_with_mask_knockout, summed_kl
from test_knockout_experiment import expected_keys
from tolerances import RESIDUAL, SCORES, assert_close_per_vector, relative_errors

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

BANDS = ((0, 2), (1, 4))
CELLS = ("engineer__haiku", "yoda__book")


def _counting(monkeypatch, name):
    """Count the calls of tracing.<name> (looked up there by the scoring functions)."""
    real, calls = getattr(tracing, name), []

    def counted(*args, **kwargs):
        out = real(*args, **kwargs)
        calls.append(out)
        return out

    monkeypatch.setattr(tracing, name, counted)
    return calls


@torch.no_grad()
@pytest.mark.parametrize("queries", knockout.QUERIES)
def test_knockout_on_shared_prefixes_equals_independent_hooks_and_the_whole_sequence_path(
        sharp_models, sharp_plain, family, tiny_grid_file, queries, monkeypatch):
    loaded, plain = sharp_models[family], sharp_plain[family]
    grid = load_grid(tiny_grid_file)
    spec = knockout.KnockoutSpec(grid="tiny", bands=BANDS, cells=CELLS, n_tokens=0, batch_size=5, queries=queries,
                                 conditions=("persona", "template_span", "baseline_persona", "none"), min_gap=-1e9)
    prefixes = _counting(monkeypatch, "prefix_cache")
    local = knockout.run(loaded, grid, spec, progress=False).isel(model=0)
    assert prefixes, "the local run did not take its prefixes from a cache"
    # Each batch runs its distinct prompts' prefixes once: at most three per cell (XY, BY and the
    # prompt of its knocked rows), never one per row.
    assert all(1 <= n <= 6 for _, n in prefixes)
    whole = knockout.run(dataclasses.replace(loaded, remote="local"), grid, spec, progress=False).isel(model=0)
    for name in ("kl", "kl_to_by", "logp_drop"):
        assert_close_per_vector(local[name].values, whole[name].values, SCORES, axis=None, what=name)
    checked = 0
    for cell in grid.select_cells(list(CELLS)):
        expected_by_cond = expected_keys(loaded.tokenizer, grid, cell)  # from character offsets
        xy = list(expected_by_cond["persona"][0])
        continuation = greedy(plain, xy, 12, loaded.pad_id)[:9]
        for cond in ("persona", "baseline_persona"):
            ids, keys = expected_by_cond[cond]
            seq = list(ids) + continuation
            start = len(ids) - 1
            query_from = start if queries == "answer" else len(ids)
            clean = plain(torch.tensor([seq])).logits[0].float()
            for band in BANDS:
                knocked = logits_with_mask_knockout(plain, seq, list(range(*band)), query_from, keys).float()
                expected = summed_kl(clean, knocked, start, 10)
                label = f"{band[0]}:{band[1]}"
                for ds in (local, whole):
                    got = float(ds.kl.sel(cell=cell.label, band=label, condition=cond))
                    assert got == pytest.approx(expected, rel=1e-3, abs=1e-4), (family, cell.label, cond, label)
                checked += expected > 0.05
    assert checked >= 4, "the knockouts barely move this model: the comparison could not tell right from wrong"


@torch.no_grad()
def test_capture_runs_each_prompt_once_and_equals_the_whole_sequence_path(sharp_models, family, tiny_grid_file,
                                                                          monkeypatch):
    """Locally the capture passes (BB, XB and BY: the XY rows are read while generating) run each
    distinct prompt once (BB is one prompt in every cell) and then only the teacher-forced
    continuation columns; the residuals equal those of whole sequences
    (the path remote runs take), at every layer, the last block's output included. (Agreement with
    plain transformers, prompt by prompt, is checked in test_capture.py.)"""
    loaded = sharp_models[family]
    grid = load_grid(tiny_grid_file)
    spec = capture.CaptureSpec(grid="tiny", layers=tuple(range(loaded.n_layers + 1)), batch_size=64, n_continuation=4)
    calls = []
    real = tracing.distinct_prefixes

    def counted(batch, prefix):
        owner, firsts = real(batch, prefix)
        calls.append((batch.input_ids.shape[0], len(firsts)))
        return owner, firsts

    monkeypatch.setattr(tracing, "distinct_prefixes", counted)
    local = capture.run(loaded, grid, spec, progress=False).isel(model=0)
    whole = capture.run(dataclasses.replace(loaded, remote="local"), grid, spec, progress=False).isel(model=0)
    n_cells = len(grid.cell_labels)
    assert calls and sum(rows for rows, _ in calls) == 3 * n_cells
    # One BB prompt for every cell: the distinct prompts are fewer than the rows.
    assert sum(distinct for _, distinct in calls) < 3 * n_cells
    r = whole.resid.values
    assert_close_per_vector(local.resid.values, r, RESIDUAL)
    # The comparison can fail: the continuation columns differ between cells at every layer.
    g = list(local.position.values).index("g1")
    assert relative_errors(r[1:, g, 0], r[1:, g, 1]).min() > 100 * RESIDUAL


def test_a_suffix_pass_blocks_the_queries_of_its_own_columns():
    """Knockout.blocked for the last q columns of a sequence takes those columns of the query
    mask (a generation step is the case where every such column is generated)."""
    keys = torch.tensor([[True, True, False, False, False, False]])
    queries = torch.tensor([[False, False, False, False, True, True]])  # queries from column 4 on
    k = Knockout(keys=keys, queries=queries, active=torch.ones(1, 1, dtype=torch.bool))
    whole = k.blocked(6, 6, 0)
    suffix = k.blocked(3, 6, 0, total_len=6)  # columns 3, 4, 5 on a cache of 3
    assert torch.equal(suffix, whole[:, 3:])
    assert not suffix[0, 0].any() and suffix[0, 1:, :2].all()
    step = k.blocked(1, 7, 0, total_len=7)  # a generated position after the prompt
    assert step[0, 0, :2].all() and not step[0, 0, 2:].any()


def test_an_edit_before_the_window_makes_the_batch_run_whole():
    batch = left_pad([[5, 6, 7, 8, 9], [5, 6, 7, 8, 9, 10]], 0)
    window = torch.arange(3, 6).repeat(2, 1)
    from nnsight_persona.core.edits import LayerWrites

    at = lambda col: [LayerWrites(1, torch.tensor([0]), torch.tensor([col]), torch.zeros(1, 4))]
    assert tracing.shared_prefix(batch, window) == 3
    assert tracing.shared_prefix(batch, window, at(3)) == 3
    assert tracing.shared_prefix(batch, window, at(2)) is None
    assert tracing.shared_prefix(batch, torch.arange(2, 5).repeat(2, 1)) is None  # not the last columns
    q = torch.zeros(2, 6, dtype=torch.bool)
    q[:, 2:] = True
    knock = Knockout(keys=torch.zeros(2, 6, dtype=torch.bool), queries=q, active=torch.ones(2, 1, dtype=torch.bool))
    assert tracing.shared_prefix(batch, window, knockout=knock) is None


def test_inject_rows_patched_at_p_last_share_prefixes_and_site_rows_inside_the_prompt_run_whole(
        sharp_models, tiny_grid_file, monkeypatch):
    loaded = sharp_models["gemma2"]
    grid = load_grid(tiny_grid_file)
    spec = inject.InjectSpec(grid="tiny", layer_sets=((2,), (1, 3)), site_layers=(2,), cells=CELLS, batch_size=6)
    prefixes = _counting(monkeypatch, "prefix_cache")
    wholes = _counting(monkeypatch, "window_kl")
    local = inject.run(loaded, grid, spec, progress=False)
    assert prefixes and wholes  # p_user_last site rows run whole, the others on shared prefixes
    remote = inject.run(dataclasses.replace(loaded, remote="local"), grid, spec, progress=False)
    for name in ("kl", "kl_site"):
        assert_close_per_vector(remote[name].values, local[name].values, SCORES, axis=None, what=name)
    assert float(local.kl.max()) > 1  # nats: a wrong prefix or a misplaced write would show
