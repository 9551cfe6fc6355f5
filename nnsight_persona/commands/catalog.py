"""What the package bundles, listed: `grids` (the stimuli) and `models` (the aliases every --model accepts)."""

from __future__ import annotations

import click

from .common import clean_errors


@click.command("grids")
@click.argument("name", required=False)
@clean_errors
def grids_command(name):
    """List the bundled grids, or show one grid's cells and prompts."""
    from ..core.grids import list_grids, load_grid

    if not name:
        for grid_name in list_grids():
            grid = load_grid(grid_name)
            click.echo(f"{grid_name:16s} {len(grid.cells):3d} cells  {grid.description}")
        return
    grid = load_grid(name)
    click.echo(grid.description)
    for cell in grid.cells:
        click.echo(f"{cell.label}: {grid.user_text(cell, 'XY')}")


@click.command("models")
@clean_errors
def models_command():
    """List the model aliases every --model accepts: where each comes from, its size, whether it is cached."""
    from ..models.aliases import ALIASES
    from ..storage.cache import CACHE_ENV, entry_dir

    for alias in ALIASES.values():
        ready = alias.cached()
        state = f"yes, {ready}" if ready is not None else f"no; fetched and built on first use into {entry_dir(alias.name)}"
        click.echo(f"{alias.name:8s} {alias.summary}")
        click.echo(f"{'':8s} from:   {alias.source}")
        click.echo(f"{'':8s} size:   {alias.size}")
        click.echo(f"{'':8s} cached: {state}")
    click.echo(f"Any other --model is a local model directory or a hub id. Set {CACHE_ENV} to move the model cache.")


COMMANDS = (grids_command, models_command)
