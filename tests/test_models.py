import pytest
import torch

from nnsight_persona.core.errors import ModelError
from nnsight_persona.models.loading import load_model
from nnsight_persona.core.sites import adapter_for


def test_dtype_defaults_follow_the_family(tiny_dirs):
    assert load_model(str(tiny_dirs["qwen2"])).dtype == "bfloat16"
    assert load_model(str(tiny_dirs["gemma2"])).dtype == "float32"
    loaded = load_model(str(tiny_dirs["llama"]))
    assert loaded.dtype == "float32"
    assert next(loaded.lm._module.parameters()).dtype == torch.float32


def test_unsupported_layout_is_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=16, n_positions=8))
    with pytest.raises(ModelError, match="unsupported layout"):
        adapter_for(gpt2)


def test_unknown_dtype_and_missing_model(tmp_path):
    with pytest.raises(ModelError, match="unknown dtype 'float8'"):
        load_model("toy", dtype="float8")
    with pytest.raises(ModelError, match="cannot load model"):
        load_model(str(tmp_path))
