"""``python -m nnsight_persona.models.toy train|evaluate``."""

from .cli import toy

toy(prog_name="python -m nnsight_persona.models.toy")
