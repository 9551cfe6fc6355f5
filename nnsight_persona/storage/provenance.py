"""Provenance attributes every dataset carries: what ran, on what, with which versions."""

from __future__ import annotations

import json
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def git_commit() -> str:
    """The package checkout's commit (with '+dirty' for local changes), or 'unknown' when installed."""
    root = Path(__file__).resolve().parents[2]
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        # Outputs written into the checkout (artifacts/, runs/) do not make the code dirty.
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":!artifacts", ":!runs"],
            cwd=root, capture_output=True, text=True, timeout=5,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# Files made before p_user_last took the paper's definition lack this attr; compare refuses them.
POSITION_CONVENTION = (
    "p_user_last = last token of the chat template without the generation prompt (the paper's); "
    "KL windows start at max(probe, p_last)"
)


def provenance_attrs(loaded, experiment: str, spec: dict) -> dict:
    """netCDF-safe attrs (str and numbers only) describing a run of `experiment` on `loaded`."""
    return {
        "experiment": experiment,
        "model_id": loaded.model_id,
        "model_revision": loaded.revision,
        "model_family": loaded.family,
        "dtype": loaded.dtype,
        "n_layers": loaded.n_layers,
        "layer_convention": (
            "layer L = hidden_states[L] of transformers (0 = embeddings, L = input of block L); "
            "layer n_layers = last block output before the final norm"
        ),
        "position_convention": POSITION_CONVENTION,
        "package_version": _version("nnsight-persona"),
        "nnsight_version": _version("nnsight"),
        "transformers_version": _version("transformers"),
        "torch_version": _version("torch"),
        "git_commit": git_commit(),
        "spec": json.dumps(spec, sort_keys=True),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "completed": 0,
    }

