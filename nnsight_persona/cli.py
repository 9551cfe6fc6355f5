"""The `nnsight-persona` command line: one command per experiment, plus reproduce and helpers.

Commands are thin: they map options onto a spec, call the experiment's run(), and write the file.
Heavy imports (torch, transformers, nnsight) happen inside commands so `--help` stays fast.
"""

from __future__ import annotations

from pathlib import Path

import click

from .cli_common import (
    DEVICE_OPTION,
    PROGRESS_OPTION,
    QUIET_OPTION,
    Common,
    batch_size_option,
    clean_errors,
    default_out,
    experiment_options,
    write_result,
)
from .errors import SelectionError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="nnsight-persona")
def main():
    """Persona-prompt interpretability experiments ("As X, do Y") with nnsight."""


# The assembly of a run lives in assembly.py (the Python API calls the same functions); these
# names stay for the command modules that use them.


def _read_capture(common: Common, finished: bool = True):
    from .assembly import read_capture

    return read_capture(common, finished)


def _setup(common: Common, positions: str | None = None):
    """(grid, grid_name, positions, cells, ModelPlan, capture or None), checked before any weights load."""
    from .assembly import setup

    s = setup(common, positions)
    return s.grid, s.grid_name, s.positions, s.cells, s.plan, s.capture_ds


def _with_batch_size(spec, loaded, grid):
    from .assembly import with_batch_size

    return with_batch_size(spec, loaded, grid)


def _interrupted_before_results(target) -> None:
    where = f"{target.path} was left as it was" if target is not None else "nothing was written"
    click.echo(f"interrupted (Ctrl-C) before any result was computed; {where}", err=True)
    raise click.exceptions.Exit(130)


def _compute(module, experiment: str, plan, grid, spec, target, progress: bool, **kwargs):
    """assembly.compute; Ctrl-C before any result exits 130 with the output left as it was."""
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


@main.command()
@experiment_options(default_layers="all")
@click.option("--n-continuation", default=12, show_default=True, type=click.IntRange(min=2),
              help="Greedy clean XY tokens generated per cell.")
@clean_errors
def capture(common, n_continuation):
    """Residuals at p_user_last, p_last, g1, g2 for every cell and condition (BB, XB, BY, XY)."""
    ds, target = _assembled("capture", common, n_continuation=n_continuation)
    write_result(ds, target)


@main.command()
@experiment_options(default_layers="all")
@clean_errors
def decompose(common):
    """Delta_X, Delta_Y, Delta_XY and Inter at every layer, position and cell; cosines and norms."""
    from contextlib import ExitStack

    from .analysis.summary import format_table, median_rows
    from .assembly import Interrupted, decompose_run

    try:
        ds, target = decompose_run(common, click.get_current_context().with_resource(ExitStack()))
    except Interrupted as stop:
        _interrupted_before_results(stop.target)
    columns = ("model", "layer", "position", "n", "cos_xy_sum", "cos_x_y", "inter_over_xy")
    click.echo(format_table(median_rows(ds, ["cos_xy_sum", "cos_x_y", "inter_over_xy"]), columns))
    write_result(ds, target)


@main.command()
@experiment_options(default_layers="paper")
@click.option("--conditions", default=",".join(("additive", "oracle", "baseline", "persona_only", "task_only", "random")),
              show_default=True, help="Comma list of substitution conditions.")
@click.option("--n-eval", default=10, show_default=True, type=click.IntRange(min=1),
              help="Teacher-forced tokens whose KL is summed.")
@click.option("--seed", default=0, show_default=True, help="Seed of the random-direction control.")
@clean_errors
def substitute(common, conditions, n_eval, seed):
    """Replace the clean XY residual at (layer, position) and sum KL(clean || patched) over 10 tokens."""
    from .analysis.summary import condition_medians, format_table

    ds, out = _assembled("substitute", common, conditions=conditions, n_eval=n_eval, seed=seed)
    click.echo("median summed KL over cells:")
    click.echo(format_table(condition_medians(ds, ("layer", "position"))))
    write_result(ds, out)


@main.command()
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
    from .analysis.summary import format_table
    from .experiments import markers as exp

    ds, out = _assembled("markers", common, conditions=conditions, patch_steps=patch_steps, n_tokens=n_tokens)
    click.echo(format_table([{"condition": c, "cells with a marker": f"{k}/{n}", "mean distinct": d}
                             for c, k, n, d in exp.summary_table(ds)]))
    write_result(ds, out)


@main.command()
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
    from .analysis.summary import condition_medians, format_table

    ds, out = _assembled("inject", common, clamp_layers=clamp_layers, conditions=conditions, patch_steps=patch_steps,
                         site_layers=site_layers, filler=filler)
    click.echo("median summed KL to the persona run, per layer set:")
    click.echo(format_table(condition_medians(ds, ("layer_set",))))
    write_result(ds, out)


@main.command()
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
    from .analysis.summary import format_table
    from .experiments import knockout as exp

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


@main.command()
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
    from .analysis.summary import format_table
    from .experiments import heads as exp

    ds, out = _assembled("heads", common, band=band, from_knockout=from_knockout, top_k=top_k, rank_by=rank_by,
                         queries=queries, min_gap=min_gap)
    top, groups = exp.summary_rows(ds)
    click.echo(format_table(top))
    click.echo(format_table(groups))
    write_result(ds, out)


# What `reproduce` runs per model: grid -> the cells of its markers, inject and knockout runs (None:
# every cell). Every grid gets capture, decompose and substitute (and markers if it has markers);
# long-persona grids also get inject and knockout.
PAPER_LONG_CELLS = [f"{p}__{t}" for p in ("engineer", "counselor", "founder", "teacher", "journalist", "doctor",
                                          "lawyer", "chef") for t in ("arch", "plan", "proposal")]
REPRODUCE_GRIDS = {
    "toy": {"toy": None, "toy-long": None},
    "default": {"xu2026-short": None, "xu2026-long": PAPER_LONG_CELLS},
}
LONG_GRIDS = {"toy-long", "xu2026-long"}


def _draw_figures(ds, path: Path) -> None:
    """The figures of the result in `path`, next to it, unless they are already newer than it."""
    from .plots import FIGURES, figures_for, save_figure

    names = FIGURES.get(ds.attrs.get("experiment"), {})
    pngs = [path.with_name(f"{path.stem}-{name}.png") for name in names]
    if all(p.exists() and p.stat().st_mtime >= path.stat().st_mtime for p in pngs):
        return
    for name, fig in figures_for(ds).items():
        for fig_path in save_figure(fig, path.with_name(f"{path.stem}-{name}")):
            click.echo(f"wrote {fig_path}")


@main.command()
@click.option("--model", "model_spec", default="toy", show_default=True, help="Model to reproduce on.")
@click.option("--dtype", type=click.Choice(["float32", "bfloat16", "float16"]), default=None)
@DEVICE_OPTION
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where datasets and figures go [default: runs/<model>]. A rerun resumes the folder step by "
                   "step: finished steps are reused, an unfinished one resumed.")
@click.option("--batch-size", default="auto", show_default=True, callback=batch_size_option,
              help="Rows per forward pass, or 'auto' (memory-aware; see the experiment commands).")
@click.option("--grid", "grids", multiple=True,
              help="Run these grids (every experiment, every cell) instead of the model's default plan.")
@PROGRESS_OPTION
@QUIET_OPTION
@click.option("--overwrite", is_flag=True,
              help="Recompute every step and replace what the folder holds; a finished file is kept until its "
                   "replacement is complete. Needed to regenerate a folder made otherwise (e.g. artifacts/toy).")
@clean_errors
def reproduce(model_spec, dtype, device, out_dir, batch_size, grids, progress, quiet, overwrite):
    """The main job: every experiment on the model's grids, datasets and figures under runs/<model>.

    On the toy model (the default) it runs offline in minutes on a laptop CPU; on a paper model
    (e.g. google/gemma-2-2b-it) it runs the paper's short and long grids. Steps already finished in
    the folder are reused, so an interrupted reproduce continues where it stopped."""
    from contextlib import ExitStack

    from .analysis.decompose import decompose as decompose_capture
    from .cli_common import claim_output
    from .experiments import capture as capture_exp

    progress = progress and not quiet
    from .experiments import heads as heads_exp
    from .experiments import inject as inject_exp
    from .experiments import knockout as knockout_exp
    from .experiments import markers as markers_exp
    from .experiments import substitute as substitute_exp
    from .grids import load_grid
    from .outputs import check_writable
    from .preflight import ModelPlan
    from .selection import paper_layers
    from .store import spec_of

    plan = ModelPlan(model_spec, dtype=dtype, device=device)  # the config only; weights load when a step needs them
    out_dir = out_dir or default_out(model_spec, "reproduce", "grid").parent
    check_writable(out_dir / "capture.nc")
    for grid_name in grids:
        load_grid(grid_name)  # fail fast on a bad grid
    toy = model_spec == "toy"
    steps = {g: None for g in grids} or REPRODUCE_GRIDS["toy" if toy else "default"]
    n = plan.n_layers

    def step(module, experiment, grid, grid_name, spec, **kwargs):
        """One step, resumable on its own: claimed, reused or computed, written, figures drawn."""
        path = out_dir / f"{experiment}-{grid_name}.nc"
        spec_dict = {**spec.to_dict(), "grid_definition": grid.to_dict()}
        with ExitStack() as stack:
            target = claim_output(path, experiment, spec_dict, plan.model_id, plan.dtype, lambda: plan.revision,
                                  overwrite=overwrite, stack=stack)
            ds = target.existing if target.done else _compute(module, experiment, plan, grid, spec, target,
                                                               progress, **kwargs)
            write_result(ds, target)  # stops reproduce here if the step was interrupted
        _draw_figures(ds, path)
        return ds

    for grid_name, marker_cells in steps.items():
        grid = load_grid(grid_name)
        grid_name = Path(grid_name).stem if Path(grid_name).suffix in (".yaml", ".yml", ".json") else grid_name
        cap = step(capture_exp, "capture", grid, grid_name,
                   capture_exp.CaptureSpec(grid=grid_name, layers=tuple(range(n + 1)), batch_size=batch_size))
        dec = decompose_capture(cap)
        path = out_dir / f"decompose-{grid_name}.nc"
        with ExitStack() as stack:
            target = claim_output(path, "decompose", spec_of(dec), dec.attrs["model_id"], dec.attrs.get("dtype"),
                                  dec.attrs.get("model_revision"), overwrite=overwrite, stack=stack)
            write_result(target.existing if target.done else dec, target)
        _draw_figures(dec, path)
        sub = substitute_exp.SubstituteSpec(grid=grid_name, layers=tuple(paper_layers(n)), batch_size=batch_size)
        step(substitute_exp, "substitute", grid, grid_name, sub, capture_ds=cap)
        if grid.markers:
            spec = markers_exp.MarkersSpec(grid=grid_name, layer=markers_exp.default_layer(n),
                                           cells=tuple(marker_cells or ()), batch_size=batch_size)
            step(markers_exp, "markers", grid, grid_name, spec, capture_ds=cap)
        if grid_name in LONG_GRIDS or grids:
            cells = tuple(marker_cells or ())
            spec = inject_exp.InjectSpec(grid=grid_name, layer_sets=tuple(inject_exp.scaled_layer_sets(n)),
                                         site_layers=tuple(paper_layers(n)), cells=cells, batch_size=batch_size)
            step(inject_exp, "inject", grid, grid_name, spec, capture_ds=cap)
            # On a real model the knockout is read through its KL and persona measures; greedy
            # marker generation under every (band, condition) would cost more than everything else.
            spec = knockout_exp.KnockoutSpec(grid=grid_name, bands=tuple(knockout_exp.default_bands(n)),
                                             cells=cells, batch_size=batch_size, n_tokens=80 if toy else 0)
            knocked = step(knockout_exp, "knockout", grid, grid_name, spec, capture_ds=cap)
            chosen = _head_sweep_band(knocked)
            if chosen is None:
                click.echo(f"heads: skipped on {grid_name}: neither persona_shift nor toward_by is defined in half "
                           "the cells (the persona barely changes this model's answer)", err=True)
                continue
            band, rank_by = chosen
            head_cells = cells if toy else tuple(str(c) for c in knocked.cell.values[:HEAD_SWEEP_CELLS])
            spec = heads_exp.HeadSweepSpec(grid=grid_name, band=band, rank_by=rank_by, cells=head_cells,
                                           batch_size=batch_size)
            step(heads_exp, "heads", grid, grid_name, spec, capture_ds=cap)
    from .manifest import write_manifest
    from .report import write_report

    click.echo(f"wrote {write_report(out_dir, progress=progress)}")  # before the manifest, which lists it
    click.echo(f"wrote {write_manifest(out_dir)}")


# Cells of a real model's head sweep in reproduce (one pass per head of the band and cell; the
# `heads` command sweeps any number).
HEAD_SWEEP_CELLS = 8


def _head_sweep_band(knockout_ds):
    """The band reproduce sweeps heads in and the measure it ranks by: the largest median
    persona_shift, or, where that is undefined in most cells (a model whose persona barely moves
    its answer), toward_by; None where neither is defined."""
    from .experiments import heads as heads_exp

    for measure in ("persona_shift", "toward_by"):
        try:
            return heads_exp.best_band(knockout_ds, measure), measure
        except SelectionError:
            pass
    return None


RUNNABLE = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads", "plot")


@main.command("run")
@click.argument("spec_file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--out-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Override the spec's out_dir.")
@click.option("--remote", is_flag=True, help="Pass --remote to every step.")
@click.option("--ndif-host", default=None, help="Pass --ndif-host to every step.")
@PROGRESS_OPTION
@QUIET_OPTION
@click.option("--dry-run", is_flag=True, help="Print the commands without running them.")
@click.option("--overwrite", is_flag=True, help="Pass --overwrite to every step (recompute and replace what their "
              "outputs hold; by default a finished step is reused).")
@clean_errors
def run_spec(spec_file, out_dir, remote, ndif_host, progress, quiet, dry_run, overwrite):
    """Run an experiment spec (YAML): a list of steps, each one command with its options.

    See experiments/*.yaml. File names in a step (out, capture, and plot's results) are relative to
    the spec's out_dir."""
    import shlex

    import yaml

    progress = progress and not quiet
    try:
        spec = yaml.safe_load(spec_file.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        raise SelectionError(f"{spec_file} is not valid YAML: {getattr(exc, 'problem', None) or exc}{where}") from None
    if not isinstance(spec, dict) or not isinstance(spec.get("steps"), list):
        raise SelectionError(f"{spec_file}: a spec needs a 'steps' list (see experiments/*.yaml)")
    if not spec["steps"]:
        raise SelectionError(f"{spec_file} has no steps; list at least one (see experiments/*.yaml)")
    out_dir = Path(out_dir or spec.get("out_dir", "runs"))
    common = spec.get("common") or {}
    if not isinstance(common, dict):
        raise SelectionError(f"{spec_file}: 'common' must be a mapping of option -> value")
    for number, step in enumerate(spec["steps"], start=1):
        if not isinstance(step, dict):
            raise SelectionError(f"{spec_file}: step {number} must be a mapping like {{command: capture, ...}}")
        step = dict(step)
        command = step.pop("command", None)
        if command not in RUNNABLE:
            raise SelectionError(f"{spec_file}: step {number} has command {command!r}; allowed: {list(RUNNABLE)}")
        options = {**({} if "capture" in step or command == "plot" else common), **step}
        args = [command]
        if command == "plot":  # plot takes result files as arguments
            results = options.pop("results", [])
            args += [str(out_dir / r) for r in ([results] if isinstance(results, str) else results)]
        for key, value in options.items():
            if key in ("out", "capture"):
                value = out_dir / str(value)
            args += [f"--{key}", str(value)]
        if command != "plot":
            args += ["--remote"] if remote else []
            args += ["--ndif-host", ndif_host] if ndif_host else []
            args += [] if progress else ["--no-progress"]
            args += ["--overwrite"] if overwrite else []
        click.echo(f"[{number}/{len(spec['steps'])}] nnsight-persona {shlex.join(args)}")
        if dry_run:
            continue
        try:
            code = main.main(args=args, standalone_mode=False)
        except click.ClickException as exc:
            raise click.ClickException(f"step {number} ({command}) of {spec_file} failed: {exc.format_message()}") from None
        if isinstance(code, int) and code != 0:  # a step that stopped early (e.g. Ctrl-C) ends the spec
            raise click.exceptions.Exit(code)


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


@main.command("models")
@clean_errors
def models_command():
    """List the model aliases every --model accepts: where each comes from, its size, whether it is cached."""
    from .aliases import ALIASES
    from .cache import CACHE_ENV, entry_dir

    for alias in ALIASES.values():
        ready = alias.cached()
        state = f"yes, {ready}" if ready is not None else f"no; fetched and built on first use into {entry_dir(alias.name)}"
        click.echo(f"{alias.name:8s} {alias.summary}")
        click.echo(f"{'':8s} from:   {alias.source}")
        click.echo(f"{'':8s} size:   {alias.size}")
        click.echo(f"{'':8s} cached: {state}")
    click.echo(f"Any other --model is a local model directory or a hub id. Set {CACHE_ENV} to move the model cache.")


def _attach_subcommands():
    from .cli_analysis import COMMANDS
    from .cli_subnetworks import subnetwork
    from .cli_vectors import vectors
    from .toy.cli import toy

    for command in COMMANDS:
        main.add_command(command)
    for group in (toy, subnetwork, vectors):
        main.add_command(group)


_attach_subcommands()

if __name__ == "__main__":
    main()
