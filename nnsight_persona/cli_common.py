"""Pieces every command shares: the experiment options, clean errors, output naming and writing."""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import click

from .errors import PersonaError


def experiment_options(default_layers: str):
    """The options every experiment command shares."""

    def decorate(fn):
        options = [
            click.option("--model", "model_spec", default="toy", show_default=True,
                         help="'toy' (the embedded toy chat model), a hub id, or a local model directory."),
            click.option("--grid", "grid_name", default="toy", show_default=True,
                         help="A bundled grid name (see `nnsight-persona grids`) or a YAML/JSON grid file."),
            click.option("--layers", default=default_layers, show_default=True,
                         help="'all', 'paper' (round({.25,.40,.55,.70,.85} x n_layers)), or a list like '2,4,6-8'. "
                              "Layer L = hidden_states[L]; 0 = embeddings."),
            click.option("--positions", default="all", show_default=True,
                         help="Comma list of p_user_last, p_last, g1, g2."),
            click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None,
                         help="Model dtype [default: per family: Gemma-2 float32, Qwen-2 bfloat16, else float32]."),
            click.option("--cells", default=None, help="Comma list of cell labels (persona__task); default every cell."),
            click.option("--batch-size", default=32, show_default=True, type=click.IntRange(min=1),
                         help="Prompts per forward pass."),
            click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
                         help="Output netCDF file [default: runs/<model>/<experiment>-<grid>.nc]."),
            click.option("--progress/--no-progress", default=True, help="Show progress bars."),
        ]
        for option in reversed(options):
            fn = option(fn)
        return fn

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
        click.echo(f"interrupted: kept the finished part in {out} (attrs completed=0)", err=True)
        sys.exit(130)
