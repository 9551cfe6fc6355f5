"""Inject and knockout with each prompt's clean prefix run once (the package's local path) against
whole sequences for every row (the path before prefix reuse, still the remote one), in one process,
interleaved: wall time, token positions run, and the largest difference of the results.

    python -m benchmarks.prefix --model smollm2     # writes benchmarks/results/prefix-smollm2.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time

import numpy as np

from benchmarks.machine import RESULTS, machine


class CountingLM:
    """The wrapped model with every trace's token positions (rows x columns) counted."""

    def __init__(self, lm):
        self._lm, self.tokens, self.passes = lm, 0, 0

    def trace(self, *args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None:
            self.tokens += int(ids.numel())
            self.passes += 1
        return self._lm.trace(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self._lm, name)


@contextlib.contextmanager
def whole_sequences():
    """Score every batch on whole sequences, as before prefix reuse (one trace per batch)."""
    from nnsight_persona.core import tracing
    from nnsight_persona.studies.xu2026 import knockout

    saved = tracing.window_kl_on_prefix, knockout.window_scores_on_prefix
    tracing.window_kl_on_prefix = tracing.window_kl
    knockout.window_scores_on_prefix = lambda loaded, *job: tracing.window_scores_session(loaded, [job])[0]
    try:
        yield
    finally:
        tracing.window_kl_on_prefix, knockout.window_scores_on_prefix = saved


def bench(model: str, grid_name: str, n_cells: int, batch_size: int, repeats: int) -> dict:
    import dataclasses

    from benchmarks.models import resolve
    from nnsight_persona.studies.xu2026 import capture, inject, knockout
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.models.loading import load_model
    from nnsight_persona.core.selection import paper_layers

    loaded = load_model(resolve(model), dtype="float32")
    grid = load_grid(grid_name)
    cells = tuple(c.label for c in grid.cells[:n_cells])
    n = loaded.n_layers
    specs = {
        "inject": inject.InjectSpec(grid=grid_name, layer_sets=tuple(inject.scaled_layer_sets(n)),
                                    site_layers=tuple(paper_layers(n)), cells=cells, batch_size=batch_size),
        "knockout": knockout.KnockoutSpec(grid=grid_name, bands=tuple(knockout.default_bands(n)), cells=cells,
                                          n_tokens=0, batch_size=batch_size),
    }
    modules = {"inject": inject, "knockout": knockout}
    layers = sorted({L for s in specs["inject"].layer_sets for L in s} | set(specs["inject"].site_layers))
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid=grid_name, layers=tuple(layers), cells=cells,
                                                        batch_size=batch_size), progress=False)
    out: dict = {}
    for name, spec in specs.items():
        times = {"shared_prefixes": [], "whole_sequences": []}
        counts, results = {}, {}
        for r in range(repeats):
            for mode in (("shared_prefixes", "whole_sequences") if r % 2 == 0 else ("whole_sequences", "shared_prefixes")):
                counting = CountingLM(loaded.lm)
                run_on = dataclasses.replace(loaded, lm=counting)
                with whole_sequences() if mode == "whole_sequences" else contextlib.nullcontext():
                    t0 = time.perf_counter()
                    ds = modules[name].run(run_on, grid, spec, capture_ds=cap, progress=False)
                    times[mode].append(time.perf_counter() - t0)
                counts[mode] = {"passes": counting.passes, "token_positions": counting.tokens}
                results[mode] = ds
        variables = ("kl", "kl_site") if name == "inject" else ("kl", "kl_to_by", "logp_drop")
        diff = max(float(np.nanmax(np.abs(results["shared_prefixes"][v].values - results["whole_sequences"][v].values)))
                   for v in variables)
        out[name] = {
            "wall_s_median": {m: statistics.median(t) for m, t in times.items()},
            "wall_s_all": times,
            "speedup": statistics.median(times["whole_sequences"]) / statistics.median(times["shared_prefixes"]),
            **{m: c for m, c in counts.items()},
            "max_abs_difference": diff,
            "largest_value": float(np.nanmax(results["shared_prefixes"]["kl"].values)),
        }
    return {"benchmark": "prefix", "model": model, "grid": grid_name, "cells": len(cells), "batch_size": batch_size,
            "repeats": repeats, **out, "machine": machine()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--grid", default="xu2026-long")
    parser.add_argument("--cells", type=int, default=8, help="the first N cells of the grid")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = bench(args.model, args.grid, args.cells, args.batch_size, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"prefix-{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "machine"}, indent=2))


if __name__ == "__main__":
    main()
