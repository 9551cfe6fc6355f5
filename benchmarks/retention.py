"""What the resident size holds after a run: one process runs 12, 192, 192 and 12 cells in a row
(capture + substitution, paper layers) and after each run reports the high-water mark, the
resident size, the resident size once glibc has handed its free memory back (malloc_trim), and the
live C heap. Memory the run holds shows in the live heap; memory the allocator keeps after a free
shows only in the resident size, and goes when trimmed."""

from __future__ import annotations

import ctypes
import resource
import tempfile
from pathlib import Path

SEQUENCE = ((4, 3), (16, 12), (16, 12), (4, 3))


def _resident_mib() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 2**20


def retention_bench(model: str, batch_size: int) -> dict:
    from benchmarks.models import resolve, scaled_grid
    from benchmarks.machine import machine
    from nnsight_persona.studies.xu2026 import capture, substitute
    from nnsight_persona.core.grids import load_grid
    from nnsight_persona.core.memory import malloc_in_use
    from nnsight_persona.models.loading import load_model
    from nnsight_persona.core.selection import paper_layers

    libc = ctypes.CDLL("libc.so.6")
    tmp = Path(tempfile.mkdtemp())
    loaded = load_model(resolve(model), dtype="float32")
    layers = tuple(paper_layers(loaded.n_layers))
    live_after_load = malloc_in_use()
    rows = []
    for n_personas, n_tasks in SEQUENCE:
        grid = load_grid(scaled_grid(n_personas, n_tasks, tmp))
        cap = capture.run(loaded, grid, capture.CaptureSpec(grid="g", layers=layers, batch_size=batch_size),
                          progress=False)
        substitute.run(loaded, grid, substitute.SubstituteSpec(grid="g", layers=layers, batch_size=batch_size),
                       capture_ds=cap, progress=False)
        del cap
        row = {"cells": n_personas * n_tasks,
               "high_water_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
               "resident_mib": _resident_mib(),
               "live_heap_mib": (malloc_in_use() - live_after_load) / 2**20}
        libc.malloc_trim(0)
        row["resident_after_trim_mib"] = _resident_mib()
        rows.append(row)
    return {"benchmark": "retention", "model": model, "batch_size": batch_size, "machine": machine(), "runs": rows}
