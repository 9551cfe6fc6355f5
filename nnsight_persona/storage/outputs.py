"""What a run may do with its output file: check it can be written, lock it against a second run,
and decide from what is already there whether to compute, resume, reuse or refuse.

The policy (docs/reliability.md):
- nothing at the path: compute;
- an unfinished result of the same computation: resume it (`fresh`: start over);
- a finished result of the same computation: it is done; reuse it, compute nothing;
- anything else (another spec, experiment, model, dtype or weights; an unreadable file): refuse,
  unless `overwrite`. A finished file being overwritten is kept until the new result is complete.

"The same computation" is the same experiment and spec (minus batch sizes, which only chunk the
work), on the same model id, dtype and weights (their fingerprint for a local folder).
"""

from __future__ import annotations

import os
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import xarray as xr

from ..core.errors import OutputError, ResultFileError
from .store import load_dataset, model_differences, remove_stale_temps, spec_differences


def check_writable(path: str | Path) -> Path:
    """Create `path`'s folder if needed and check a file can be written there, before any work.
    Raises OutputError naming the path and the reason."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"cannot write {path}: it is a folder; give a file name such as {path / 'result.nc'}")
    for ancestor in path.parents:
        if ancestor.exists() or ancestor.is_symlink():
            if not ancestor.is_dir():
                raise OutputError(f"cannot write {path}: {ancestor} is a file, not a folder")
            break
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot write {path}: cannot create the folder {path.parent} ({exc.strerror})") from None
    if not os.access(path.parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write {path}: the folder {path.parent} is not writable")
    return path


def lock_path(path: Path) -> Path:
    """The lock file of an output: hidden, next to it, removed when the run ends."""
    return path.with_name(f".{path.name}.lock")


def _holder(lock: Path) -> int | None:
    """The PID recorded in a lock file, if that process is alive."""
    try:
        pid = int(lock.read_text().split()[0])
        os.kill(pid, 0)
    except PermissionError:
        return pid
    except (OSError, ValueError, IndexError):
        return None
    return pid


@contextmanager
def output_lock(path: str | Path):
    """Hold an exclusive lock on the output `path` for the block; a second holder (another process
    or another run in this one) is refused at once with OutputError naming the holder's PID. The
    operating system releases the lock when its process dies, even by SIGKILL, so a killed run
    never leaves a stale lock. Temp files of killed writers are removed once the lock is held."""
    from filelock import FileLock, Timeout

    path = Path(path)
    lock = lock_path(path)

    def record_pid(fd: int) -> None:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)

    holder = FileLock(str(lock), timeout=0, on_acquired=record_pid)
    try:
        holder.acquire()
    except Timeout:
        pid = _holder(lock)
        who = f"another run (PID {pid})" if pid is not None else "another run"
        raise OutputError(f"{path} is in use by {who}; wait for it to finish or choose another output") from None
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None
    try:
        remove_stale_temps(path)
        yield path
    finally:
        with suppress(OSError):  # unlinked while held: a waiting peer sees the inode is gone and retries
            lock.unlink()
        holder.release()


@dataclass
class Target:
    """An output file and what the run does with it.

    state: 'new' (nothing there), 'resume' (an unfinished result of the same computation, in
    `previous`), 'fresh' (the same, started over), 'done' (the finished result of the same
    computation, in `existing`), 'replace' (anything else, with overwrite).
    protect: a finished file is there; it must not be replaced by an unfinished one."""

    path: Path
    state: str
    previous: xr.Dataset | None = None
    existing: xr.Dataset | None = None
    protect: bool = False

    @property
    def done(self) -> bool:
        return self.state == "done"


def describe(ds: xr.Dataset) -> str:
    finished = "finished" if ds.attrs.get("completed") else "unfinished"
    made = f", made {ds.attrs['created']}" if ds.attrs.get("created") else ""
    return f"a {finished} {ds.attrs.get('experiment', 'unknown')} result{made}"


def plan_output(path: str | Path, experiment: str, spec: dict, model_id: str, dtype: str | None = None,
                revision=None, overwrite: bool = False, fresh: bool = False) -> Target:
    """Decide what a run of (experiment, spec) on (model_id, dtype, weights `revision`) does with
    `path`, from what is there (see the module docstring). Raises OutputError when it refuses.
    `revision` may be a function (a fingerprint is computed only when a file needs comparing)."""
    path = Path(path)
    if not path.exists():
        return Target(path, "new")
    try:
        ds = load_dataset(path)
    except ResultFileError as exc:
        if overwrite:
            return Target(path, "replace")
        raise OutputError(f"{exc}; --overwrite replaces it, or choose another output") from None
    finished = bool(ds.attrs.get("completed"))
    if overwrite:
        return Target(path, "replace", protect=finished)
    differences = spec_differences(ds, experiment, spec) or model_differences(ds, model_id, dtype, revision)
    if not differences:
        if finished:
            return Target(path, "done", existing=ds)
        return Target(path, "fresh") if fresh else Target(path, "resume", previous=ds)
    if differences == ["experiment"]:
        what = f"{describe(ds)}, not a {experiment} one"
    else:
        what = f"{describe(ds)} that differs from this run in {', '.join(differences)}"
    raise OutputError(f"{path} already holds {what}; --overwrite replaces it, or choose another output")
