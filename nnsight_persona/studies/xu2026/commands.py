"""The commands of "As X, Do Y" (arXiv 2605.23147): capture, decompose, substitute, markers, inject,
knockout, heads. Thin: each maps its options onto a spec through assembly.py, runs it, writes the file.
Heavy imports (torch, transformers, nnsight) happen inside commands so `--help` stays fast."""

from __future__ import annotations

from pathlib import Path

import click

from ...commands.common import clean_errors, write_result
from .options import Common, experiment_options

def _interrupted_before_results(target) -> None:
    where = f"{target.path} was left as it was" if target is not None else "nothing was written"
    click.echo(f"interrupted (Ctrl-C) before any result was computed; {where}", err=True)
    raise click.exceptions.Exit(130)


def compute_step(module, experiment: str, plan, grid, spec, target, progress: bool, **kwargs):
    """assembly.compute (also reproduce's steps); Ctrl-C before any result exits 130 with the output left as it was."""
    from .assembly import Interrupted, compute

    try:
        return compute(module, experiment, plan, grid, spec, target, progress, **kwargs)
    except Interrupted as stop:
        _interrupted_before_results(stop.target)


def _run_resumable(module, experiment: str, loaded, grid, grid_name: str, spec, common: Common, **kwargs):
    """assembly.execute for a command (the output locked for the rest of it). Returns (dataset,
    target) for write_result. `loaded` is the command's ModelPlan."""
    from contextlib import ExitStack

    from .assembly import Interrupted, Setup, execute

    stack = click.get_current_context().with_resource(ExitStack())
    try:
        return execute(module, experiment, Setup(grid, grid_name, [], (), loaded), spec, common, stack, **kwargs)
    except Interrupted as stop:
        _interrupted_before_results(stop.target)


def _assembled(experiment: str, common: Common, **options):
    """The command's run, assembled (assembly.PLANS) and executed: (dataset, target)."""
    from .assembly import PLANS

    module, s, spec, kwargs = PLANS[experiment](common, **options)
    return _run_resumable(module, experiment, s.plan, s.grid, s.grid_name, spec, common, **kwargs)


@click.command()
@experiment_options(default_layers="all")
@click.option("--n-continuation", default=12, show_default=True, type=click.IntRange(min=2),
              help="Greedy clean XY tokens generated per cell.")
@clean_errors
def capture(common, n_continuation):
    """Residuals at p_user_last, p_last, g1, g2 for every cell and condition (BB, XB, BY, XY)."""
    ds, target = _assembled("capture", common, n_continuation=n_continuation)
    write_result(ds, target)


@click.command()
@experiment_options(default_layers="all")
@clean_errors
def decompose(common):
    """Delta_X, Delta_Y, Delta_XY and Inter at every layer, position and cell; cosines and norms."""
    from contextlib import ExitStack

    from ...analysis.summary import format_table, median_rows
    from .assembly import Interrupted, decompose_run

    try:
        ds, target = decompose_run(common, click.get_current_context().with_resource(ExitStack()))
    except Interrupted as stop:
        _interrupted_before_results(stop.target)
    columns = ("model", "layer", "position", "n", "cos_xy_sum", "cos_x_y", "inter_over_xy")
    click.echo(format_table(median_rows(ds, ["cos_xy_sum", "cos_x_y", "inter_over_xy"]), columns))
    write_result(ds, target)


@click.command()
@experiment_options(default_layers="paper")
@click.option("--conditions", default=",".join(("additive", "oracle", "baseline", "persona_only", "task_only", "random")),
              show_default=True, help="Comma list of substitution conditions.")
@click.option("--n-eval", default=10, show_default=True, type=click.IntRange(min=1),
              help="Teacher-forced tokens whose KL is summed.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random-direction control.")
@clean_errors
def substitute(common, conditions, n_eval, seed):
    """Replace the clean XY residual at (layer, position) and sum KL(clean || patched) over 10 tokens."""
    from ...analysis.summary import condition_medians, format_table

    ds, out = _assembled("substitute", common, conditions=conditions, n_eval=n_eval, seed=seed)
    click.echo("median summed KL over cells:")
    click.echo(format_table(condition_medians(ds, ("layer", "position"))))
    write_result(ds, out)


@click.command()
@experiment_options(default_layers="default", positions="p_last")
@click.option("--conditions", default="clean,additive,remove_persona,bare", show_default=True,
              help="Comma list of marker conditions.")
@click.option("--patch-steps", type=click.Choice(["prefill", "all"]), default="prefill", show_default=True,
              help="Edit only the step computing the position (the paper's), or also every later generated position.")
@click.option("--n-tokens", default=80, show_default=True, type=click.IntRange(min=1), help="Greedy tokens generated.")
@clean_errors
def markers(common, conditions, patch_steps, n_tokens):
    """Persona markers in 80 greedy tokens under clean, additive, remove_persona and bare.

    One layer (default: nearest 0.55 x n_layers) and one position (default p_last)."""
    from ...analysis.summary import format_table
    from . import markers as exp

    ds, out = _assembled("markers", common, conditions=conditions, patch_steps=patch_steps, n_tokens=n_tokens)
    click.echo(format_table([{"condition": c, "cells with a marker": f"{k}/{n}", "mean distinct": d}
                             for c, k, n, d in exp.summary_table(ds)]))
    if "evidence" in ds:
        click.echo("evidence (nats/token; XY prompt against BY prompt, unedited model):")
        click.echo(format_table(exp.evidence_table(ds)))
    write_result(ds, out)


@click.command()
@experiment_options(default_layers="default", positions="all")
@click.option("--clamp-layers", default=None,
              help="Layer sets to inject at, ';'-separated, e.g. '14;10,12,14;6-22' [default: the paper's "
                   "{14}, {10,12,14}, {10..18}, {10..22}, {6..22} (every 2nd layer) scaled to the model's depth]. "
                   "--layers, when given, adds single-layer sets.")
@click.option("--conditions", default="host,oracle,cached,cached_rescaled,lm_host,lm_oracle,lm_cached",
              show_default=True, help="Comma list of inject conditions.")
@click.option("--patch-steps", type=click.Choice(["prefill", "all"]), default="prefill", show_default=True,
              help="Write at p_last only (the paper's), or also add the edit's difference at every later position.")
@click.option("--site-layers", default="paper", show_default=True,
              help="Layers of the injection-site ablation, over --positions ('none' to skip).")
@click.option("--filler", default=" .", show_default=True, help="Neutral filler unit of the length-matched host.")
@clean_errors
def inject(common, clamp_layers, conditions, patch_steps, site_layers, filler):
    """Host injection: can h_XY or h_BB + Delta_X + Delta_Y at p_last replace the persona text?"""
    from ...analysis.summary import condition_medians, format_table

    ds, out = _assembled("inject", common, clamp_layers=clamp_layers, conditions=conditions, patch_steps=patch_steps,
                         site_layers=site_layers, filler=filler)
    click.echo("median summed KL to the persona run, per layer set:")
    click.echo(format_table(condition_medians(ds, ("layer_set",))))
    write_result(ds, out)


@click.command()
@experiment_options(default_layers="default")
@click.option("--band", "bands", default=None,
              help="Decoder blocks START:END (comma list, 'all' for every block) [default: bands of a quarter "
                   "of the depth sliding by half a band, plus all blocks].")
@click.option("--queries", type=click.Choice(["answer", "generated"]), default="answer", show_default=True,
              help="answer: p_last and every generated token; generated: generated tokens only.")
@click.option("--conditions", default=",".join(("persona", "task_span", "neutral_span", "template_span",
                                                "baseline_persona", "none")), show_default=True,
              help="Comma list (see docs/experiments.md): persona and the controls task_span, neutral_span, "
                   "template_span, baseline_persona, none.")
@click.option("--heads", default=None, help="Comma list of heads to knock out (default: all heads).")
@click.option("--n-tokens", default=80, show_default=True, type=click.IntRange(min=0),
              help="Greedy tokens for the marker test (grids with markers; 0 skips it).")
@click.option("--filler", default=" .", show_default=True, help="Filler of the neutral_span host prompt.")
@click.option("--min-gap", default=1.0, show_default=True, type=float,
              help="Nats: persona_shift and toward_by are NaN where the XY-vs-BY gap is below this.")
@clean_errors
def knockout(common, bands, queries, conditions, heads, n_tokens, filler, min_gap):
    """Block attention from the answer to the persona tokens, band by band, with controls."""
    from ...analysis.summary import format_table
    from . import knockout as exp

    ds, out = _assembled("knockout", common, bands=bands, queries=queries, conditions=conditions, heads=heads,
                         n_tokens=n_tokens, filler=filler, min_gap=min_gap)
    for title, variable in (("median summed KL", "kl"), ("median KL per key", "kl_per_key"),
                            ("median persona shift", "persona_shift"), ("median toward BY", "toward_by"),
                            ("fraction of cells with any persona marker", "any_marker")):
        if variable not in ds:
            continue
        click.echo(f"{title}, per band and condition:")
        click.echo(format_table(exp.summary_rows(ds, variable)))
    write_result(ds, out)


@click.command()
@experiment_options(default_layers="default")
@click.option("--band", default=None, help="Decoder blocks START:END whose heads are swept.")
@click.option("--from-knockout", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A knockout result: sweep its band whose persona knockout has the largest median --rank-by "
                   "measure (instead of --band).")
@click.option("--top-k", default="1,2,4,8", show_default=True, help="Sizes of the groups of top heads knocked out together.")
@click.option("--rank-by", type=click.Choice(["persona_shift", "kl", "toward_by"]), default="persona_shift",
              show_default=True, help="The single-head effect (median over cells) heads are ranked by.")
@click.option("--queries", type=click.Choice(["answer", "generated"]), default="answer", show_default=True)
@click.option("--min-gap", default=1.0, show_default=True, type=float)
@clean_errors
def heads(common, band, from_knockout, top_k, rank_by, queries, min_gap):
    """Which heads read the persona: one head at a time in a band, then groups of the top heads."""
    from ...analysis.summary import format_table
    from . import heads as exp

    ds, out = _assembled("heads", common, band=band, from_knockout=from_knockout, top_k=top_k, rank_by=rank_by,
                         queries=queries, min_gap=min_gap)
    top, groups = exp.summary_rows(ds)
    click.echo(format_table(top))
    click.echo(format_table(groups))
    write_result(ds, out)



COMMANDS = (capture, decompose, substitute, markers, inject, knockout, heads)
