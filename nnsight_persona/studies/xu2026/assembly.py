"""The one place where a run is assembled: options -> grid, positions, cells, model, capture and
the experiment's spec, then output policy (claim, resume, reuse), batch size and the run itself.

Both this study's commands (commands.py) and its Python API (api.py, exported by the package) call
these functions, so `nnsight-persona substitute ...` and `nnsight_persona.substitute(...)` make the
same Dataset. Nothing here parses a command line or prints tables; messages go to stderr.

Layering: below commands and api, above the experiment modules; what the studies' assemblies share
is in ../run_setup.py. Heavy imports happen inside functions.
"""

from __future__ import annotations

import dataclasses
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

from ...core.errors import SelectionError
from ..run_setup import LoadedPlan, claim_output, default_out, model_name, model_plan, note, numbers  # noqa: F401 (used by the API)


@dataclass
class RunOptions:
    """The options every experiment shares (the commands' common options, the API's keywords).

    `model_spec` is a model name (alias, hub id, directory), an already loaded model
    (models.load_model) or a preflight.ModelPlan. `capture_path` is a capture file or a capture
    Dataset. `out` None: the API computes without writing; `default_out` True (the commands): the
    result goes to runs/<model>/<experiment>-<grid>.nc."""

    model_spec: object = "toy"
    grid_name: str = "toy"
    layers: str = "default"
    positions: str = "all"
    dtype: str | None = None
    device: str = "auto"
    cells: str | None = None
    batch_size: int | str = "auto"
    out: Path | None = None
    progress: bool = True
    remote: bool = False
    ndif_host: str | None = None
    capture_path: object = None
    fresh: bool = False
    overwrite: bool = False
    given: frozenset = frozenset()  # the options given explicitly (not defaults)
    default_out: bool = False

    @property
    def remote_target(self) -> bool | str:
        """The `remote` argument of nnsight traces."""
        if self.ndif_host == "local":
            return "local"
        if self.ndif_host and not self.remote:
            raise SelectionError("--ndif-host needs --remote (or use --ndif-host local)")
        return self.ndif_host if (self.remote and self.ndif_host) else bool(self.remote)

    @property
    def cell_labels(self) -> list[str] | None:
        return [c.strip() for c in self.cells.split(",")] if self.cells else None

    @property
    def capture_name(self) -> str:
        """How messages name the capture: its file, or 'the capture dataset'."""
        return str(self.capture_path) if isinstance(self.capture_path, (str, Path)) else "the capture dataset"


def read_capture(opts: RunOptions, finished: bool = True):
    """The capture given with the options, checked: readable, a capture, finished (when
    `finished`), and not contradicted by the model, grid or dtype given with it."""
    from ...models.preflight import check_capture_agrees
    from ...storage.store import load_dataset, spec_of

    source = opts.capture_path
    capture_ds = load_dataset(source) if isinstance(source, (str, Path)) else source
    name = opts.capture_name
    spec = spec_of(capture_ds)
    if capture_ds.attrs.get("experiment") != "capture" or "grid_definition" not in spec:
        raise SelectionError(f"{name} is not a capture file (see `nnsight-persona capture`)")
    if finished and not capture_ds.attrs.get("completed"):
        raise SelectionError(f"{name} is an interrupted capture (completed=0); rerun it first")
    options = {"model_spec": "--model", "grid_name": "--grid", "dtype": "--dtype"}
    given = {flag: getattr(opts, key) for key, flag in options.items() if key in opts.given}
    if "--model" in given:
        given["--model"] = model_name(given["--model"])
    check_capture_agrees(capture_ds, name, given)
    return capture_ds


@dataclass
class Setup:
    """What every experiment starts from, checked before any weights load."""

    grid: object
    grid_name: str
    positions: list
    cells: tuple
    plan: object  # a ModelPlan (loads on first need) or a LoadedPlan
    capture_ds: object = None


def setup(opts: RunOptions, positions: str | None = None) -> Setup:
    """Grid, positions and cells, the model's config and a reused capture if one was given, all
    checked before any weights load, so bad input fails fast. The model is a ModelPlan: it loads
    when a run needs it (not at all when the output already holds the finished result)."""
    from ...core.grids import grid_from_dict, load_grid
    from ...models.preflight import check_capture_weights
    from ...core.selection import parse_positions
    from ...storage.store import spec_of

    capture_ds, grid_name, model, dtype = None, opts.grid_name, opts.model_spec, opts.dtype
    if opts.capture_path is not None:
        capture_ds = read_capture(opts)
        spec = spec_of(capture_ds)
        grid_name = spec["grid"]
        grid = grid_from_dict(spec["grid_definition"], name=grid_name)
        if isinstance(model, (str, Path)):
            model, dtype = capture_ds.attrs["model_id"], capture_ds.attrs.get("dtype", dtype)
    else:
        grid = load_grid(grid_name)
    position_list = parse_positions(positions or opts.positions)
    cell_list = tuple(c.label for c in grid.select_cells(opts.cell_labels))
    plan = model_plan(model, dtype=dtype, remote=opts.remote_target, device=opts.device)
    if capture_ds is not None:
        missing = [c for c in cell_list if c not in set(capture_ds.cell.values.tolist())]
        if missing:
            raise SelectionError(f"{opts.capture_name} has no cell {missing}; it holds "
                                 f"{capture_ds.cell.values.tolist()} (choose among them with --cells)")
        check_capture_weights(capture_ds, opts.capture_name, plan)
    return Setup(grid, grid_name, position_list, cell_list, plan, capture_ds)


def auto_batch_size(loaded, grid, cell_labels) -> int:
    """Memory-aware rows per pass for the longest teacher-forced sequence of the grid."""
    from ...core.memory import auto_batch_size as sized, free_bytes
    from ...core.prompts import render_prompt

    if loaded.remote not in (False, "local"):
        return 32  # the server's memory is not ours to measure
    longest = max(len(render_prompt(loaded.tokenizer, grid.user_text(grid.cell(c), "XY")).ids) for c in cell_labels)
    device = next(loaded.lm._module.parameters()).device
    size = sized(loaded.lm._module.config, loaded.dtype, longest + 12, free_bytes(device))
    return size if device.type == "cuda" else min(size, 32)


def with_batch_size(spec, loaded, grid):
    """`spec` with batch_size 'auto' resolved for the loaded model."""
    if getattr(spec, "batch_size", None) != "auto":
        return spec
    cells = list(spec.cells) or grid.cell_labels
    return dataclasses.replace(spec, batch_size=auto_batch_size(loaded, grid, cells))


class Interrupted(Exception):
    """Ctrl-C before any result was computed (while loading, or in a built-in capture); `target`:
    the output, left as it was (None without one)."""

    def __init__(self, target=None):
        super().__init__("interrupted (Ctrl-C) before any result was computed")
        self.target = target


def compute(module, experiment: str, plan, grid, spec, target=None, progress: bool = True, **kwargs):
    """Run an experiment: load the model, resume what `target` holds (when there is a target),
    and checkpoint the partial result every minute unless that would replace a finished file."""
    from ...storage import store
    from ...core.progress import library_bars
    from ...core.traffic import metered

    try:
        with library_bars(progress):
            loaded = plan.load()
        spec = with_batch_size(spec, loaded, grid)
        # Remote batches are slow and can be lost with the connection: keep each one as it finishes.
        every_s = 0.0 if loaded.remote not in (False, "local") else 60.0
        checkpoint = None if target is None or target.protect else store.Checkpoint(target.path, every_s=every_s)
        previous = None if target is None else target.previous
        with metered() as traffic:
            ds = module.run(loaded, grid, spec, progress=progress, previous=previous, checkpoint=checkpoint, **kwargs)
    except KeyboardInterrupt:
        raise Interrupted(target) from None
    ds.attrs["backend"] = {False: "local", "local": "local simulation of the remote path"}.get(
        loaded.remote, f"NDIF {loaded.remote if isinstance(loaded.remote, str) else 'public service'}")
    if loaded.remote:
        ds.attrs.update(traffic.as_attrs())  # of this invocation (a resumed run counts its own part)
    return ds


def output_path(opts: RunOptions, model_id: str, experiment: str, grid_name: str) -> Path | None:
    if opts.out is not None:
        return Path(opts.out)
    return default_out(model_id, experiment, grid_name) if opts.default_out else None


def precheck(module, experiment: str, spec, grid, n_layers: int) -> None:
    """The experiment's own spec checks that need no weights, run before the model loads (run()
    repeats them)."""
    if experiment == "markers" and hasattr(module, "check_spec"):
        module.check_spec(spec, grid, n_layers)
    elif experiment == "inject" and hasattr(module, "_check"):
        module._check(spec, n_layers)


def execute(module, experiment: str, s: Setup, spec, opts: RunOptions, stack: ExitStack, **kwargs):
    """Run an experiment so that no result is lost or silently replaced. With an output: it is
    checked and locked first; a finished result of the same computation is reused (nothing is
    computed, the model never loads), an unfinished one resumed; the partial result is written
    every minute. Returns (dataset, target); target is None without an output."""
    plan, grid = s.plan, s.grid
    precheck(module, experiment, spec, grid, plan.n_layers)
    out = output_path(opts, plan.model_id, experiment, s.grid_name)
    target = None
    if out is not None:
        spec_dict = {**spec.to_dict(), "grid_definition": grid.to_dict()}
        target = claim_output(out, experiment, spec_dict, plan.model_id, plan.dtype, lambda: plan.revision,
                              stack, overwrite=opts.overwrite, fresh=opts.fresh)
        if target.done:
            return target.existing, target
    return compute(module, experiment, plan, grid, spec, target, opts.progress, **kwargs), target


# --- one function per experiment: options -> (module, Setup, spec, run kwargs) ------------------


def _layers(opts: RunOptions, n_layers: int, default):
    from ...core.selection import parse_layers

    return parse_layers(opts.layers, n_layers, default=default)


def capture_plan(opts: RunOptions, n_continuation: int = 12):
    from . import capture as exp

    if opts.capture_path is not None:
        raise SelectionError("capture makes capture files; --capture is for the other experiments")
    s = setup(opts)
    layers = _layers(opts, s.plan.n_layers, range(s.plan.n_layers + 1))
    spec = exp.CaptureSpec(grid=s.grid_name, layers=tuple(layers), positions=tuple(s.positions), cells=s.cells,
                           n_continuation=n_continuation, batch_size=opts.batch_size)
    return exp, s, spec, {}


def substitute_plan(opts: RunOptions, conditions=None, n_eval: int = 10, seed: int = 0):
    from . import substitute as exp
    from ...core.selection import paper_layers

    condition_list = exp.check_conditions(_names(conditions, exp.CONDITIONS))
    s = setup(opts)
    layers = _layers(opts, s.plan.n_layers, paper_layers(s.plan.n_layers))
    spec = exp.SubstituteSpec(
        grid=s.grid_name, layers=tuple(layers), positions=tuple(s.positions), conditions=condition_list,
        cells=s.cells, n_eval=n_eval, n_continuation=max(12, n_eval + 2), batch_size=opts.batch_size, seed=seed,
    )
    return exp, s, spec, {"capture_ds": s.capture_ds}


def markers_plan(opts: RunOptions, conditions=None, patch_steps: str = "prefill", n_tokens: int = 80):
    from . import markers as exp

    s = setup(opts)
    layers = _layers(opts, s.plan.n_layers, [exp.default_layer(s.plan.n_layers)])
    if len(layers) != 1 or len(s.positions) != 1:
        raise SelectionError(f"markers takes one layer and one position; got layers {layers}, positions {s.positions}")
    spec = exp.MarkersSpec(
        grid=s.grid_name, layer=layers[0], position=s.positions[0],
        conditions=_names(conditions, ("clean", "additive", "remove_persona", "bare")),
        patch_steps=patch_steps, cells=s.cells, n_tokens=n_tokens, batch_size=opts.batch_size,
    )
    return exp, s, spec, {"capture_ds": s.capture_ds}


INJECT_CONDITIONS = ("host", "oracle", "cached", "cached_rescaled", "lm_host", "lm_oracle", "lm_cached")


def inject_plan(opts: RunOptions, clamp_layers: str | None = None, conditions=None, patch_steps: str = "prefill",
                site_layers: str = "paper", filler: str = " ."):
    from . import inject as exp
    from ...core.selection import paper_layers, parse_layers

    s = setup(opts)
    n = s.plan.n_layers
    sets = exp.parse_layer_sets(clamp_layers, n) if clamp_layers else exp.scaled_layer_sets(n)
    if opts.layers != "default":
        sets = [(L,) for L in parse_layers(opts.layers, n, default=[])] + [t for t in sets if len(t) > 1]
    site = [] if site_layers == "none" else parse_layers(site_layers, n, default=paper_layers(n))
    spec = exp.InjectSpec(
        grid=s.grid_name, layer_sets=tuple(sets), conditions=_names(conditions, INJECT_CONDITIONS),
        patch_steps=patch_steps, site_layers=tuple(site), site_positions=tuple(s.positions), cells=s.cells,
        filler=filler, batch_size=opts.batch_size,
    )
    return exp, s, spec, {"capture_ds": s.capture_ds}


KNOCKOUT_CONDITIONS = ("persona", "task_span", "neutral_span", "template_span", "baseline_persona", "none")


def knockout_plan(opts: RunOptions, bands: str | None = None, queries: str = "answer", conditions=None,
                  heads=None, n_tokens: int = 80, filler: str = " .", min_gap: float = 1.0):
    from . import knockout as exp

    if opts.layers != "default":
        raise SelectionError("knockout sweeps decoder-block bands: use --band START:END instead of --layers")
    if isinstance(heads, str):
        try:
            heads = tuple(int(h) for h in heads.split(",")) if heads else None
        except ValueError:
            raise SelectionError(f"cannot read --heads {heads!r}; use a comma list of head indices") from None
    s = setup(opts, positions="all")
    band_list = exp.parse_bands(bands, s.plan.n_layers) if bands else exp.default_bands(s.plan.n_layers)
    spec = exp.KnockoutSpec(
        grid=s.grid_name, bands=tuple(band_list), queries=queries, conditions=_names(conditions, KNOCKOUT_CONDITIONS),
        heads=tuple(heads) if heads else None, cells=s.cells, n_tokens=n_tokens, filler=filler, min_gap=min_gap,
        batch_size=opts.batch_size,
    )
    return exp, s, spec, {"capture_ds": s.capture_ds}


def heads_plan(opts: RunOptions, band: str | None = None, from_knockout=None, top_k="1,2,4,8",
               rank_by: str = "persona_shift", queries: str = "answer", min_gap: float = 1.0):
    from . import heads as exp
    from .knockout import parse_bands
    from ...storage.store import load_dataset

    if opts.layers != "default":
        raise SelectionError("heads sweeps one band of decoder blocks: use --band START:END instead of --layers")
    if (band is None) == (from_knockout is None):
        raise SelectionError("give exactly one of --band START:END and --from-knockout FILE")
    if isinstance(top_k, str):
        try:
            top_k = tuple(int(k) for k in top_k.split(","))
        except ValueError:
            raise SelectionError(f"cannot read --top-k {top_k!r}; use a comma list of group sizes") from None
    s = setup(opts, positions="all")
    if band is not None:
        bands = parse_bands(band, s.plan.n_layers)
        if len(bands) != 1:
            raise SelectionError(f"--band takes one band START:END, got {band!r}")
        chosen = bands[0]
    else:
        knockout_ds = load_dataset(from_knockout) if isinstance(from_knockout, (str, Path)) else from_knockout
        chosen = exp.best_band(knockout_ds, rank_by)
        note(f"band {chosen[0]}:{chosen[1]} (largest median {rank_by} in {from_knockout if isinstance(from_knockout, (str, Path)) else 'the knockout dataset'})")
    spec = exp.HeadSweepSpec(grid=s.grid_name, band=chosen, queries=queries, top_k=tuple(top_k), rank_by=rank_by,
                             cells=s.cells, min_gap=min_gap, batch_size=opts.batch_size)
    return exp, s, spec, {"capture_ds": s.capture_ds}


def _names(value, default) -> tuple[str, ...]:
    """A comma list or a sequence of names as a tuple; None: `default`."""
    if value is None:
        return tuple(default)
    if isinstance(value, str):
        return tuple(v.strip() for v in value.split(","))
    return tuple(str(v) for v in value)


def decompose_run(opts: RunOptions, stack: ExitStack):
    """decompose: from a capture (given, or computed here without writing it). Returns
    (dataset, target); target is None without an output."""
    from ...analysis.decompose import decompose as decompose_capture
    from ...storage.store import spec_of

    if opts.capture_path is not None:  # no model: computed from the capture, then checked against the output
        ds = decompose_capture(read_capture(opts, finished=False))
        out = output_path(opts, ds.attrs["model_id"], "decompose", spec_of(ds).get("grid", "grid"))
        if out is None:
            return ds, None
        target = claim_output(out, "decompose", spec_of(ds), ds.attrs["model_id"], ds.attrs.get("dtype"),
                              ds.attrs.get("model_revision"), stack, overwrite=opts.overwrite, fresh=opts.fresh)
        return (target.existing if target.done else ds), target
    module, s, cap_spec, _ = capture_plan(opts)
    out = output_path(opts, s.plan.model_id, "decompose", s.grid_name)
    target = None
    if out is not None:
        cap_dict = {**cap_spec.to_dict(), "grid_definition": s.grid.to_dict()}
        planned = {"grid": s.grid_name, "source": {"experiment": "capture", "spec": cap_dict}}
        target = claim_output(out, "decompose", planned, s.plan.model_id, s.plan.dtype, lambda: s.plan.revision,
                              stack, overwrite=opts.overwrite, fresh=opts.fresh)
        if target.done:
            return target.existing, target
    from ...core.progress import library_bars

    try:
        with library_bars(opts.progress):
            loaded = s.plan.load()
        capture_ds = module.run(loaded, s.grid, with_batch_size(cap_spec, loaded, s.grid), progress=opts.progress)
    except KeyboardInterrupt:
        raise Interrupted(target) from None
    return decompose_capture(capture_ds), target


PLANS = {"capture": capture_plan, "substitute": substitute_plan, "markers": markers_plan, "inject": inject_plan,
         "knockout": knockout_plan, "heads": heads_plan}
