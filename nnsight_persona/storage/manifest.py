"""MANIFEST.json of a results folder: which commit and command made it, and a hash of each file,
so that a folder of committed results says where it came from and a test can tell when the code
has moved on (tests/test_artifacts_current.py)."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from .provenance import _version, git_commit

NAME = "MANIFEST.json"
PATTERNS = ("*.nc", "*.png", "*.html")


def file_hashes(folder: Path) -> dict[str, str]:
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for pattern in PATTERNS for p in sorted(Path(folder).glob(pattern))
    }


def write_manifest(folder: Path, command: str | None = None) -> Path:
    """Record the commit, the command line and every result file's sha256 in folder/MANIFEST.json.

    A manifest that already lists exactly the files present is kept as it is: a rerun that found
    every step done made nothing, so the commit and command that did make the files still stand."""
    folder = Path(folder)
    path = folder / NAME
    hashes = file_hashes(folder)
    if path.exists():
        try:
            if read_manifest(folder).get("files") == hashes:
                return path
        except (OSError, ValueError):
            pass  # unreadable: written anew below
    manifest = {
        "command": command or " ".join(["nnsight-persona", *sys.argv[1:]]),
        "git_commit": git_commit(),
        "package_version": _version("nnsight-persona"),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": hashes,
    }
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def read_manifest(folder: Path) -> dict:
    return json.loads((Path(folder) / NAME).read_text(encoding="utf-8"))
