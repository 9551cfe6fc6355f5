"""Model configs without weights, for `plan`: the configs shipped in configs/ (transcribed from the
public config.json of each hub model), a config JSON file, or the config of a model folder, an
alias or a hub id (as preflight reads it).

Each shipped file is named after its hub model (`gemma-2-2b-it.json` for google/gemma-2-2b-it)
and keeps the hub id in `_name_or_path`, so `--model google/gemma-2-2b-it` finds it offline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..core.errors import ModelError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass(frozen=True)
class ModelConfig:
    """A model's config and where it came from; `folder`: the model folder that holds it (its
    tokenizer is then the model's own), None for a config file."""

    config: object  # a transformers PretrainedConfig
    model_id: str
    source: str
    folder: str | None = None


def shipped_configs() -> dict[str, Path]:
    """Hub id -> shipped config file."""
    return {json.loads(path.read_text())["_name_or_path"]: path for path in sorted(CONFIG_DIR.glob("*.json"))}


def config_from_json(path: Path, source: str | None = None) -> ModelConfig:
    from transformers import AutoConfig

    try:
        values = json.loads(Path(path).read_text())
        config = AutoConfig.for_model(**values)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"cannot read the model config {path}: {exc}") from None
    return ModelConfig(config, values.get("_name_or_path") or Path(path).stem, source or str(path))


def model_config(spec: str) -> ModelConfig:
    """The config of `spec`: a config JSON file, a shipped config (by hub id or file stem), or a
    model folder, alias or hub id whose config.json can be read here."""
    from transformers import AutoConfig

    from .loading import resolve_model_path

    path = Path(spec)
    if path.suffix == ".json" and path.is_file():
        return config_from_json(path)
    shipped = shipped_configs()
    by_stem = {p.stem: p for p in shipped.values()}
    if spec in shipped or spec in by_stem:
        file = shipped.get(spec) or by_stem[spec]
        return config_from_json(file, f"the shipped config {file.name} (transcribed from the hub's config.json)")
    try:
        folder = resolve_model_path(spec)
        config = AutoConfig.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - a hub id offline, a folder without config.json
        raise ModelError(
            f"cannot read the config of model {spec!r} ({exc}); give a config JSON file, a model folder, or one "
            f"of the shipped configs: {sorted(shipped)}"
        ) from None
    return ModelConfig(config, spec, f"{folder}/config.json", folder if Path(folder).is_dir() else None)
