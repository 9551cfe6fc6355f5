from click.testing import CliRunner
from transformers import LlamaConfig

from nnsight_persona.cli import main
from nnsight_persona.memory import auto_batch_size, row_bytes
from nnsight_persona.store import load_dataset, spec_of

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
