"""The persona-vector runs assembled (extract, steer, monitor, trace, vs-delta): options -> traits,
model, spec, then the output policy of ../run_setup.py (claim, reuse, refuse) and the run itself.

Both the `vectors ...` commands (commands.py) and the Python API (api.py: vectors_extract,
vectors_steer, ...) call these functions, so a command and its function make the same Dataset.
Nothing here parses a command line or prints tables; messages go to stderr (run_setup.note).

Layer convention everywhere: L = hidden_states[L] of transformers (0 = embeddings, L = the output
of block L-1, which is where steering adds; n_layers = the last block's raw output).

Layering: below cli and api, above experiments. Heavy imports happen inside functions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..run_setup import claim_output, default_out, model_name, model_plan, numbers
from ...core.errors import SelectionError


@dataclass
class VectorsOptions:
    """The options the model-running vectors commands share (`_model_options` of commands.py;
    the API's keywords). `model_spec`: a model name or an already loaded model. `out` None: the
    API computes without writing; `default_out` True (the commands): runs/<model>/vectors-<name>.nc."""

    model_spec: object = "toy"
    dtype: str | None = None
    device: str = "auto"
    ndif_host: str | None = None
    batch_size: int = 16
    n_tokens: int = 32
    n_questions: int = 0
    scorer: str = "offline"
    judge_model: str = "judge"
    progress: bool = True
    overwrite: bool = False
    out: Path | None = None
    default_out: bool = False


def _traits(names: str | None, fallback: list[str] | None = None):
    from .traits import list_traits, load_trait

    chosen = [n.strip() for n in names.split(",") if n.strip()] if names else (fallback or list_traits())
    return [load_trait(n) for n in chosen]


def _plan(model_spec, dtype, device, ndif_host):
    """The model to run: a ModelPlan for a name (loads on first need), an already loaded model as it is."""
    if ndif_host not in (None, "local"):
        raise SelectionError("--ndif-host: only 'local' is supported by the vectors commands")
    return model_plan(model_spec, dtype=dtype, remote="local" if ndif_host == "local" else False, device=device)


def _layers(value: str, n_layers: int):
    from ...core.selection import parse_layers

    return tuple(parse_layers(value, n_layers, default=range(n_layers + 1)))


def _default_out(model_spec: str, name: str) -> Path:
    return default_out(model_spec, "vectors", name).with_name(f"{name}.nc")


def _claim(opts: VectorsOptions, experiment: str, spec_dict: dict, plan, stack, fresh: bool = False):
    """The output of a run, claimed (assembly.claim_output); None without one (the API's out=None)."""
    out = opts.out if opts.out is not None else (
        _default_out(model_name(opts.model_spec), experiment) if opts.default_out else None)
    if out is None:
        return None
    return claim_output(Path(out), experiment, spec_dict, plan.model_id, plan.dtype, lambda: plan.revision, stack,
                        overwrite=opts.overwrite, fresh=fresh)


def _checkpoint(target):
    """The partial result written to the output every minute (none without an output, and never
    over a finished file)."""
    from ...storage.store import Checkpoint

    return None if target is None or target.protect else Checkpoint(target.path)


def _computed(target, run):
    """The finished result the output holds, else `run()` (a remote one records its requests and
    bytes each way, as the xu2026 runs do)."""
    from ...core.traffic import metered

    if target is not None and target.done:
        return target.existing
    with metered() as traffic:
        ds = run()
    if traffic.requests and hasattr(ds, "attrs"):
        ds.attrs.update(traffic.as_attrs())
    return ds


def load_vectors(path: Path, trait: str | None = None, model: str = ""):
    """A vectors dataset from .nc (extract's output), .safetensors (export's) or an original .pt."""
    from . import io
    from ...storage.store import load_dataset

    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return io.import_safetensors(path)
    if suffix == ".pt":
        if not trait:
            raise SelectionError(f"{path}: an original .pt vector holds one trait; name it with --traits")
        return io.import_original_pt(path, trait, model)
    ds = load_dataset(path)
    if "vector" not in ds:
        raise SelectionError(f"{path} holds no persona vectors (no variable 'vector'); make one with `vectors extract`")
    from .io import single_variant

    return single_variant(ds, str(path))


def _vectors(source, traits, model) -> tuple[object, str]:
    """(vectors dataset, the file name the spec records) from a file or a vectors Dataset."""
    if isinstance(source, (str, Path)):
        return load_vectors(Path(source), traits, model_name(model)), Path(source).name
    if not hasattr(source, "data_vars") or "vector" not in source:
        raise SelectionError(f"vectors must be a vectors file (.nc, .safetensors, .pt) or a vectors Dataset "
                             f"(vectors_extract's), not a {type(source).__name__}")
    return source, ""


def _traits_of(vectors_ds, names):
    """The traits to use with a vectors file: named ones, else those the file recorded (their
    definitions from its spec when it has them)."""
    from .traits import trait_from_spec
    from ...storage.store import spec_of

    spec = spec_of(vectors_ds) if "spec" in vectors_ds.attrs else {}
    recorded = {d["name"]: trait_from_spec(d) for d in spec.get("trait_definitions", [])}
    wanted = [n.strip() for n in names.split(",")] if names else vectors_ds.trait.values.tolist()
    return [recorded[n] if n in recorded else _traits(n)[0] for n in wanted]


def extract_run(opts: VectorsOptions, stack, traits=None, layers="all",
                token_sets="response_avg,prompt_avg,prompt_last", threshold: float | None = None, keep: str = "filter",
                checkpoint_label: str = "", step: int = -1, elicitation="instruction", fresh: bool = False):
    """`vectors extract`: (dataset, target); target None without an output. `elicitation`: a
    variant or a comma list (traits.VARIANTS); an unfinished result at the output is resumed
    (`fresh`: started over). `threshold` None: the scorer's default (50; 0 nats/token for
    evidence)."""
    from . import extract as exp
    from .scorers import make_scorer, thresholds

    chosen = _traits(traits)
    scorer = make_scorer(opts.scorer, opts.judge_model)  # a bad --scorer fails before any model loads
    threshold = thresholds(scorer, threshold)[0]  # the scorer's default where none is given, recorded as a number
    plan = _plan(opts.model_spec, opts.dtype, opts.device, opts.ndif_host)
    spec = exp.ExtractSpec(
        traits=tuple(t.name for t in chosen), layers=_layers(layers, plan.n_layers),
        token_sets=tuple(s.strip() for s in token_sets.split(",")), n_tokens=opts.n_tokens, threshold=threshold,
        scorer=opts.scorer, judge_model=opts.judge_model, n_questions=opts.n_questions, batch_size=opts.batch_size,
        keep=keep, checkpoint=checkpoint_label, step=step, trait_definitions=tuple(t.to_dict() for t in chosen),
        elicitation=_names(elicitation))
    exp.check_spec(spec, plan.n_layers, chosen)
    target = _claim(opts, "vectors-extract", spec.to_dict(), plan, stack, fresh=fresh)
    ds = _computed(target, lambda: exp.run(plan.load(), chosen, spec, progress=opts.progress,
                                           previous=target.previous if target is not None else None,
                                           checkpoint=_checkpoint(target)))
    return ds, target


def calibrate_run(opts: VectorsOptions, stack, traits=None):
    """`vectors calibrate`: (dataset, target): the evidence of each trait's prompted answers
    against its unprompted ones (calibrate.py)."""
    from . import calibrate as exp

    chosen = _traits(traits)
    plan = _plan(opts.model_spec, opts.dtype, opts.device, opts.ndif_host)
    spec = exp.CalibrateSpec(traits=tuple(t.name for t in chosen), n_questions=opts.n_questions,
                             n_tokens=opts.n_tokens, batch_size=opts.batch_size,
                             trait_definitions=tuple(t.to_dict() for t in chosen))
    target = _claim(opts, "vectors-calibrate", spec.to_dict(), plan, stack)
    ds = _computed(target, lambda: exp.run(plan.load(), chosen, spec, progress=opts.progress))
    return ds, target


def _names(value) -> tuple[str, ...]:
    """A comma list or a sequence of names as a tuple."""
    items = value.split(",") if isinstance(value, str) else list(value)
    return tuple(str(v).strip() for v in items if str(v).strip())


def steer_run(opts: VectorsOptions, stack, vectors, traits=None, layers=None, token_set: str = "response_avg",
              coefs="0,2,4,8", positions: str = "response", scale: str = "raw", kinds="vector,random,shuffled",
              seeds="0"):
    """`vectors steer`: (dataset, target); `vectors` is a vectors file or a vectors Dataset."""
    from . import steer as exp

    vec, vectors_file = _vectors(vectors, traits, opts.model_spec)
    chosen = _traits_of(vec, traits)
    plan = _plan(opts.model_spec, opts.dtype, opts.device, opts.ndif_host)
    spec = exp.SteerSpec(
        traits=tuple(t.name for t in chosen),
        layers=_layers(layers, plan.n_layers) if layers else (int(round(0.5 * plan.n_layers)),),
        coefs=tuple(numbers(coefs, "--coefs")), positions=positions, scale=scale,
        kinds=tuple(k.strip() for k in kinds.split(",")), seeds=tuple(int(x) for x in numbers(seeds, "--seeds")),
        token_set=token_set, n_tokens=opts.n_tokens, n_questions=opts.n_questions, scorer=opts.scorer,
        judge_model=opts.judge_model, batch_size=opts.batch_size, vectors_file=vectors_file,
        vectors_source=(str(vec.attrs.get("model_id", "")), str(vec.attrs.get("checkpoint_revision", ""))))
    exp.check_spec(spec, plan.n_layers, vec)
    target = _claim(opts, "vectors-steer", spec.to_dict(), plan, stack)
    ds = _computed(target, lambda: exp.run(plan.load(), chosen, vec, spec, progress=opts.progress))
    return ds, target


def monitor_run(opts: VectorsOptions, stack, vectors, traits=None, layers=None, token_set: str = "response_avg"):
    """`vectors monitor`: (dataset, target); `vectors` is a vectors file or a vectors Dataset."""
    from . import monitor as exp

    vec, vectors_file = _vectors(vectors, traits, opts.model_spec)
    chosen = _traits_of(vec, traits)
    plan = _plan(opts.model_spec, opts.dtype, opts.device, opts.ndif_host)
    spec = exp.MonitorSpec(traits=tuple(t.name for t in chosen),
                           layers=_layers(layers, plan.n_layers) if layers else tuple(
                               int(x) for x in vec.layer.values),
                           token_set=token_set, n_tokens=opts.n_tokens, n_questions=opts.n_questions,
                           batch_size=opts.batch_size, vectors_file=vectors_file)
    target = _claim(opts, "vectors-monitor", spec.to_dict(), plan, stack)
    ds = _computed(target, lambda: exp.run(plan.load(), chosen, vec, spec, progress=opts.progress))
    return ds, target


def _checkpoint_step(folder: Path, index: int) -> int:
    """A checkpoint folder's training step: its checkpoint.json, else the digits of its name."""
    import re

    meta = folder / "checkpoint.json"
    if meta.exists():
        return int(json.loads(meta.read_text())["step"])
    digits = re.findall(r"\d+", folder.name)
    return int(digits[-1]) if digits else index


@dataclass
class Trace:
    """What `vectors trace` makes: the trace dataset (written as trace.nc), the geometry its
    figures draw, the steering layer, and each checkpoint's vectors and steering datasets."""

    result: object
    geometry: object
    steer_layer: int
    vectors: list
    steering: list


def trace_run(revisions, stack, write, traits=None, layers="all", steer_layer=None, coef: float = 1.0,
              scale: str = "norm", seeds="0,1,2", token_set: str = "response_avg", n_tokens: int = 32,
              n_questions: int = 0, batch_size: int = 16, threshold: float = 50.0, keep: str = "filter",
              out_dir=None, progress: bool = True, overwrite: bool = False, transfer: bool = True) -> Trace:
    """`vectors trace`: extract at each checkpoint (a local checkpoint folder, or a model loaded
    from one), steer each with its own vector and, with `transfer`, the final checkpoint with each
    checkpoint's vector (times the final/source residual-norm ratio at the steer layer, written as
    steer-step-S-on-final.nc), then the geometry and steering statistics. With
    `out_dir` each checkpoint's vectors-step-S.nc and steer-step-S.nc are claimed there and passed
    to `write(dataset, target)`; without it nothing is written (trace.nc is the caller's)."""
    import numpy as np
    import xarray as xr

    from . import extract as ext
    from . import steer as st
    from . import trace as tr

    chosen = _traits(traits)
    folders = sorted(((_checkpoint_step(Path(model_name(f)), i), f) for i, f in enumerate(revisions)),
                     key=lambda x: x[0])
    seed_list = tuple(int(x) for x in numbers(seeds, "--seeds"))

    def claim(name, experiment, spec, plan):
        if out_dir is None:
            return None
        return _claim(VectorsOptions(overwrite=overwrite, out=Path(out_dir) / name), experiment, spec, plan, stack)

    vector_sets, steer_sets, steer_specs = [], [], []
    for step, folder in folders:
        label = f"step-{step}"
        plan = _plan(folder, None, "cpu", None)
        layer_list = _layers(layers, plan.n_layers)
        at = steer_layer if steer_layer is not None else int(round(0.5 * plan.n_layers))
        espec = ext.ExtractSpec(traits=tuple(t.name for t in chosen), layers=layer_list, n_tokens=n_tokens,
                                threshold=threshold, n_questions=n_questions, batch_size=batch_size, checkpoint=label,
                                keep=keep,
                                step=step, trait_definitions=tuple(t.to_dict() for t in chosen))
        target = claim(f"vectors-{label}.nc", "vectors-extract", espec.to_dict(), plan)
        vec = _computed(target, lambda: ext.run(plan.load(), chosen, espec, progress=progress,
                                                previous=target.previous if target is not None else None,
                                                checkpoint=_checkpoint(target)))
        write(vec, target)
        if not vec.attrs.get("completed"):
            raise KeyboardInterrupt  # Ctrl-C stopped this extraction (its partial result is kept): it stops the trace
        sspec = st.SteerSpec(traits=espec.traits, layers=(at,), coefs=(coef,), scale=scale, seeds=seed_list,
                             token_set=token_set,
                             n_tokens=n_tokens, n_questions=n_questions, batch_size=batch_size,
                             vectors_file=f"vectors-{label}.nc",
                             vectors_source=(str(Path(model_name(folder)).name), label))
        target = claim(f"steer-{label}.nc", "vectors-steer", sspec.to_dict(), plan)
        steered = _computed(target, lambda: st.run(plan.load(), chosen, vec, sspec, progress=progress))
        write(steered, target)
        vector_sets.append(vec)
        steer_sets.append(steered)
        steer_specs.append(sspec)
    combined = tr.concat_checkpoints(vector_sets)
    geometry = tr.geometry(combined)
    stats = tr.steering_stats(steer_sets, coef, at).assign_coords(checkpoint=geometry.checkpoint.values)
    if transfer:  # each checkpoint's vector on the final checkpoint (`plan` is the final one's)
        transferred = []
        for (step, _), vec, sspec, steered in zip(folders, vector_sets, steer_specs, steer_sets):
            tspec = tr.transfer_spec(sspec, vec, steered, vector_sets[-1], f"step-{folders[-1][0]}")
            target = claim(f"steer-step-{step}-on-final.nc", "vectors-steer", tspec.to_dict(), plan)
            ds = _computed(target, lambda: st.run(plan.load(), chosen, vec, tspec, progress=progress))
            write(ds, target)
            transferred.append(ds)
        ratios = [[tr.transfer_ratio(v, vector_sets[-1], t.name, at) for t in chosen] for v in vector_sets]
        stats = tr.with_transfer(stats, tr.steering_stats(transferred, coef, at).assign_coords(
            checkpoint=geometry.checkpoint.values), np.array(ratios))
    result = xr.merge([geometry, stats])
    result["extract_outcome"] = combined.outcome.isel(model=0)
    result.attrs.update(experiment="vectors-trace", completed=1, steer_layer=at, coef=coef, scale=scale, keep=keep,
                        token_set=token_set, layer_convention="L = hidden_states[L]; 0 = embeddings",
                        transfer=int(transfer),
                        spec=json.dumps({"revisions": [Path(model_name(f)).name for _, f in folders], "coef": coef,
                                         "scale": scale, "steer_layer": at, "seeds": list(seed_list),
                                         "transfer": transfer}))
    return Trace(result, geometry, at, vector_sets, steer_sets)


def vs_edit_run(opts: VectorsOptions, stack, vectors, grid: str = "toy", personas=None, layers=None,
                coefs="0,0.05,0.1,0.2,0.5,1,2,4", conditions="vector,delta_x", token_set: str = "response_avg",
                capture=None):
    """`vectors vs-edit`: (dataset, target). Steering with the persona vector at every response
    step against the one-site Delta_X edit at p_last, on the grid's bare task prompts; `vectors` is
    a vectors file or a vectors Dataset of the same model, `capture` a capture file or Dataset."""
    from . import vs_edit as exp
    from ...core.grids import load_grid
    from ...storage.store import load_dataset

    vec, vectors_file = _vectors(vectors, None, opts.model_spec)
    the_grid = load_grid(grid)
    # `personas` and `conditions` are comma lists (the API joins its lists, as for the other runs).
    named = [p.strip() for p in personas.split(",") if p.strip()] if personas else [
        p for p in the_grid.personas if (the_grid.markers or {}).get(p) and p in vec.trait.values.tolist()]
    plan = _plan(opts.model_spec, opts.dtype, opts.device, opts.ndif_host)
    spec = exp.VsEditSpec(
        grid=grid, personas=tuple(named),
        layers=_layers(layers, plan.n_layers) if layers else (int(round(0.55 * plan.n_layers)),),
        coefs=tuple(numbers(coefs, "--coefs")),
        conditions=tuple(c.strip() for c in conditions.split(",")),
        token_set=token_set, n_tokens=opts.n_tokens, batch_size=opts.batch_size, scorer=opts.scorer,
        judge_model=opts.judge_model, vectors_file=vectors_file)
    exp.check_spec(spec, the_grid, plan.n_layers, vec)
    exp.check_model(vec, plan.model_id)
    chosen = _traits_of(vec, ",".join(named))
    target = _claim(opts, "vectors-vs-edit", spec.to_dict(), plan, stack)
    cap = load_dataset(capture) if isinstance(capture, (str, Path)) else capture
    ds = _computed(target, lambda: exp.run(plan.load(), the_grid, chosen, vec, spec, capture_ds=cap,
                                           progress=opts.progress))
    return ds, target


def vs_delta_run(vectors, capture, position: str = "p_last"):
    """`vectors vs-delta`: the cosine of each persona vector with Delta_X of a capture (files or
    Datasets), for the capture's personas named like the traits."""
    from ...analysis.vector_delta import vector_vs_delta_x
    from ...storage.store import load_dataset

    vec, _ = _vectors(vectors, None, "")
    capture_ds = load_dataset(capture) if isinstance(capture, (str, Path)) else capture
    ds = vector_vs_delta_x(vec, capture_ds, position)
    if not ds.sizes["trait"]:
        named = lambda x, what: x if isinstance(x, (str, Path)) else f"the {what} dataset"  # noqa: E731
        raise SelectionError(f"no persona of {named(capture, 'capture')} is a trait of {named(vectors, 'vectors')}")
    return ds
