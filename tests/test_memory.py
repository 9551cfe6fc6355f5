import pytest
import torch
from click.testing import CliRunner
from transformers import LlamaConfig

from nnsight_persona.cli import main
from nnsight_persona.studies.xu2026 import capture, substitute
from nnsight_persona.core.grids import load_grid
from nnsight_persona.core.memory import auto_batch_size, malloc_in_use, row_bytes
from nnsight_persona.models.loading import load_model
from nnsight_persona.storage.store import load_dataset, spec_of
from nnsight_persona.models.toy import TOY_MODEL_DIR

GEMMA_LIKE = LlamaConfig(vocab_size=256_000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26,
                         num_attention_heads=8, num_key_value_heads=4, head_dim=256)


def test_row_estimate_covers_the_logits_and_grows_with_length():
    one = row_bytes(GEMMA_LIKE, "float32", 100)
    assert one >= 100 * 256_000 * 4  # the float32 logits alone
    assert row_bytes(GEMMA_LIKE, "float32", 200) > 2 * one * 0.99
    assert row_bytes(GEMMA_LIKE, "bfloat16", 100) < one


def test_auto_batch_size_fits_the_budget_and_its_bounds():
    per_row = row_bytes(GEMMA_LIKE, "float32", 100)
    for free in (10 * 2**30, 80 * 2**30, 140 * 2**30):
        b = auto_batch_size(GEMMA_LIKE, "float32", 100, free)
        assert 1 <= b <= 256 and b * per_row <= 0.5 * free < (b + 1) * per_row or b == 256
    assert auto_batch_size(GEMMA_LIKE, "float32", 100, free=1) == 1
    assert auto_batch_size(GEMMA_LIKE, "float32", 100, 140 * 2**30) > auto_batch_size(GEMMA_LIKE, "float32", 100, 10 * 2**30)


def test_cli_resolves_auto_and_records_the_number(tiny_dirs, tiny_grid_file, tmp_path):
    out = tmp_path / "cap.nc"
    result = CliRunner().invoke(main, ["capture", "--model", str(tiny_dirs["llama"]), "--grid", str(tiny_grid_file),
                                       "--layers", "1", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert spec_of(load_dataset(out))["batch_size"] == 32  # a CPU caps auto at 32
    bad = CliRunner().invoke(main, ["capture", "--model", str(tiny_dirs["llama"]), "--batch-size", "0"])
    assert bad.exit_code != 0 and "'0' is neither 'auto' nor a whole number" in bad.output


def test_malloc_in_use_sees_tensors_come_and_go():
    before = malloc_in_use()
    if before is None:
        pytest.skip("no glibc mallinfo2 here")
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB
    held = malloc_in_use()
    del big
    after = malloc_in_use()
    assert held - before >= 63 * 2**20
    assert held - after >= 63 * 2**20


def _replicated_grid(path, n_personas, n_tasks):
    """n_personas x n_tasks cells that all render to prompts of one length: every batch of a run
    has the same shape, so whatever a run holds between batches must not change with their number."""
    personas = "\n".join(f"  p{i}: a pirate" for i in range(n_personas))
    tasks = "\n".join(f"  t{j}: describe the weather today." for j in range(n_tasks))
    path.write_text(f"baseline: {{persona: a thoughtful person, task: give advice.}}\n"
                    f"personas:\n{personas}\ntasks:\n{tasks}\n")
    return load_grid(path)


def test_sweeps_hold_no_more_memory_after_many_batches(tmp_path):
    """Between batches the live C heap (tensors, arrays) stays where the first batches left it:
    a run of 36 capture batches (the XY rows are read while generating) and over a hundred
    substitution batches keeps nothing per batch. One batch's
    logits alone are 4 x 40 x 1200 x 4 bytes = 0.7 MiB, so keeping any batch's tensors would show.
    The run is made twice and the second one is measured: torch's CPU kernels keep some state for
    each input shape the first time they meet it (bounded; it shows without nnsight too)."""
    if malloc_in_use() is None:
        pytest.skip("no glibc mallinfo2 here")
    loaded = load_model(str(TOY_MODEL_DIR), dtype="float32")
    grid = _replicated_grid(tmp_path / "grid.yaml", 8, 6)
    for _ in range(2):
        seen = {"capture": [], "substitute": []}
        cap = capture.run(loaded, grid, capture.CaptureSpec(grid="g", layers=(2, 4), batch_size=4), progress=False,
                          checkpoint=lambda partial: seen["capture"].append(malloc_in_use()))
        spec = substitute.SubstituteSpec(grid="g", layers=(2, 4), positions=("p_last", "g1"), batch_size=4)
        ds = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False,
                            checkpoint=lambda partial: seen["substitute"].append(malloc_in_use()))
    # The sweep's patched passes hold several suffixes per whole-sequence row, so it makes fewer,
    # larger batches than capture does; still well over a hundred.
    assert len(seen["capture"]) == 36 and len(seen["substitute"]) >= 100 and ds.attrs["completed"] == 1
    for name, trace in seen.items():
        assert max(trace) - trace[0] < 2**19, (name, [(b - trace[0]) / 2**20 for b in trace[::8]])
