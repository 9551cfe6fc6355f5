"""nnsight's own overhead: the same batched substitution, once through nnsight traces and once with
raw torch forward hooks on identical batches and patches."""

from __future__ import annotations

import statistics
import time

import torch


@torch.no_grad()
def raw_window_kl(loaded, batch, writes, window_cols, reference_rows, knockout=None, past_key_values=None):
    """window_kl's computation with plain forward pre-hooks instead of an nnsight trace."""
    if knockout is not None:
        raise NotImplementedError("the overhead benchmark covers residual writes only")
    model = loaded.lm._module
    blocks = model.model.layers
    handles = []
    for w in writes:
        def pre_hook(module, args, kwargs, w=w):
            hs = (args[0] if args else kwargs["hidden_states"]).clone()
            hs[w.rows, w.cols] = w.values.to(hs.device, hs.dtype)
            return ((hs,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hs})

        handles.append(blocks[w.layer].register_forward_pre_hook(pre_hook, with_kwargs=True))
    try:
        extra = {} if past_key_values is None else {"past_key_values": past_key_values}
        inputs = {k: v.to(model.device) for k, v in batch.inputs().items()}  # as nnsight does
        logits = model(**inputs, **extra).logits
    finally:
        for h in handles:
            h.remove()
    rows = torch.arange(logits.shape[0])[:, None]
    logp = logits[rows, window_cols].float().log_softmax(-1)
    ref = logits[reference_rows[:, None], window_cols].float().log_softmax(-1)
    return (ref.exp() * (ref - logp)).sum(-1).sum(-1)


def overhead_bench(model: str, grid_name: str, batch_size: int, repeats: int) -> dict:
    from benchmarks.models import resolve
    from benchmarks.machine import machine
    from nnsight_persona.studies.xu2026 import capture, substitute
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.models.loading import load_model
    from nnsight_persona.core.selection import paper_layers

    loaded = load_model(resolve(model), dtype="float32")
    grid = load_grid(grid_name)
    layers = tuple(paper_layers(loaded.n_layers))
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid=grid_name, layers=layers), progress=False)
    spec = substitute.SubstituteSpec(grid=grid_name, layers=layers, batch_size=batch_size)
    original = substitute.window_kl
    times = {"nnsight": [], "raw_hooks": []}
    results = {}
    for _ in range(repeats):
        for name, fn in (("nnsight", original), ("raw_hooks", raw_window_kl)):
            substitute.window_kl = fn
            try:
                start = time.perf_counter()
                results[name] = substitute.run(loaded, grid, spec, capture_ds=cap, progress=False)
                times[name].append(time.perf_counter() - start)
            finally:
                substitute.window_kl = original
    diff = float(abs(results["nnsight"].kl - results["raw_hooks"].kl).max())
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "benchmark": "overhead", "model": model, "grid": grid_name, "batch_size": batch_size, "repeats": repeats,
        "machine": machine(), "conditions": list(spec.conditions), "layers": list(layers),
        "wall_s_median": med, "wall_s_all": times, "nnsight_over_raw": med["nnsight"] / med["raw_hooks"],
        "max_abs_kl_difference": diff,
    }
