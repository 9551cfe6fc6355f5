"""Attention knockout through the kernel's mask argument, checked against independent routes."""

import nnsight
import pytest
import torch

from nnsight_persona.core.batching import left_pad
from nnsight_persona.core.edits import Knockout
from nnsight_persona.models.loading import load_model
from nnsight_persona.core.tracing import apply_edits, generate_with_edit
from reference import load_plain, logits_with_mask_knockout
from tolerances import RESIDUAL, assert_close_per_vector, relative_errors

pytestmark = pytest.mark.numeric  # two computations of one quantity (.ci/run reruns these under other rounding)

SEQS = [[5, 6, 7, 8, 9, 10, 11, 12], [20, 21, 22, 23, 24], [30, 31, 32, 33, 34, 35, 36]]
# Longer than the tiny Gemma-2's sliding window (16), whose cache then hands the kernel fewer keys.
LONG_SEQS = [list(range(40, 62)), list(range(70, 88))]


def _knockout(batch, key_span, query_from, blocks, n_blocks, rows=None, generated=True, heads=None):
    """Knock keys [a, b) (unpadded indices) out for queries >= query_from, in `blocks`, for `rows`."""
    n_rows, width = batch.input_ids.shape
    keys = torch.zeros(n_rows, width, dtype=torch.bool)
    queries = torch.zeros(n_rows, width, dtype=torch.bool)
    active = torch.zeros(n_rows, n_blocks, dtype=torch.bool)
    for r in rows if rows is not None else range(n_rows):
        pad = int(batch.pad[r])
        keys[r, pad + key_span[0] : pad + key_span[1]] = True
        queries[r, pad + query_from :] = True
        active[r, list(blocks)] = True
    return Knockout(keys=keys, queries=queries, active=active, generated=generated, heads=heads)


def _logits(loaded, batch, knockout=None, weights_block=None):
    blocks = loaded.layers()
    with loaded.lm.trace(**batch.inputs()):
        apply_edits(blocks, loaded.adapter, (), knockout)
        weights = nnsight.save(None)  # only saved names leave the trace
        if weights_block is not None:
            kernel = getattr(blocks[weights_block].self_attn.source, loaded.adapter.attention_kernel)
            weights = kernel.output[1].save()
        logits = loaded.lm.lm_head.output.save()
    return logits, weights


@pytest.fixture(params=["eager", "sdpa"])
def attn(request):
    return request.param


def _load(tiny_dirs, family, attn):
    if family == "gemma2" and attn == "sdpa":
        pytest.skip("Gemma-2 runs eager only")
    return load_model(str(tiny_dirs[family]), dtype="float32", attn=attn)


def test_empty_knockout_is_bit_identical(tiny_dirs, family, attn):
    loaded = _load(tiny_dirs, family, attn)
    batch = left_pad(SEQS, loaded.pad_id)
    clean, _ = _logits(loaded, batch)
    empty, _ = _logits(loaded, batch, _knockout(batch, (1, 1), 3, range(4), 4))
    assert torch.equal(clean, empty)


def test_only_targeted_rows_and_queries_change(tiny_dirs, family, attn):
    loaded = _load(tiny_dirs, family, attn)
    batch = left_pad(SEQS, loaded.pad_id)
    clean, _ = _logits(loaded, batch)
    knocked, _ = _logits(loaded, batch, _knockout(batch, (1, 3), 4, [1, 2], 4, rows=[0]))
    pad0 = int(batch.pad[0])
    assert torch.equal(knocked[1:], clean[1:])  # other rows
    assert torch.equal(knocked[0, : pad0 + 4], clean[0, : pad0 + 4])  # queries before the blocked ones
    assert (knocked[0, pad0 + 4 :] - clean[0, pad0 + 4 :]).abs().max() > 1e-6


def test_blocked_weights_are_zero_and_rows_sum_to_one(tiny_dirs, family):
    loaded = _load(tiny_dirs, family, "eager")
    batch = left_pad(SEQS, loaded.pad_id)
    _, weights = _logits(loaded, batch, _knockout(batch, (1, 3), 4, [2], 4), weights_block=2)
    for r in range(len(SEQS)):
        pad = int(batch.pad[r])
        assert weights[r, :, pad + 4 :, pad + 1 : pad + 3].abs().max() == 0
        assert weights[r, :, pad + 3, pad + 1 : pad + 3].abs().max() > 0  # an unblocked query still reads them
    real = batch.attention_mask.bool()
    sums = weights.sum(-1)  # [rows, heads, q]
    torch.testing.assert_close(sums.permute(0, 2, 1)[real], torch.ones_like(sums.permute(0, 2, 1)[real]))


def test_knockout_equals_an_independent_mask_hook(tiny_dirs, family):
    loaded = _load(tiny_dirs, family, "eager")
    plain = load_plain(tiny_dirs[family])
    batch = left_pad(SEQS, loaded.pad_id)
    knocked, _ = _logits(loaded, batch, _knockout(batch, (1, 3), 4, [0, 3], 4))
    for r, seq in enumerate(SEQS):
        expected = logits_with_mask_knockout(plain, seq, [0, 3], 4, [1, 2])
        assert_close_per_vector(knocked[r, int(batch.pad[r]) :], expected, RESIDUAL, what=f"row {r}")
        with torch.no_grad():  # the comparison can fail: the knockout moves the logits far past the bound
            unknocked = plain(torch.tensor([seq])).logits[0]
        assert relative_errors(unknocked, expected).max() > 10 * RESIDUAL


def test_per_head_knockout_leaves_other_heads_alone(tiny_dirs):
    loaded = _load(tiny_dirs, "llama", "eager")
    batch = left_pad(SEQS, loaded.pad_id)
    _, weights = _logits(loaded, batch, _knockout(batch, (1, 3), 4, [1], 4, heads=(2,)), weights_block=1)
    _, clean = _logits(loaded, batch, None, weights_block=1)
    assert weights[:, 2, -1, :].ne(clean[:, 2, -1, :]).any()
    for head in (0, 1, 3):
        assert torch.equal(weights[:, head], clean[:, head])


@pytest.mark.parametrize("seqs", [SEQS, LONG_SEQS], ids=["short", "past-the-sliding-window"])
def test_generation_holds_the_knockout_at_every_step(tiny_dirs, family, attn, seqs):
    """Greedy tokens generated step by step (KV cache) under the knockout equal the argmax of one
    teacher-forced pass over the same tokens under the same knockout."""
    loaded = _load(tiny_dirs, family, attn)
    SEQS = seqs
    batch = left_pad(SEQS, loaded.pad_id)
    width = batch.input_ids.shape[1]
    knockout = _knockout(batch, (1, 3), 3, [0, 1, 2], 4)
    tokens = generate_with_edit(loaded, batch, 6, knockout=knockout)
    full = left_pad([s + tokens[r].tolist()[:5] for r, s in enumerate(SEQS)], loaded.pad_id)
    logits, _ = _logits(loaded, full, _knockout(full, (1, 3), 3, [0, 1, 2], 4))
    forced = logits[:, width - 1 :].argmax(-1)
    for r in range(len(SEQS)):
        # Up to the first end-of-turn: after it, generation feeds another token (callers cut there).
        ends = [i for i, t in enumerate(tokens[r].tolist()) if t in loaded.eos_ids]
        stop = ends[0] + 1 if ends else tokens.shape[1]
        assert torch.equal(forced[r, :stop], tokens[r, :stop])
    clean_tokens = generate_with_edit(loaded, batch, 6)
    assert not torch.equal(clean_tokens, tokens)  # the knockout did change the generation


@torch.no_grad()
def test_single_head_knockout_changes_only_that_heads_attention_output(tiny_dirs, attn):
    """Rows of one batch knock out one (block, head) each (a per-row head mask); a plain forward
    pre-hook on each block's o_proj reads the concatenated head outputs: in the knocked block only
    that head's slice changes, and only at the blocked queries; earlier blocks do not change."""
    loaded = _load(tiny_dirs, "llama", attn)  # 4 query heads sharing 2 key/value heads
    config = loaded.lm._module.config
    n_heads, head_dim = config.num_attention_heads, config.hidden_size // config.num_attention_heads
    batch = left_pad(SEQS, loaded.pad_id)
    targets = [(1, 2), (2, 0), (3, 3)]  # (block, head) per row
    base = _knockout(batch, (1, 3), 4, [], 4)
    head_mask = torch.zeros(len(SEQS), 4, n_heads, dtype=torch.bool)
    active = torch.zeros(len(SEQS), 4, dtype=torch.bool)
    for r, (block, head) in enumerate(targets):
        head_mask[r, block, head] = True
        active[r, block] = True
    knockout = Knockout(keys=base.keys, queries=base.queries, active=active, head_mask=head_mask)

    def head_outputs(knock):
        seen = {}
        blocks = loaded.lm._module.model.layers
        hooks = [blocks[b].self_attn.o_proj.register_forward_pre_hook(
            lambda m, args, b=b: seen.__setitem__(b, args[0].detach().clone())) for b in range(4)]
        try:
            _logits(loaded, batch, knock)
        finally:
            for h in hooks:
                h.remove()
        return {b: x.view(*x.shape[:2], n_heads, head_dim) for b, x in seen.items()}

    clean, knocked = head_outputs(None), head_outputs(knockout)
    for r, (block, head) in enumerate(targets):
        first = int(batch.pad[r]) + 4
        for b in range(block):
            assert torch.equal(knocked[b][r], clean[b][r])
        for h in range(n_heads):
            if h != head:
                assert torch.equal(knocked[block][r, :, h], clean[block][r, :, h]), (r, h)
        assert torch.equal(knocked[block][r, :first, head], clean[block][r, :first, head])
        assert (knocked[block][r, first:, head] - clean[block][r, first:, head]).abs().max() > 1e-6
