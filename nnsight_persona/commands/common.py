"""Pieces every command shares: option types, clean errors, output claims and writing."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

import click

from ..core.errors import OutputError, PersonaError


def batch_size_option(ctx, param, value):
    if value == "auto":
        return value
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise click.BadParameter(f"{value!r} is neither 'auto' nor a whole number >= 1")
    return number


DEVICE_OPTION = click.option(
    "--device", default="auto", show_default=True,
    help="Where the weights go: 'auto' (a GPU if there is one, else the CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'. "
         "Ignored with --remote.")


OVERWRITE_OPTION = click.option(
    "--overwrite", is_flag=True,
    help="Replace what the output already holds (another spec, experiment or model, or a finished result "
         "of this one). Without it such a file is refused, and a finished file of this computation is reused.")


PROGRESS_OPTION = click.option(
    "--progress/--no-progress", default=True,
    help="Show progress bars with an ETA (on a terminal; otherwise a few plain lines per bar).")
QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress bars (the same as --no-progress).")


def progress_options(fn):
    """--progress/--no-progress and --quiet/-q for a command whose function takes `progress`
    (--quiet turns it off), for the groups that do not go through the shared experiment options."""
    @functools.wraps(fn)
    def wrapper(*args, quiet=False, **kwargs):
        if quiet:
            kwargs["progress"] = False
        return fn(*args, **kwargs)

    return PROGRESS_OPTION(QUIET_OPTION(wrapper))


def given_options(names) -> frozenset:
    """Which of the current command's parameters `names` were given, rather than left at their default."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    defaults = (ParameterSource.DEFAULT, ParameterSource.DEFAULT_MAP, None)
    return frozenset(n for n in names if ctx.get_parameter_source(n) not in defaults)


def clean_errors(fn):
    """Turn bad-input errors into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PersonaError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def claim_output(path: Path, experiment: str, spec: dict, model_id: str, dtype: str | None, revision,
                 overwrite: bool = False, fresh: bool = False, stack=None):
    """run_setup.claim_output, the lock held for the rest of the command (or of `stack`)."""
    from contextlib import ExitStack

    from ..studies.run_setup import claim_output as claim

    if stack is None:
        stack = click.get_current_context().with_resource(ExitStack())
    return claim(path, experiment, spec, model_id, dtype, revision, stack, overwrite=overwrite, fresh=fresh)


def write_result(ds, out) -> None:
    """Write a run's result to `out` (a path, or a Target from claim_output). A finished result is
    written; an unfinished one is kept for resuming, unless it would replace a finished file."""
    from ..storage.outputs import Target
    from ..storage.store import save_dataset

    target = out if isinstance(out, Target) else None
    path = target.path if target is not None else Path(out)
    if target is not None and target.done:
        return  # the finished file is the result; nothing to write

    def save():
        try:
            save_dataset(ds, path)
        except OSError as exc:
            raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from None

    if ds.attrs.get("completed"):
        save()
        click.echo(f"wrote {path}")
        return
    reason = ds.attrs.get("stopped_by", "interrupted")
    if target is not None and target.protect:
        click.echo(f"stopped ({reason}): {path} still holds the previous finished result; this run's partial "
                   "work was not kept (run again with --overwrite to start over)", err=True)
    else:
        save()
        click.echo(f"stopped ({reason}): kept the finished part in {path} (attrs completed=0); "
                   "run the same command again to resume", err=True)
    sys.exit(130 if "Ctrl-C" in reason else 1)

