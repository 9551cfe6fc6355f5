"""Pieces every command shares: the experiment options, clean errors, output naming and writing."""

from __future__ import annotations

import functools
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import click

from .errors import PersonaError


@dataclass
class Common:
    """The options every experiment command shares, as one object."""

    model_spec: str
    grid_name: str
    layers: str
    positions: str
    dtype: str | None
    device: str
    cells: str | None
    batch_size: int | str
    out: Path | None
    progress: bool
    remote: bool
    ndif_host: str | None
    capture_path: Path | None
    fresh: bool

    @property
    def remote_target(self) -> bool | str:
        """The `remote` argument of nnsight traces."""
        if self.ndif_host == "local":
            return "local"
        if self.ndif_host and not self.remote:
            raise click.UsageError("--ndif-host needs --remote (or use --ndif-host local)")
        return self.ndif_host if (self.remote and self.ndif_host) else bool(self.remote)

    @property
    def cell_labels(self) -> list[str] | None:
        return [c.strip() for c in self.cells.split(",")] if self.cells else None


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


def experiment_options(default_layers: str, positions: str = "all"):
    """The options every experiment command shares, passed to the command as `common`."""

    def decorate(fn):
        options = [
            click.option("--model", "model_spec", default="toy", show_default=True,
                         help="'toy' (the embedded toy chat model), 'smollm2' (SmolLM2-135M-Instruct, fetched once; "
                              "see `nnsight-persona models`), a hub id, or a local model directory."),
            click.option("--grid", "grid_name", default="toy", show_default=True,
                         help="A bundled grid name (see `nnsight-persona grids`) or a YAML/JSON grid file."),
            click.option("--layers", default=default_layers, show_default=True,
                         help="'all', 'paper' (round({.25,.40,.55,.70,.85} x n_layers)), or a list like '2,4,6-8'. "
                              "Layer L = hidden_states[L]; 0 = embeddings."),
            click.option("--positions", default=positions, show_default=True,
                         help="Comma list of p_user_last, p_last, g1, g2."),
            click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                         help="Model dtype [default: per family: Gemma-2 float32, Qwen-2 bfloat16, else float32]."),
            DEVICE_OPTION,
            click.option("--cells", default=None, help="Comma list of cell labels (persona__task); default every cell."),
            click.option("--batch-size", default="auto", show_default=True, callback=batch_size_option,
                         help="Rows per forward pass, or 'auto': as many as fit in half the free GPU memory "
                              "(on a CPU at most 32, where larger batches stop paying)."),
            click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Output netCDF file [default: runs/<model>/<experiment>-<grid>.nc]."),
            click.option("--progress/--no-progress", default=True, help="Show progress bars."),
            click.option("--remote", is_flag=True, help="Run the traces on NDIF (API key from NDIF_API_KEY)."),
            click.option("--ndif-host", default=None,
                         help="NDIF host URL for --remote [default: the public NDIF]; 'local' runs nnsight's "
                              "local simulation of the remote path on this machine."),
            click.option("--capture", "capture_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                         default=None, help="Reuse a capture file instead of recomputing it (its model and grid are used)."),
            click.option("--fresh", is_flag=True,
                         help="Start over even if --out holds an unfinished run of the same spec (default: resume it)."),
        ]

        @functools.wraps(fn)
        def packed(**kwargs):
            common = Common(**{name: kwargs.pop(name) for name in Common.__dataclass_fields__})
            return fn(common, **kwargs)

        for option in reversed(options):
            packed = option(packed)
        return packed

    return decorate


def clean_errors(fn):
    """Turn bad-input errors into one clear line instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except PersonaError as exc:
            raise click.ClickException(str(exc)) from None

    return wrapper


def default_out(model_spec: str, experiment: str, grid_name: str) -> Path:
    safe = lambda s: re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s).stem if s.endswith((".yaml", ".yml", ".json")) else s)
    return Path("runs") / safe(model_spec) / f"{experiment}-{safe(grid_name)}.nc"


def write_result(ds, out: Path) -> None:
    from .store import save_dataset

    save_dataset(ds, out)
    if ds.attrs.get("completed"):
        click.echo(f"wrote {out}")
    else:
        reason = ds.attrs.get("stopped_by", "interrupted")
        click.echo(f"stopped ({reason}): kept the finished part in {out} (attrs completed=0); "
                   "run the same command again to resume", err=True)
        sys.exit(130 if "Ctrl-C" in reason else 1)

