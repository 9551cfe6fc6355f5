"""Analysis commands: draw figures and compare with the paper, from result files alone.

Defined here and attached to the main group by cli.py (`main.add_command`). They need no model.
Heavy imports (xarray, matplotlib) happen inside the commands so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from .common import PROGRESS_OPTION, QUIET_OPTION, clean_errors


@click.command("plot")
@click.argument("results", nargs=-1, required=True,
                type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where figures go [default: each result file's folder].")
@click.option("--pdf", is_flag=True, help="Also write a PDF of every figure.")
@PROGRESS_OPTION
@QUIET_OPTION
@clean_errors
def plot_command(results, out_dir, pdf, progress, quiet):
    """Draw the figures that apply to each result file (PNG, named <file>-<figure>.png).

    Files of an experiment without figures (a capture) are skipped with a note, so `plot dir/*.nc`
    draws everything there is to draw."""
    from ..core.errors import PersonaError
    from ..plots import FIGURES, figures_for, save_figure
    from ..core.progress import tqdm
    from ..storage.store import load_dataset

    datasets = [(result, load_dataset(result)) for result in results]  # every file readable, before drawing
    drawn = 0
    for result, ds in tqdm(datasets, desc="plot", disable=not progress or quiet or len(datasets) < 2):
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
              help="substitute: additivity is claimed where the lower end of the 95% interval of the median paired "
                   "ratio KL(control) / KL(additive) reaches this factor for every control.")
@click.option("--digits", default=4, show_default=True, type=click.IntRange(min=1, max=12),
              help="Decimals printed.")
@clean_errors
def compare_command(result, paper, margin, digits):
    """Our medians over cells next to the paper's; for substitute, also the additive condition
    against its controls (persona_only, task_only, baseline), for any model."""
    from ..analysis.additivity import additivity_rows, verdict_text
    from ..analysis.compare import compare, reference_file, side_by_side
    from ..analysis.summary import format_table
    from ..core.errors import PersonaError
    from ..storage.store import load_dataset, spec_of

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
        click.echo("\nadditive against its controls (median KL over cells, nats, with 95% intervals over cells; "
                   "ratio = median paired ratio control / additive against the control beaten by the least):")
        click.echo(format_table(table, digits=digits))
        click.echo(verdict_text(table, margin))


@click.command("collect")
@click.argument("results", nargs=-1, required=True)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True,
              help="The netCDF file of every model's result, concatenated along `model`.")
@click.option("--align", type=click.Choice(["none", "depth"]), default="none", show_default=True,
              help="depth: align models of different depths by depth fraction (coordinate layer_frac).")
@click.option("--cells", default=None, help="Comma list of cells to keep from every file (files holding different subsets).")
@click.option("--overwrite", is_flag=True, help="Replace --out if it exists.")
@clean_errors
def collect_command(results, out, align, cells, overwrite):
    """Result files of one experiment and several models (paths or quoted globs) as one file along `model`.

    Grids, cells, positions and layers must agree; models of different depths need --align depth."""
    from ..core.errors import OutputError
    from ..storage.outputs import check_writable, output_lock
    from ..storage.results import open_results
    from ..storage.store import save_dataset

    ds = open_results(list(results), align=None if align == "none" else align,
                      cells=[c.strip() for c in cells.split(",")] if cells else None)
    check_writable(out)
    with output_lock(out):
        if out.exists() and not overwrite:
            raise OutputError(f"{out} exists; --overwrite replaces it, or choose another --out")
        save_dataset(ds, out)
    models = [str(m) for m in ds["model"].values]
    click.echo(f"wrote {out}: {ds.attrs.get('experiment')} of {len(models)} models ({', '.join(models)})")


@click.command("report")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--paper", type=click.Choice(["gemma2b", "qwen15", "qwen3b"]), default="gemma2b", show_default=True,
              help="The paper model set beside models the paper does not report (in compare's tables).")
@PROGRESS_OPTION
@QUIET_OPTION
@clean_errors
def report_command(folder, paper, progress, quiet):
    """Write FOLDER/index.html: every result file's figures, tables, provenance and what it shows,
    in one self-contained page (figures embedded; it can be mailed)."""
    from ..report.page import write_report

    click.echo(f"wrote {write_report(folder, paper=paper, progress=progress and not quiet)}")


@click.command("summary")
@click.argument("result", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--stat", "statistic", type=click.Choice(["median", "mean"]), default="median", show_default=True,
              help="The statistic over the experiment's unit (cells, questions, ...).")
@click.option("--method", type=click.Choice(["percentile", "bca"]), default="percentile", show_default=True,
              help="The bootstrap interval.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap resamples.")
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the records (variable, coords, estimate, ci_low, ci_high, n) as JSON here.")
@click.option("--digits", default=4, show_default=True, type=click.IntRange(min=1, max=12), help="Decimals printed.")
@clean_errors
def summary_command(result, statistic, method, seed, json_out, digits):
    """Every statistic of RESULT over its unit: estimate, 95% bootstrap interval and n, grouped by
    the dims that are not the unit (docs/statistics.md)."""
    import json

    from ..analysis.intervals import interval_summary, summary_table_rows, unit_of
    from ..analysis.summary import format_table
    from ..storage.store import load_dataset

    ds = load_dataset(result)
    records = interval_summary(ds, statistic, method=method, seed=seed)
    click.echo(f"{result.name}: {statistic} over {' x '.join(unit_of(ds))}, 95% {method} bootstrap interval")
    for name in dict.fromkeys(r["variable"] for r in records):
        click.echo(f"\n{name}")
        rows = [{k: v for k, v in row.items() if k != "variable"}
                for row in summary_table_rows([r for r in records if r["variable"] == name])]
        click.echo(format_table(rows, digits=digits))
    if json_out:
        json_out.write_text(json.dumps(records, indent=1, default=float))
        click.echo(f"wrote {json_out}")


@click.command("findings")
@click.argument("folder", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "json_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write every claim as a JSON record here.")
@click.option("--all", "show_all", is_flag=True, help="Print every claim, not one line per claim and file.")
@click.option("--seed", default=0, show_default=True, type=int, help="Seed of the bootstrap and Monte Carlo tests.")
@click.option("--digits", default=4, show_default=True, type=click.IntRange(min=1, max=12), help="Decimals printed.")
@clean_errors
def findings_command(folder, json_out, show_all, seed, digits):
    """The claims FOLDER's result files support: effect (mean paired difference), its interval,
    Holm-adjusted p within each rule and file, n and whether it holds (docs/statistics.md)."""
    import json

    from ..analysis.findings import findings_digest, findings_rows, folder_findings
    from ..analysis.summary import format_table

    claims = folder_findings(folder, seed=seed)
    click.echo(format_table(findings_rows(claims) if show_all else findings_digest(claims), digits=digits))
    if json_out:
        json_out.write_text(json.dumps(claims, indent=1, default=float))
        click.echo(f"wrote {json_out}")


COMMANDS = (plot_command, compare_command, collect_command, report_command, summary_command, findings_command)
