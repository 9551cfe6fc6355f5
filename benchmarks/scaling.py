"""How time and memory grow with the grid (12, 48, 192 cells) and the layers swept."""

from __future__ import annotations

import tempfile
from pathlib import Path

SIZES = ((4, 3), (8, 6), (16, 12))


def scaling_bench(model: str, batch_size: int) -> dict:
    from benchmarks.models import scaled_grid
    from benchmarks.run import _subprocess, machine

    tmp = Path(tempfile.mkdtemp())
    rows = []
    for n_personas, n_tasks in SIZES:
        grid = scaled_grid(n_personas, n_tasks, tmp)
        for layers in ("paper", "all"):
            r = _subprocess(["one-scaling", model, grid, layers, str(batch_size)])
            r.update(cells=n_personas * n_tasks, layers=layers)
            r["wall_s_per_cell"] = r["wall_s"] / r["cells"]
            rows.append(r)
    return {"benchmark": "scaling", "model": model, "batch_size": batch_size, "machine": machine(), "runs": rows}


def one_scaling(model: str, grid_path: str, layers: str, batch_size: int) -> dict:
    """capture + substitute (all conditions) on one grid, in this process."""
    import resource
    import time

    from benchmarks.models import resolve
    from nnsight_persona.experiments import capture, substitute
    from nnsight_persona.grids import load_grid
    from nnsight_persona.models import load_model
    from nnsight_persona.selection import paper_layers

    loaded = load_model(resolve(model), dtype="float32")
    grid = load_grid(grid_path)
    chosen = tuple(paper_layers(loaded.n_layers)) if layers == "paper" else tuple(range(loaded.n_layers + 1))
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    start = time.perf_counter()
    cap = capture.run(loaded, grid, capture.CaptureSpec(grid="g", layers=chosen, batch_size=batch_size), progress=False)
    ds = substitute.run(loaded, grid, substitute.SubstituteSpec(grid="g", layers=chosen, batch_size=batch_size),
                        capture_ds=cap, progress=False)
    wall = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    saved = (cap.resid.nbytes + ds.kl.nbytes) / 2**20
    return {"wall_s": wall, "peak_rss_mib": peak, "rss_after_load_mib": before, "saved_mib": saved,
            "patches": int(ds.kl.size)}
