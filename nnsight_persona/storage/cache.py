"""The user's model cache: where built models live, and how an entry is published whole or not at all.

An entry is a folder ``<root>/models/<name>``. It is built in a temporary folder next to it and
renamed into place only after its completion marker (a JSON file written last) is in it; a folder
without a marker that matches what the caller expects (a half-copied or older entry) is never
used: ``valid_marker`` returns None for it and the builder discards it.

The root is ``$NNSIGHT_PERSONA_CACHE`` if set, else ``$XDG_CACHE_HOME/nnsight-persona``, else
``~/.cache/nnsight-persona``. Nothing heavy is imported here.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

CACHE_ENV = "NNSIGHT_PERSONA_CACHE"
MARKER = "nnsight-persona-complete.json"
_BUILDING = ".building-"


def cache_root() -> Path:
    explicit = os.environ.get(CACHE_ENV)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "nnsight-persona"


def entry_dir(name: str) -> Path:
    return cache_root() / "models" / name


def valid_marker(directory: Path, expected: dict) -> dict | None:
    """The completion marker of `directory` if it exists, parses, holds every key of `expected`
    with the same value, and every file it lists is there with the listed size; else None."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(marker, dict) or any(marker.get(k) != v for k, v in expected.items()):
        return None
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return None
    for name, size in files.items():
        try:
            if (directory / name).stat().st_size != size:
                return None
        except OSError:
            return None
    return marker


def write_marker(directory: Path, content: dict) -> dict:
    """Record every file of `directory` with its size, plus `content`; written last of all."""
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MARKER}
    marker = {**content, "files": files}
    tmp = directory / (MARKER + ".tmp")
    tmp.write_text(json.dumps(marker, indent=1))
    os.replace(tmp, directory / MARKER)
    return marker


def weights_fingerprint(directory: Path) -> str:
    """A content hash of a model folder's safetensors files (sorted by name, read in chunks)."""
    h = hashlib.sha256()
    for f in sorted(Path(directory).glob("*.safetensors")):
        with open(f, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 22), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def discard(directory: Path) -> None:
    """Remove an entry that is not valid: renamed aside first, so it is gone from its place at once."""
    if not directory.exists():
        return
    aside = directory.with_name(f"{_prefix(directory)}{os.getpid()}-discard-{os.urandom(4).hex()}")
    try:
        directory.rename(aside)
    except OSError:
        aside = directory
    shutil.rmtree(aside, ignore_errors=True)


def _prefix(target: Path) -> str:
    """Temporary folders of `target`: hidden siblings named after it and the building process."""
    return f".{target.name}{_BUILDING}"


def _remove_stale_builds(target: Path) -> None:
    """Temporary folders left by builds whose process no longer runs (killed mid-build)."""
    prefix = _prefix(target)
    for path in target.parent.glob(prefix + "*"):
        pid = path.name[len(prefix):].split("-")[0]
        if not pid.isdigit() or not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


@contextlib.contextmanager
def building(target: Path):
    """Yield an empty folder next to `target` to build an entry in. When the body returns, the
    folder (which must hold the marker by then) is renamed to `target`, which must not exist
    (`discard` an invalid entry first); when it raises, the folder is removed. Either way nothing
    half-written is ever at `target`."""
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target)
    work = Path(tempfile.mkdtemp(prefix=f"{_prefix(target)}{os.getpid()}-", dir=target.parent))
    umask = os.umask(0)
    os.umask(umask)
    work.chmod(0o777 & ~umask)  # mkdtemp's folder is private; a cache entry is an ordinary folder
    try:
        yield work
        if not (work / MARKER).is_file():
            raise RuntimeError(f"internal error: the build in {work} wrote no completion marker")
        try:
            os.rename(work, target)
        except OSError:
            if not (target / MARKER).is_file():  # not a concurrent build that finished first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)


def folder_size(directory: Path) -> int:
    return sum(p.stat().st_size for p in Path(directory).rglob("*") if p.is_file())
