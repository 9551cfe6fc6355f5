"""Models the benchmark runs on: the embedded toy model, a ~100M-parameter random Llama, and the
real chat model SmolLM2-135M-Instruct (the package's `smollm2` alias, fetched and converted once)."""

from __future__ import annotations

import sys
from pathlib import Path

CACHE = Path(__file__).parent / ".models"


def random_llama(name: str = "random100m", hidden: int = 768, layers: int = 12, intermediate: int = 2560,
                 vocab: int = 8000) -> str:
    """A random-weight Llama-layout chat model (99M parameters), built once and cached."""
    directory = CACHE / name
    if (directory / "config.json").exists():
        return str(directory)
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))
    from tiny_models import build_tokenizer

    tok = build_tokenizer("llama", vocab_size=vocab)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=12, num_key_value_heads=12, max_position_embeddings=1024,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return str(directory)


def resolve(model: str) -> str:
    if model == "toy":
        from nnsight_persona.models.toy import TOY_MODEL_DIR

        return str(TOY_MODEL_DIR)
    if model == "random100m":
        return random_llama()
    if model == "smollm2":
        from nnsight_persona.models.smollm2 import ensure

        return str(ensure()[0])
    return model


def load_spec(model: str, model_dir: str) -> str:
    """What `load_model` gets: the package's alias where there is one (its weights fingerprint is
    stored, so the load does not hash 538 MB inside the timed run), else the folder."""
    from nnsight_persona.models.aliases import ALIASES

    return model if model in ALIASES else model_dir


def scaled_grid(n_personas: int, n_tasks: int, directory: Path) -> str:
    """A grid of n_personas x n_tasks cells that repeats the first 4 personas x 3 tasks of the
    xu2026 long grid verbatim under new labels. Every size then has the same mix of prompt lengths
    (12, 48 and 192 cells are that block 1, 4 and 16 times), so time and memory per cell compare
    like with like: a grid whose larger sizes brought longer prompts would confound the two."""
    import yaml

    from nnsight_persona.core.grids import load_grid

    base = load_grid("xu2026-long")
    personas = list(base.personas.values())[:4]
    tasks = list(base.tasks.values())[:3]
    data = {
        "baseline": {"persona": base.baseline_persona, "task": base.baseline_task},
        "personas": {f"p{i}": personas[i % len(personas)] for i in range(n_personas)},
        "tasks": {f"t{i}": tasks[i % len(tasks)] for i in range(n_tasks)},
    }
    path = directory / f"grid-{n_personas}x{n_tasks}.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)
