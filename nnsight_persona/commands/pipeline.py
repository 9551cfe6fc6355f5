"""The commands that run several experiments: `reproduce` (every experiment of a model's grids, with
figures and the report) and `run SPEC.yaml` (a list of command steps)."""

from __future__ import annotations

from pathlib import Path

import click

from ..core.errors import SelectionError
from ..studies.run_setup import default_out
from ..studies.xu2026.commands import compute_step
from .common import (
    DEVICE_OPTION,
    PROGRESS_OPTION,
    QUIET_OPTION,
    batch_size_option,
    clean_errors,
    write_result,
)

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
    from ..plots import figure_names, figures_for, save_figure

    names = figure_names(ds)
    pngs = [path.with_name(f"{path.stem}-{name}.png") for name in names]
    if all(p.exists() and p.stat().st_mtime >= path.stat().st_mtime for p in pngs):
        return
    for name, fig in figures_for(ds).items():
        for fig_path in save_figure(fig, path.with_name(f"{path.stem}-{name}")):
            click.echo(f"wrote {fig_path}")


@click.command()
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

    from ..analysis.decompose import decompose as decompose_capture
    from .common import claim_output
    from ..studies.xu2026 import capture as capture_exp

    progress = progress and not quiet
    from ..studies.xu2026 import heads as heads_exp
    from ..studies.xu2026 import inject as inject_exp
    from ..studies.xu2026 import knockout as knockout_exp
    from ..studies.xu2026 import markers as markers_exp
    from ..studies.xu2026 import substitute as substitute_exp
    from ..core.grids import load_grid
    from ..storage.outputs import check_writable
    from ..models.preflight import ModelPlan
    from ..core.selection import paper_layers
    from ..storage.store import spec_of

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
            ds = target.existing if target.done else compute_step(module, experiment, plan, grid, spec, target,
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
    from ..storage.manifest import write_manifest
    from ..report.page import write_report

    click.echo(f"wrote {write_report(out_dir, progress=progress)}")  # before the manifest, which lists it
    click.echo(f"wrote {write_manifest(out_dir)}")


# Cells of a real model's head sweep in reproduce (one pass per head of the band and cell; the
# `heads` command sweeps any number).
HEAD_SWEEP_CELLS = 8


def _head_sweep_band(knockout_ds):
    """The band reproduce sweeps heads in and the measure it ranks by: the largest median
    persona_shift, or, where that is undefined in most cells (a model whose persona barely moves
    its answer), toward_by; None where neither is defined."""
    from ..studies.xu2026 import heads as heads_exp

    for measure in ("persona_shift", "toward_by"):
        try:
            return heads_exp.best_band(knockout_ds, measure), measure
        except SelectionError:
            pass
    return None


RUNNABLE = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads", "plot")


@click.command("run")
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
            code = click.get_current_context().find_root().command.main(args=args, standalone_mode=False)
        except click.ClickException as exc:
            raise click.ClickException(f"step {number} ({command}) of {spec_file} failed: {exc.format_message()}") from None
        if isinstance(code, int) and code != 0:  # a step that stopped early (e.g. Ctrl-C) ends the spec
            raise click.exceptions.Exit(code)



COMMANDS = (reproduce, run_spec)
