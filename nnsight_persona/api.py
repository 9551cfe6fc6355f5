"""The Python API: one function per experiment, the same runs as the commands.

    import nnsight_persona as np_
    ds = np_.substitute("toy", grid="toy", layers="paper")

Each function takes a model name (an alias, a hub id, a directory; default: the toy model, or the
model of a given capture) or an already loaded model
(`nnsight_persona.models.load_model`), so a notebook loads a model once, and returns the Dataset
the command of the same name writes. Runs are assembled by assembly.py, as the commands' are
(the `vectors ...` and `subnetwork ...` groups by assembly_vectors.py and assembly_subnetworks.py:
`vectors_extract` is `vectors extract`, `subnetwork_find` is `subnetwork find`, ...).

Without `out` nothing is written. With `out`, the file follows the commands' rules
(docs/reliability.md): a finished result of the same computation there is returned without
computing, an unfinished one is resumed, anything else is refused unless `overwrite=True`.
"""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from .assembly import PLANS, RunOptions, decompose_run, execute, note


def _joined(value) -> str | None:
    """'2,4,6' from [2, 4, 6] (or 4 from 4); a string as it is."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return str(value)
    return ",".join(str(v) for v in value)


def _options(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite, fresh,
             remote, ndif_host, progress, given) -> RunOptions:
    options = RunOptions(
        model_spec=model, grid_name=grid, layers=_joined(layers), positions=_joined(positions), dtype=dtype,
        device=device, cells=_joined(cells), batch_size=batch_size, out=Path(out) if out is not None else None,
        progress=progress, remote=remote, ndif_host=ndif_host, capture_path=capture, fresh=fresh,
        overwrite=overwrite,
    )
    # What the caller chose, for the checks against a capture: a model, a grid or a dtype given
    # with `capture` must agree with it.
    options.given = frozenset(name for name, value in given.items() if value is not None)
    return options


def _finish(ds, target):
    """Write the result where there is an output, as the commands do; return the dataset."""
    from .store import save_dataset

    if target is not None and not target.done:
        if ds.attrs.get("completed") or not target.protect:
            save_dataset(ds, target.path)
    if not ds.attrs.get("completed"):
        kept = f"; kept in {target.path}" if target is not None and not target.protect else ""
        note(f"stopped ({ds.attrs.get('stopped_by', 'interrupted')}): the result is partial (attrs completed=0){kept}")
    return ds


def _run(experiment: str, common: dict, **options):
    model = common.pop("model")
    given = {"model_spec": model, "grid_name": common.pop("grid_given"), "dtype": common.get("dtype")}
    opts = _options("toy" if model is None else model, given=given, **common)
    with ExitStack() as stack:
        if experiment == "decompose":
            ds, target = decompose_run(opts, stack)
        else:
            module, s, spec, kwargs = PLANS[experiment](opts, **options)
            ds, target = execute(module, experiment, s, spec, opts, stack, **kwargs)
        return _finish(ds, target)


def _common(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite, fresh,
            remote, ndif_host, progress) -> dict:
    return {"model": model, "grid": grid or "toy", "grid_given": grid, "layers": layers, "positions": positions,
            "cells": cells, "dtype": dtype, "device": device, "batch_size": batch_size, "capture": capture,
            "out": out, "overwrite": overwrite, "fresh": fresh, "remote": remote, "ndif_host": ndif_host,
            "progress": progress}


def capture(model=None, *, grid=None, layers="all", positions="all", cells=None, n_continuation=12, dtype=None,
            device="auto", batch_size="auto", out=None, overwrite=False, fresh=False, remote=False, ndif_host=None,
            progress=True):
    """Residuals at every layer and position for every cell and condition (BB, XB, BY, XY)."""
    common = _common(model, grid, layers, positions, cells, dtype, device, batch_size, None, out, overwrite, fresh,
                     remote, ndif_host, progress)
    return _run("capture", common, n_continuation=n_continuation)


def decompose(model=None, *, grid=None, layers="all", positions="all", cells=None, capture=None, dtype=None,
              device="auto", batch_size="auto", out=None, overwrite=False, fresh=False, remote=False, ndif_host=None,
              progress=True):
    """Delta_X, Delta_Y, Delta_XY and Inter with their cosines and norms, from `capture` (a file or
    a Dataset; no model needed) or from a capture run here."""
    common = _common(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("decompose", common)


def substitute(model=None, *, grid=None, layers="paper", positions="all", cells=None, conditions=None, n_eval=10,
               seed=0, capture=None, dtype=None, device="auto", batch_size="auto", out=None, overwrite=False,
               fresh=False, remote=False, ndif_host=None, progress=True):
    """Summed 10-token KL after replacing the clean residual by h_BB + Delta_X + Delta_Y and its controls."""
    common = _common(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("substitute", common, conditions=conditions, n_eval=n_eval, seed=seed)


def markers(model=None, *, grid=None, layers="default", positions="p_last", cells=None, conditions=None,
            patch_steps="prefill", n_tokens=80, capture=None, dtype=None, device="auto", batch_size="auto", out=None,
            overwrite=False, fresh=False, remote=False, ndif_host=None, progress=True):
    """Persona markers in greedy continuations under clean, additive, remove_persona and bare."""
    common = _common(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("markers", common, conditions=conditions, patch_steps=patch_steps, n_tokens=n_tokens)


def inject(model=None, *, grid=None, layers="default", positions="all", cells=None, clamp_layers=None,
           conditions=None, patch_steps="prefill", site_layers="paper", filler=" .", capture=None, dtype=None,
           device="auto", batch_size="auto", out=None, overwrite=False, fresh=False, remote=False, ndif_host=None,
           progress=True):
    """Host injection: can h_XY or the additive vector at p_last replace the persona text?"""
    common = _common(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("inject", common, clamp_layers=clamp_layers, conditions=conditions, patch_steps=patch_steps,
                site_layers=_joined(site_layers), filler=filler)


def knockout(model=None, *, grid=None, bands=None, queries="answer", conditions=None, heads=None, n_tokens=80,
             filler=" .", min_gap=1.0, cells=None, capture=None, dtype=None, device="auto", batch_size="auto",
             out=None, overwrite=False, fresh=False, remote=False, ndif_host=None, progress=True):
    """Attention from the answer to the persona tokens removed band by band, with controls."""
    common = _common(model, grid, "default", "all", cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("knockout", common, bands=_joined(bands), queries=queries, conditions=conditions, heads=heads,
                n_tokens=n_tokens, filler=filler, min_gap=min_gap)


def heads(model=None, *, grid=None, band=None, from_knockout=None, top_k=(1, 2, 4, 8), rank_by="persona_shift",
          queries="answer", min_gap=1.0, cells=None, capture=None, dtype=None, device="auto", batch_size="auto",
          out=None, overwrite=False, fresh=False, remote=False, ndif_host=None, progress=True):
    """One head at a time knocked out in a band (`band` 'START:END', or the best band of a knockout
    result `from_knockout`, a file or a Dataset), then groups of the top heads."""
    common = _common(model, grid, "default", "all", cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("heads", common, band=band, from_knockout=from_knockout, top_k=_joined(top_k), rank_by=rank_by,
                queries=queries, min_gap=min_gap)


EXPERIMENTS = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads")


# --- persona vectors (`vectors ...`) and persona subnetworks (`subnetwork ...`) --------------------
# The figures the commands draw beside their files are functions of these Datasets
# (plots.persona_vectors, plots.figures_for); the functions write only result files.


def _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                     progress, overwrite, out):
    from .assembly_vectors import VectorsOptions

    return VectorsOptions(model_spec="toy" if model is None else model, dtype=dtype, device=device,
                          ndif_host=ndif_host, batch_size=batch_size, n_tokens=n_tokens, n_questions=n_questions,
                          scorer=scorer, judge_model=judge_model, progress=progress, overwrite=overwrite,
                          out=Path(out) if out is not None else None)


def vectors_extract(model=None, *, traits=None, layers="all", token_sets=("response_avg", "prompt_avg", "prompt_last"),
                    threshold=50.0, keep="filter", checkpoint_label="", step=-1, n_tokens=32, n_questions=0,
                    scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None, batch_size=16,
                    out=None, export=None, overwrite=False, progress=True, elicitation="instruction", fresh=False):
    """Persona vectors (`vectors extract`): mean(kept positive answers) - mean(kept negative ones)
    of the residual at every layer L = hidden_states[L], per trait and token set. `traits`: names
    (experiments/traits/) or YAML files [default: all]; `export`: also write the vectors as
    safetensors there (one file per variant); `elicitation`: a variant (instruction, character,
    two-shot, combined) or several to compare; an unfinished result at `out` is resumed (`fresh`:
    started over)."""
    from .assembly_vectors import extract_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = extract_run(opts, stack, traits=_joined(traits), layers=_joined(layers),
                                 token_sets=_joined(token_sets), threshold=threshold, keep=keep,
                                 checkpoint_label=checkpoint_label, step=step, elicitation=_joined(elicitation),
                                 fresh=fresh)
        ds = _finish(ds, target)
    if export is not None:
        from .experiments.vectors import io

        io.export_variants(ds, export)
    return ds


def vectors_steer(model=None, *, vectors, traits=None, layers=None, token_set="response_avg", coefs=(0, 2, 4, 8),
                  positions="response", scale="raw", kinds=("vector", "random", "shuffled"), seeds=(0,), n_tokens=32,
                  n_questions=0, scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None,
                  batch_size=16, out=None, overwrite=False, progress=True):
    """Steering (`vectors steer`): coef x v added at layer L = hidden_states[L]; trait score and
    coherence per question, and the AxBench score against the prompting baseline. `vectors`: a
    vectors file (.nc, .safetensors, .pt) or vectors_extract's Dataset; `layers` [default:
    round(0.5 x n_layers)]."""
    from .assembly_vectors import steer_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = steer_run(opts, stack, vectors, traits=_joined(traits), layers=_joined(layers),
                               token_set=token_set, coefs=coefs, positions=positions, scale=scale,
                               kinds=_joined(kinds), seeds=seeds)
        return _finish(ds, target)


def vectors_monitor(model=None, *, vectors, traits=None, layers=None, token_set="response_avg", n_tokens=32,
                    n_questions=0, scorer="offline", judge_model="judge", dtype=None, device="auto", ndif_host=None,
                    batch_size=16, out=None, overwrite=False, progress=True):
    """Monitoring (`vectors monitor`): projections on the unit persona vector (and cosines) of the
    last prompt token and the mean answer residual, per evaluation question, with no instruction
    and under the positive and the negative one. `layers` [default: the vectors' layers]."""
    from .assembly_vectors import monitor_run

    opts = _vectors_options(model, dtype, device, ndif_host, batch_size, n_tokens, n_questions, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = monitor_run(opts, stack, vectors, traits=_joined(traits), layers=_joined(layers),
                                 token_set=token_set)
        return _finish(ds, target)


def vectors_trace(revisions, *, traits=None, layers="all", steer_layer=None, coef=1.0, scale="norm", seeds=(0, 1, 2),
                  token_set="response_avg", n_tokens=32, n_questions=0, batch_size=16, threshold=50.0, keep="filter",
                  out_dir=None, overwrite=False, progress=True, transfer=True):
    """Persona vectors across training checkpoints (`vectors trace`): `revisions` are local
    checkpoint folders (or models loaded from them), ordered by the training step of their
    checkpoint.json or folder name. `transfer`: also steer the final checkpoint with each
    checkpoint's vector (times the final/source residual-norm ratio). With `out_dir` the
    per-checkpoint files and trace.nc are written there, as the command does."""
    from .assembly_vectors import trace_run
    from .store import save_dataset

    if isinstance(revisions, (str, Path)) or not hasattr(revisions, "__iter__"):
        revisions = [revisions]
    with ExitStack() as stack:
        made = trace_run(list(revisions), stack, _finish, traits=_joined(traits), layers=_joined(layers),
                         steer_layer=steer_layer, coef=coef, scale=scale, seeds=seeds, token_set=token_set,
                         n_tokens=n_tokens, n_questions=n_questions, batch_size=batch_size, threshold=threshold,
                         keep=keep, out_dir=out_dir, progress=progress, overwrite=overwrite, transfer=transfer)
    if out_dir is not None:
        save_dataset(made.result, Path(out_dir) / "trace.nc")
    return made.result


def vectors_vs_edit(model=None, *, vectors, grid="toy", personas=None, layers=None,
                    coefs=(0, 0.05, 0.1, 0.2, 0.5, 1, 2, 4), conditions=("vector", "delta_x"), token_set="response_avg",
                    capture=None, n_tokens=32, scorer="offline", judge_model="judge", dtype=None, device="auto",
                    batch_size=16, out=None, overwrite=False, progress=True):
    """Steering along the persona vector at every response step against the one-site Delta_X edit
    at p_last (`vectors vs-edit`), on the grid's bare task prompts, with the persona prompt as the
    ceiling. `coefs` are in units of |Delta_X| at the cell and layer; `layers` [default:
    round(0.55 x n_layers)]; `capture`: a capture file or Dataset holding p_last at the layers."""
    from .assembly_vectors import vs_edit_run

    opts = _vectors_options(model, dtype, device, None, batch_size, n_tokens, 0, scorer, judge_model,
                            progress, overwrite, out)
    with ExitStack() as stack:
        ds, target = vs_edit_run(opts, stack, vectors, grid=grid, personas=_joined(personas), layers=_joined(layers),
                                 coefs=coefs, conditions=_joined(conditions), token_set=token_set, capture=capture)
        return _finish(ds, target)


def vectors_vs_delta(vectors, capture, *, position="p_last", out=None):
    """Cosine per layer of each persona vector with Delta_X = h_XB - h_BB at `position` of a
    capture (`vectors vs-delta`; files or Datasets), for the capture's personas named like the traits."""
    from .assembly_vectors import vs_delta_run
    from .store import save_dataset

    ds = vs_delta_run(vectors, capture, position)
    if out is not None:
        save_dataset(ds, out)
    return ds


def subnetwork_find(model=None, *, persona_set="toy", personas=None, method="contrastive", activation="relu", tau=2.0,
                    sparsity=(0.3,), mlp_only=False, head=False, structured=False, seed=0, tokens="answer",
                    dtype=None, device="auto", batch_size=16, out=None, masks=None, overwrite=False, progress=True):
    """Persona subnetworks (`subnetwork find`): each persona's mask at each sparsity from its
    calibration items; returns the statistics (kept fraction, overlap, Jaccard). With `out` the
    masks go next to it (<stem>-masks.safetensors) unless `masks` names their file; subnetwork_eval
    reads that file."""
    from .assembly_subnetworks import find_run

    with ExitStack() as stack:
        made = find_run(stack, model_spec="toy" if model is None else model, set_name=persona_set,
                        personas=_joined(personas), method=method, activation=activation, tau=tau, sparsity=sparsity,
                        mlp_only=mlp_only, head=head, structured=structured, seed=seed, tokens=tokens, dtype=dtype,
                        device=device, batch_size=batch_size, out=out, mask_file=masks, progress=progress,
                        overwrite=overwrite)
        return _finish(made.ds, made.target)


def subnetwork_eval(masks, *, model=None, persona_set=None, random_seeds=3, n_tokens=32, prompt_baseline=True,
                    dtype=None, device="auto", batch_size=16, out=None, remote=False, ndif_host=None, overwrite=False,
                    progress=True):
    """Evaluation of a mask file (`subnetwork eval`) with no persona prompt: A/B alignment, markers
    and perplexity of each mask against the unpruned model, the prompted one and random masks.
    `model` [default: the one the masks were found on] and `persona_set` [default: the masks']."""
    from .assembly_subnetworks import eval_run

    with ExitStack() as stack:
        ds, target = eval_run(stack, masks, model_spec=model, set_name=persona_set, random_seeds=random_seeds,
                              n_tokens=n_tokens, no_prompt_baseline=not prompt_baseline, dtype=dtype, device=device,
                              batch_size=batch_size, out=out, remote=remote, ndif_host=ndif_host, progress=progress,
                              overwrite=overwrite)
        return _finish(ds, target)


VECTORS_AND_SUBNETWORKS = ("vectors_extract", "vectors_steer", "vectors_monitor", "vectors_trace", "vectors_vs_edit",
                           "vectors_vs_delta",
                           "subnetwork_find", "subnetwork_eval")
