"""The Python API of "As X, Do Y": capture, decompose, substitute, markers, inject, knockout, heads,
each the run of the command of the same name (assembled by assembly.py), returning its Dataset."""

from __future__ import annotations

from contextlib import ExitStack
from pathlib import Path

from ..run_setup import finished, joined
from .assembly import PLANS, RunOptions, decompose_run, execute


def _options(model, grid, layers, positions, cells, dtype, device, batch_size, capture, out, overwrite, fresh,
             remote, ndif_host, progress, given) -> RunOptions:
    options = RunOptions(
        model_spec=model, grid_name=grid, layers=joined(layers), positions=joined(positions), dtype=dtype,
        device=device, cells=joined(cells), batch_size=batch_size, out=Path(out) if out is not None else None,
        progress=progress, remote=remote, ndif_host=ndif_host, capture_path=capture, fresh=fresh,
        overwrite=overwrite,
    )
    # What the caller chose, for the checks against a capture: a model, a grid or a dtype given
    # with `capture` must agree with it.
    options.given = frozenset(name for name, value in given.items() if value is not None)
    return options



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
        return finished(ds, target)


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
                site_layers=joined(site_layers), filler=filler)


def knockout(model=None, *, grid=None, bands=None, queries="answer", conditions=None, heads=None, n_tokens=80,
             filler=" .", min_gap=1.0, cells=None, capture=None, dtype=None, device="auto", batch_size="auto",
             out=None, overwrite=False, fresh=False, remote=False, ndif_host=None, progress=True):
    """Attention from the answer to the persona tokens removed band by band, with controls."""
    common = _common(model, grid, "default", "all", cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("knockout", common, bands=joined(bands), queries=queries, conditions=conditions, heads=heads,
                n_tokens=n_tokens, filler=filler, min_gap=min_gap)


def heads(model=None, *, grid=None, band=None, from_knockout=None, top_k=(1, 2, 4, 8), rank_by="persona_shift",
          queries="answer", min_gap=1.0, cells=None, capture=None, dtype=None, device="auto", batch_size="auto",
          out=None, overwrite=False, fresh=False, remote=False, ndif_host=None, progress=True):
    """One head at a time knocked out in a band (`band` 'START:END', or the best band of a knockout
    result `from_knockout`, a file or a Dataset), then groups of the top heads."""
    common = _common(model, grid, "default", "all", cells, dtype, device, batch_size, capture, out, overwrite,
                     fresh, remote, ndif_host, progress)
    return _run("heads", common, band=band, from_knockout=from_knockout, top_k=joined(top_k), rank_by=rank_by,
                queries=queries, min_gap=min_gap)


EXPERIMENTS = ("capture", "decompose", "substitute", "markers", "inject", "knockout", "heads")
