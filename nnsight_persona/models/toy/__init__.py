"""A small embedded chat model that really has personas.

``TOY_MODEL_DIR`` holds a trained ``LlamaForCausalLM`` (8 layers, hidden 128)
and its tokenizer with a chat template; load it with ``AutoModelForCausalLM``
and ``AutoTokenizer``. See docs/toy-model.md. Nothing heavy is imported here.
"""

from pathlib import Path

TOY_MODEL_DIR = Path(__file__).resolve().parent / "weights"

__all__ = ["TOY_MODEL_DIR"]
