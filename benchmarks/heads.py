"""The head sweep batched against one head at a time: the same rows scored by the same code with
many (block, head) knockouts per forward pass, with a pass per head (its cells batched), with a
pass per (head, cell), and as one `knockout --heads H --band B:B+1` run per head; plus the cost of
a band sweep with every knockout condition, for scale. All in one process, interleaved.

    python -m benchmarks.heads --model toy        # writes benchmarks/results/heads-toy.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.machine import RESULTS, machine


def head_rows(prompts, keys, blocks, n_heads):
    from nnsight_persona.studies.xu2026.knockout import KnockRow

    return {(b, h): [((b, h, ci), KnockRow(ci, "XY", tuple(keys[ci]), (b,), ((b, h),))) for ci in range(len(prompts))]
            for b in blocks for h in range(n_heads)}


def score(loaded, rows, prompts, continuation, batch_size):
    from nnsight_persona.studies.xu2026.knockout import ScoreStats, score_rows

    stats, out = ScoreStats(), {}
    start = time.perf_counter()
    for chunk, scores, _ in score_rows(loaded, rows, prompts, continuation, 10, "answer", batch_size, 8, "", False, stats):
        for (key, _), values in zip(chunk, scores):
            out[key] = values
    return time.perf_counter() - start, stats, out


def bench(model: str, grid_name: str, band: str, batch_size: int, repeats: int) -> dict:
    from benchmarks.models import resolve
    from nnsight_persona.studies.xu2026 import capture, knockout
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.models.loading import load_model

    loaded = load_model(resolve(model), dtype="float32")
    grid = load_grid(grid_name)
    n_heads = loaded.lm._module.config.num_attention_heads
    (start, end), = knockout.parse_bands(band, loaded.n_layers)
    built = [knockout.cell_prompts(loaded.tokenizer, grid, c, None) for c in grid.cells]
    prompts = [p for p, _ in built]
    keys = [k["persona"] for _, k in built]
    continuation = capture.clean_continuations(loaded, [p["XY"] for p in prompts], 12, batch_size, False)
    per_head = head_rows(prompts, keys, range(start, end), n_heads)
    every = [row for rows in per_head.values() for row in rows]
    times = {"batched": [], "one_head_per_pass": [], "one_row_per_pass": [], "one_run_per_head": [],
             "band_sweep_all_conditions": []}
    for _ in range(repeats):
        wall, batched_stats, batched = score(loaded, every, prompts, continuation, batch_size)
        times["batched"].append(wall)
        wall, one = 0.0, {}
        passes = rows = 0
        for rows_of_head in per_head.values():
            w, st, got = score(loaded, rows_of_head, prompts, continuation, batch_size)
            wall, passes, rows = wall + w, passes + st.passes, rows + st.rows
            one.update(got)
        times["one_head_per_pass"].append(wall)
        wall, single_stats, single = score(loaded, every, prompts, continuation, 1)
        times["one_row_per_pass"].append(wall)
        t0 = time.perf_counter()  # what a user would run without the sweep: `knockout --band B:B+1 --heads H`
        for b, h in per_head:
            knockout.run(loaded, grid, knockout.KnockoutSpec(grid=grid_name, bands=((b, b + 1),), heads=(h,), n_tokens=0,
                                                             conditions=("persona",), batch_size=batch_size), progress=False)
        times["one_run_per_head"].append(time.perf_counter() - t0)
        spec = knockout.KnockoutSpec(grid=grid_name, bands=tuple(knockout.default_bands(loaded.n_layers)), n_tokens=0,
                                     batch_size=batch_size)
        t0 = time.perf_counter()
        knockout.run(loaded, grid, spec, progress=False)
        times["band_sweep_all_conditions"].append(time.perf_counter() - t0)
    diff = max(max(float(np.abs(batched[k] - one[k]).max()), float(np.abs(batched[k] - single[k]).max())) for k in batched)
    return {
        "benchmark": "heads", "model": model, "grid": grid_name, "band": f"{start}:{end}", "cells": len(grid.cells),
        "heads_swept": len(per_head), "knocked_rows": len(every), "batch_size": batch_size, "repeats": repeats,
        "batched": {"passes": batched_stats.passes, "rows": batched_stats.rows, "max_rows_per_pass": batched_stats.max_rows,
                    "wall_s_median": statistics.median(times["batched"])},
        "one_head_per_pass": {"passes": passes, "rows": rows, "wall_s_median": statistics.median(times["one_head_per_pass"])},
        "one_row_per_pass": {"passes": single_stats.passes, "rows": single_stats.rows,
                             "wall_s_median": statistics.median(times["one_row_per_pass"])},
        "one_run_per_head": {"runs": len(per_head), "wall_s_median": statistics.median(times["one_run_per_head"])},
        "band_sweep_all_conditions": {"bands": len(spec.bands), "conditions": len(spec.conditions),
                                      "wall_s_median": statistics.median(times["band_sweep_all_conditions"])},
        "max_abs_difference": diff,
        "wall_s_all": times,
        "machine": machine(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="toy")
    parser.add_argument("--grid", default="toy-long")
    parser.add_argument("--band", default="all", help="START:END, or all")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    result = bench(args.model, args.grid, args.band, args.batch_size, args.repeats)
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"heads-{args.model}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("wall_s_all", "machine")}, indent=2))


if __name__ == "__main__":
    main()
