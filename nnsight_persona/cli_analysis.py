"""Analysis commands: decompose a capture, draw figures, compare with the paper.

Defined here and attached to the main group by cli.py (`main.add_command`). They need no model.
Heavy imports (xarray, matplotlib) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

import re
from pathlib import Path

import click

from .cli_common import clean_errors

DECOMPOSE_COLUMNS = ("model", "layer", "position", "n", "cos_xy_sum", "cos_x_y", "inter_over_xy")


def _grid_tag(grid: str | None) -> str:
    """A file-name-safe grid name ('xu2026-short', or a grid file's stem)."""
    if not grid:
        return "grid"
    name = Path(grid).stem if grid.endswith((".yaml", ".yml", ".json")) else grid
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name)


def decompose_file(capture_path: str | Path, out_path: str | Path | None = None) -> tuple[Path, "xr.Dataset"]:
    """Decompose the capture in `capture_path` and write it to `out_path` (default: next to the
    capture as decompose-<grid>.nc). Returns the path written and the dataset."""
    from .analysis.decompose import decompose
    from .store import load_dataset, save_dataset, spec_of

    capture_ds = load_dataset(capture_path)
    ds = decompose(capture_ds)
    if out_path is None:
        out_path = Path(capture_path).with_name(f"decompose-{_grid_tag(spec_of(capture_ds).get('grid'))}.nc")
    return save_dataset(ds, out_path), ds


@click.command("decompose")
@click.option("--capture", "capture_path", required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A capture netCDF file (from `nnsight-persona capture`).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output netCDF file [default: decompose-<grid>.nc next to the capture].")
@clean_errors
def decompose_command(capture_path, out):
    """Delta_X, Delta_Y and their interaction at every layer and position of a capture."""
    from .analysis.summary import format_table, median_rows

    path, ds = decompose_file(capture_path, out)
    click.echo("medians over cells:")
    click.echo(format_table(median_rows(ds, ["cos_xy_sum", "cos_x_y", "inter_over_xy"]), DECOMPOSE_COLUMNS))
    if not ds.attrs.get("completed"):
        click.echo("note: the capture was interrupted (attrs completed=0); missing cells are NaN", err=True)
    click.echo(f"wrote {path}")


@click.command("plot")
@click.argument("results", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where figures go [default: each result file's folder].")
@click.option("--pdf", is_flag=True, help="Also write a PDF of every figure.")
@clean_errors
def plot_command(results, out_dir, pdf):
    """Draw the figures that apply to each result file (PNG, named <file>-<figure>.png)."""
    from .plots import figures_for, save_figure
    from .store import load_dataset

    for result in results:
        ds = load_dataset(result)
        folder = out_dir or result.parent
        for name, fig in figures_for(ds).items():
            for path in save_figure(fig, folder / f"{result.stem}-{name}", pdf=pdf):
                click.echo(f"wrote {path}")


@click.command("compare")
@click.argument("result", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--digits", default=4, show_default=True, type=click.IntRange(min=1, max=12),
              help="Decimals printed.")
@clean_errors
def compare_command(result, digits):
    """Our medians over cells next to the paper's, for a model and grid the paper reports."""
    from .analysis.compare import compare, reference_file
    from .analysis.summary import format_table
    from .store import load_dataset, spec_of

    ds = load_dataset(result)
    rows = compare(ds)
    grid = spec_of(ds).get("grid")
    for model_id in dict.fromkeys(row["model"] for row in rows):
        reference = reference_file(model_id, grid, ds.attrs.get("experiment"))
        click.echo(f"{ds.attrs.get('experiment')}: {model_id} on {grid}; paper: {reference}")
        mine = [{k: v for k, v in row.items() if k != "model"} for row in rows if row["model"] == model_id]
        click.echo(format_table(mine, digits=digits))


COMMANDS = (decompose_command, plot_command, compare_command)
