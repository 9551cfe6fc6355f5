"""The `nnsight-persona` command line: one command per experiment, plus reproduce and helpers.

Commands are thin: they map options onto a spec, call the experiment's run(), and write the file.
Heavy imports (torch, transformers, nnsight) happen inside commands so `--help` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from .cli_common import clean_errors, default_out, experiment_options, write_result


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnsight-persona")
def main():
    """Persona-prompt interpretability experiments ("As X, do Y") with nnsight."""


@main.command()
@experiment_options(default_layers="all")
@click.option("--n-continuation", default=12, show_default=True, type=click.IntRange(min=2),
              help="Greedy clean XY tokens generated per cell.")
@clean_errors
def capture(model_spec, grid_name, layers, positions, dtype, cells, batch_size, out, progress, n_continuation):
    """Residuals at p_user_last, p_last, g1, g2 for every cell and condition (BB, XB, BY, XY)."""
    from .experiments import capture as exp
    from .grids import load_grid
    from .models import load_model
    from .selection import parse_layers, parse_positions

    grid = load_grid(grid_name)
    position_list = parse_positions(positions)
    cell_list = tuple(c.label for c in grid.select_cells(cells.split(",") if cells else None))
    loaded = load_model(model_spec, dtype=dtype)
    layer_list = parse_layers(layers, loaded.n_layers, default=range(loaded.n_layers + 1))
    spec = exp.CaptureSpec(
        grid=grid_name, layers=tuple(layer_list), positions=tuple(position_list), cells=cell_list,
        n_continuation=n_continuation, batch_size=batch_size,
    )
    ds = exp.run(loaded, grid, spec, progress=progress)
    write_result(ds, out or default_out(model_spec, "capture", grid_name))


@main.command()
@click.option("--model", "model_spec", default="toy", show_default=True, help="Model to reproduce on.")
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where datasets go [default: artifacts/<model>].")
@click.option("--progress/--no-progress", default=True)
@clean_errors
def reproduce(model_spec, out_dir, progress):
    """Run the main job: every experiment on the model's grids, datasets under artifacts/."""
    from .experiments import capture as exp
    from .grids import load_grid
    from .models import load_model

    loaded = load_model(model_spec)
    out_dir = out_dir or Path("artifacts") / re.sub(r"[^A-Za-z0-9._-]+", "_", model_spec)
    grids = ["toy", "toy-long"] if model_spec == "toy" else ["xu2026-short", "xu2026-long"]
    for grid_name in grids:
        grid = load_grid(grid_name)
        spec = exp.CaptureSpec(grid=grid_name, layers=tuple(range(loaded.n_layers + 1)))
        write_result(exp.run(loaded, grid, spec, progress=progress), out_dir / f"capture-{grid_name}.nc")


@main.command("grids")
@click.argument("name", required=False)
@clean_errors
def grids_command(name):
    """List the bundled grids, or show one grid's cells and prompts."""
    from .grids import list_grids, load_grid

    if not name:
        for grid_name in list_grids():
            grid = load_grid(grid_name)
            click.echo(f"{grid_name:16s} {len(grid.cells):3d} cells  {grid.description}")
        return
    grid = load_grid(name)
    click.echo(grid.description)
    for cell in grid.cells:
        click.echo(f"{cell.label}: {grid.user_text(cell, 'XY')}")


def _attach_subcommands():
    from .cli_analysis import COMMANDS
    from .toy.cli import toy

    for command in COMMANDS:
        main.add_command(command)
    main.add_command(toy)


_attach_subcommands()
