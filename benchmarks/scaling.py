"""How time and memory grow with the grid (12, 48, 192 cells) and the layers swept.

Memory is measured two ways in each fresh process: the resident high-water mark (what the
operating system saw, allocator retention included) and the live C heap (tensors and arrays the
run holds, `malloc_in_use`) sampled after every batch and, in one extra probed run per size, inside
every forward pass (`LiveHeapProbe`). The first is what a user's machine must have; the second is what the run itself keeps, and
is the one that says whether memory grows with cells.
"""

from __future__ import annotations

import statistics
import tempfile
from pathlib import Path

SIZES = ((4, 3), (8, 6), (16, 12))


def scaling_bench(model: str, batch_size: int, repeats: int = 3, sizes=SIZES, layer_choices=("paper", "all")) -> dict:
    """Per size and layer choice: `repeats` timed runs (medians) and one probed run for the live
    heap. `repeats=0` makes the probed run alone (its wall time is then the probe-slowed one)."""
    from benchmarks.models import scaled_grid
    from benchmarks.machine import in_child, machine

    tmp = Path(tempfile.mkdtemp())
    rows = []
    for n_personas, n_tasks in sizes:
        grid = scaled_grid(n_personas, n_tasks, tmp)
        for layers in layer_choices:
            # One run with the live-heap probe; it slows the run, so the timed runs are apart.
            probed = in_child(["one-scaling", model, grid, layers, str(batch_size), "--probe"])
            runs = [in_child(["one-scaling", model, grid, layers, str(batch_size)]) for _ in range(repeats)] or [probed]
            r = {key: statistics.median(run[key] for run in runs) for key in runs[0] if key != "patches"}
            r.update(cells=n_personas * n_tasks, layers=layers, patches=runs[0]["patches"], timed_runs=repeats,
                     wall_s_all=[run["wall_s"] for run in runs], peak_rss_mib_all=[run["peak_rss_mib"] for run in runs])
            r["wall_s_per_cell"] = r["wall_s"] / r["cells"]
            r.update({key: value for key, value in probed.items() if key.startswith("live_")})
            rows.append(r)
    return {"benchmark": "scaling", "model": model, "batch_size": batch_size, "repeats": repeats,
            "machine": machine(), "runs": rows}


class LiveHeapProbe:
    """Samples the live C heap after the forward of every module that holds others (each block, its
    attention and MLP, the model) and of the unembedding, and keeps the largest value. Reading the
    heap costs time, so only the memory run carries a probe."""

    def __init__(self, model):
        from nnsight_persona.core.memory import malloc_in_use

        self.read = malloc_in_use
        self.peak = self.read()
        sampled = [m for m in model.modules() if next(m.children(), None) is not None]
        sampled.append(model.get_output_embeddings())
        self.handles = [m.register_forward_hook(self._sample) for m in sampled]

    def _sample(self, *_):
        self.peak = max(self.peak, self.read())

    def close(self) -> int:
        self._sample()
        for h in self.handles:
            h.remove()
        return self.peak


def one_scaling(model: str, grid_path: str, layers: str, batch_size: int, probe: bool = False) -> dict:
    """capture + substitute (all conditions) on one grid, in this process; with `probe`, the live
    heap is sampled inside every pass too."""
    import resource
    import time

    from benchmarks.models import resolve
    from nnsight_persona.studies.xu2026 import capture, substitute
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.core.memory import malloc_in_use
    from nnsight_persona.models.loading import load_model
    from nnsight_persona.core.selection import paper_layers

    mib = lambda b: b / 2**20
    loaded = load_model(resolve(model), dtype="float32")
    grid = load_grid(grid_path)
    chosen = tuple(paper_layers(loaded.n_layers)) if layers == "paper" else tuple(range(loaded.n_layers + 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    live_after_load = malloc_in_use()
    between = []  # live heap after each batch
    sample = lambda partial: between.append(malloc_in_use())
    live = LiveHeapProbe(loaded.lm._module) if probe else None
    start = time.perf_counter()
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="g", layers=chosen, batch_size=batch_size),
                      progress=False, checkpoint=sample)
    n_capture = len(between)
    ds = substitute.run(loaded, grid, substitute.SubstituteSpec(grid="g", layers=chosen, batch_size=batch_size),
                        capture_ds=cap, progress=False, checkpoint=sample)
    wall = time.perf_counter() - start
    live_peak = live.close() if live is not None else max(between)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    saved = (cap.resid.nbytes + ds.kl.nbytes) / 2**20
    sweep = between[n_capture:]
    return {
        "wall_s": wall, "peak_rss_mib": peak, "rss_after_load_mib": before, "saved_mib": saved,
        "patches": int(ds.kl.size),
        # Above the live heap once the model is loaded: the largest value inside any pass (probed
        # runs; else between batches), and the first and last between substitution batches (a run
        # that kept something per batch would climb from one to the other).
        "live_peak_mib": mib(live_peak - live_after_load),
        "live_sweep_first_mib": mib(sweep[0] - live_after_load),
        "live_sweep_last_mib": mib(sweep[-1] - live_after_load),
        "live_sweep_max_mib": mib(max(sweep) - live_after_load),
    }
