"""Analysis commands: draw figures and compare with the paper, from result files alone.

Defined here and attached to the main group by cli.py (`main.add_command`). They need no model.
Heavy imports (xarray, matplotlib) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli_common import clean_errors


@click.command("plot")
@click.argument("results", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where figures go [default: each result file's folder].")
@click.option("--pdf", is_flag=True, help="Also write a PDF of every figure.")
@clean_errors
def plot_command(results, out_dir, pdf):
    """Draw the figures that apply to each result file (PNG, named <file>-<figure>.png).

    Files of an experiment without figures (a capture) are skipped with a note, so `plot dir/*.nc`
    draws everything there is to draw."""
    from .errors import PersonaError
    from .plots import FIGURES, figures_for, save_figure
    from .store import load_dataset

    datasets = [(result, load_dataset(result)) for result in results]  # every file readable, before drawing
    drawn = 0
    for result, ds in datasets:
        experiment = ds.attrs.get("experiment")
        if experiment not in FIGURES:
            click.echo(f"skipped {result}: no figures for a {experiment} result "
                       f"(figures exist for {', '.join(sorted(FIGURES))})", err=True)
            continue
        folder = out_dir or result.parent
        for name, fig in figures_for(ds).items():
            for path in save_figure(fig, folder / f"{result.stem}-{name}", pdf=pdf):
                click.echo(f"wrote {path}")
                drawn += 1
    if not drawn:
        raise PersonaError(f"none of the {len(datasets)} file(s) has figures; figures exist for "
                           f"{', '.join(sorted(FIGURES))} results")


@click.command("compare")
@click.argument("result", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--paper", "paper", type=click.Choice(["gemma2b", "qwen15", "qwen3b"]), default=None,
              help="Set a model the paper does not report beside this paper model (layers matched by depth).")
@click.option("--margin", default=10.0, show_default=True, type=click.FloatRange(min=1, min_open=True),
              help="substitute: additivity is claimed where the additive KL beats the best control by this factor.")
@click.option("--digits", default=4, show_default=True, type=click.IntRange(min=1, max=12),
              help="Decimals printed.")
@clean_errors
def compare_command(result, paper, margin, digits):
    """Our medians over cells next to the paper's; for substitute, also the additive condition
    against its controls (persona_only, task_only, baseline), for any model."""
    from .analysis.additivity import additivity_rows, verdict_text
    from .analysis.compare import compare, reference_file, side_by_side
    from .analysis.summary import format_table
    from .errors import PersonaError
    from .store import load_dataset, spec_of

    ds = load_dataset(result)
    experiment, grid = ds.attrs.get("experiment"), spec_of(ds).get("grid")
    try:
        rows = compare(ds, paper=paper)
    except PersonaError as exc:
        if experiment != "substitute":
            raise
        rows = []
        click.echo(f"(no paper numbers: {exc})")
    for model_id in dict.fromkeys(row["model"] for row in rows):
        reference = reference_file(model_id, grid, experiment, paper)
        click.echo(f"{experiment}: {model_id} on {grid}; paper: {reference}")
        mine = [{k: v for k, v in row.items() if k != "model"} for row in rows if row["model"] == model_id]
        click.echo(format_table(mine, digits=digits))
    if len(dict.fromkeys(row["model"] for row in rows)) > 1:
        click.echo("\nevery model beside the paper's (medians over cells; markers: rate of cells with a marker):")
        click.echo(format_table(side_by_side(rows), digits=digits))
    if experiment == "substitute":
        table = additivity_rows(ds, margin)
        click.echo("\nadditive against its controls (median KL over cells, nats; ratio = best control / additive):")
        click.echo(format_table(table, digits=digits))
        click.echo(verdict_text(table, margin))


COMMANDS = (plot_command, compare_command)
